// The consent page of an access request (docs/access-requests.md), served at every request's
// `authUrl`. It does what Pryv's consent app does, with Herald's own API: read the request,
// sign the person in, show what the app asks for, then Accept (create, or reuse with
// accesses.checkApp, the app access) or Refuse, and post the outcome to the request.
'use strict';

(() => {
  const APP_ID = 'herald-consent';
  const params = new URLSearchParams(location.search);
  const key = params.get('key') || '';
  // The request is read from this server, by key: a `poll` URL in the query could point
  // anywhere, so it is not followed.
  const pollUrl = new URL('reg/access/' + encodeURIComponent(key), herald.root).href;

  let request = null; // the NEED_SIGNIN state
  let session = null; // {username, token}
  let check = null; // accesses.checkApp's answer

  const $ = (id) => document.getElementById(id);

  function problem (text) {
    $('problem-text').textContent = text;
    herald.show('problem');
  }

  const LEVELS = {
    read: 'see',
    contribute: 'see and add to',
    manage: 'see, add to, change and delete everything in'
  };

  // A permission in plain words: which streams, and what the app may do there.
  function describe (p) {
    if (p.feature) {
      if (p.feature === 'selfRevoke' && p.setting === 'forbidden') return 'never revoke its own access';
      return 'use the setting “' + p.feature + '”: ' + p.setting;
    }
    const what = LEVELS[p.level] || ('have “' + p.level + '” access to');
    if (p.streamId === '*') return what + ' all of your data';
    const name = p.name || p.defaultName || p.streamId;
    const created = !p.name && p.defaultName ? ' (a new stream)' : '';
    return what + ' your stream “' + name + '”' + created;
  }

  function showPermissions (perms) {
    const list = $('permissions');
    list.replaceChildren(...perms.map((p) => herald.el('li', { text: describe(p) })));
  }

  function appName () {
    for (const e of document.querySelectorAll('.app-name')) e.textContent = request.requestingAppId;
  }

  async function load () {
    if (!/^[A-Za-z0-9_-]{16}$/.test(key)) return problem('This link has no valid request key. Start again from the app.');
    const r = await herald.call('GET', pollUrl);
    if (r.status === 400 || r.status === 404) return problem('This request is unknown or has expired. Start again from the app.');
    if (!r.body || !r.body.status) return problem(herald.errorText(r.body, 'The request cannot be read.'));
    if (r.body.status !== 'NEED_SIGNIN') return problem('This request was already answered (' + r.body.status.toLowerCase() + ').');
    request = r.body;
    appName();
    herald.show('signin');
  }

  async function signIn (ev) {
    ev.preventDefault();
    const username = $('username').value.trim().toLowerCase();
    const password = $('password').value;
    $('signin-error').textContent = '';
    if (!username || !password) { $('signin-error').textContent = 'Enter your username and password.'; return; }
    $('signin-button').disabled = true;
    const r = await herald.login(username, password, APP_ID);
    $('signin-button').disabled = false;
    if (r.error) { $('signin-error').textContent = r.error; return; }
    session = { username, token: r.token };
    $('password').value = '';
    const body = { requestingAppId: request.requestingAppId, requestedPermissions: request.requestedPermissions };
    if (request.clientData) body.clientData = request.clientData;
    const c = await herald.call('POST', herald.apiUrl(username, 'accesses/check-app'), session.token, body);
    if (c.status !== 200) return problem(herald.errorText(c.body, 'The requested permissions cannot be checked.'));
    check = c.body;
    showPermissions(check.matchingAccess ? request.requestedPermissions : check.checkedPermissions);
    $('consent-account').textContent = 'Signed in as ' + username + '.';
    herald.show('consent');
  }

  // The app access to hand over: the matching one, or a new one (replacing an older access of
  // the same app that grants something else).
  async function appAccessToken () {
    if (check.matchingAccess) return { token: check.matchingAccess.token };
    const api = (path) => herald.apiUrl(session.username, path);
    if (check.mismatchingAccess) {
      const d = await herald.call('DELETE', api('accesses/' + encodeURIComponent(check.mismatchingAccess.id)), session.token);
      if (d.status !== 200) return { error: herald.errorText(d.body, 'The previous access of this app cannot be replaced.') };
    }
    const permissions = check.checkedPermissions.map((p) => {
      const q = Object.assign({}, p);
      delete q.name;
      return q;
    });
    const body = { name: request.requestingAppId, type: 'app', permissions };
    if (request.clientData) body.clientData = request.clientData;
    const r = await herald.call('POST', api('accesses'), session.token, body);
    if (r.status !== 201) return { error: herald.errorText(r.body, 'The access cannot be created.') };
    return { token: r.body.access.token };
  }

  function busy (on) {
    $('accept').disabled = on;
    $('refuse').disabled = on;
  }

  async function accept () {
    $('consent-error').textContent = '';
    busy(true);
    const a = await appAccessToken();
    if (a.error) { busy(false); $('consent-error').textContent = a.error; return; }
    const r = await herald.call('POST', pollUrl, null, { status: 'ACCEPTED', username: session.username, token: a.token });
    if (r.status !== 200) { busy(false); $('consent-error').textContent = herald.errorText(r.body, 'The request cannot be completed.'); return; }
    finish('Access granted', request.requestingAppId + ' can now use the data you accepted to share.');
  }

  async function refuse () {
    busy(true);
    const r = await herald.call('POST', pollUrl, null, {
      status: 'REFUSED', reasonId: 'REFUSED_BY_USER', message: 'The user refused to give access to the requested permissions'
    });
    if (r.status !== 403) { busy(false); $('consent-error').textContent = herald.errorText(r.body, 'The request cannot be completed.'); return; }
    finish('Access refused', request.requestingAppId + ' was told you refused. Nothing was shared.');
  }

  // Back to the app: to its `returnURL` when the request has one (the server accepted it only
  // for an origin trusted for this app; checked again here to be an http(s) URL), otherwise
  // the window closes if the app opened it, or says so.
  function finish (title, text) {
    $('done-title').textContent = title;
    $('done-text').textContent = text;
    herald.show('done');
    session = null;
    const back = typeof request.returnURL === 'string' ? safeUrl(request.returnURL) : null;
    if (back) {
      const state = request.oauthState;
      if (state) { back.searchParams.set('state', String(state)); back.searchParams.set('code', key); } else back.searchParams.set('prYvkey', key);
      $('done-text').textContent = text + ' Returning to the app…';
      location.assign(back.href);
      return;
    }
    $('done-text').textContent = text + ' You can close this window.';
    if (window.opener) setTimeout(() => window.close(), 1500);
  }

  function safeUrl (s) {
    try {
      const u = new URL(s);
      return (u.protocol === 'https:' || u.protocol === 'http:') && !u.username && !u.password ? u : null;
    } catch (e) { return null; }
  }

  $('signin-form').addEventListener('submit', signIn);
  $('accept').addEventListener('click', accept);
  $('refuse').addEventListener('click', refuse);
  load();
})();
