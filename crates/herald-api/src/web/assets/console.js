// The webhooks console (docs/web.md): sign in, see every webhook of the account with its
// latest runs, test, reactivate or delete one. It listens on socket.io for `webhooksChanged`
// (a run was saved, a state changed) and reads the list again, so it stays current without a
// reload.
'use strict';

(() => {
  const APP_ID = 'herald-console';
  const $ = (id) => document.getElementById(id);
  let session = null; // {username, token}
  let socket = null;
  let refreshTimer = null;
  let accessNames = {};
  const confirming = new Set(); // webhook ids whose Delete asks for confirmation

  const fmtTime = (t) => t ? new Date(t * 1000).toLocaleString() : 'never';
  const ok = (status) => status >= 200 && status < 300;
  const statusText = (s) => s === 0 ? 'no answer' : 'HTTP ' + s;

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
    $('password').value = '';
    session = { username, token: r.token };
    $('hooks-title').textContent = 'Webhooks of ' + username;
    herald.show('hooks');
    await refresh();
    socket = heraldSocket('/' + username, { token: session.token, watch: 'webhooks' }, onEvent, onStatus);
  }

  function signOut () {
    if (socket) socket.close();
    socket = null;
    if (session) herald.call('POST', herald.apiUrl(session.username, 'auth/logout'), session.token, {});
    session = null;
    $('list').replaceChildren();
    herald.show('signin');
  }

  function onStatus (status, message) {
    $('live').textContent = status === 'live' ? 'Live: updates appear as they happen'
      : status === 'refused' ? 'Live updates refused: ' + message : 'Offline: reconnecting…';
    $('live').dataset.state = status;
    if (status === 'live') scheduleRefresh(); // whatever happened while offline
  }

  function onEvent (name) {
    if (name === 'webhooksChanged' || name === 'accessesChanged') scheduleRefresh();
  }

  // Several runs saved at once make one read.
  function scheduleRefresh () {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 150);
  }

  async function refresh () {
    if (!session) return;
    const api = (p) => herald.apiUrl(session.username, p);
    const [w, a] = await Promise.all([
      herald.call('GET', api('webhooks'), session.token),
      herald.call('GET', api('accesses?includeDeletions=true'), session.token)
    ]);
    if (w.status !== 200) { $('hooks-error').textContent = herald.errorText(w.body, 'The webhooks cannot be read.'); return; }
    $('hooks-error').textContent = '';
    if (a.status === 200) {
      accessNames = {};
      for (const x of (a.body.accesses || [])) accessNames[x.id] = x.name + ' (' + x.type + ')';
      for (const x of (a.body.accessDeletions || [])) accessNames[x.id] = x.name + ' (' + x.type + ', deleted)';
    }
    render(w.body.webhooks || []);
  }

  function render (hooks) {
    // Keep the keyboard focus on the same button across a live update.
    const f = document.activeElement;
    const focus = f && f.dataset && f.dataset.action ? [f.dataset.action, f.dataset.id] : null;
    $('empty').hidden = hooks.length > 0;
    $('list').replaceChildren(...hooks.map(card));
    if (focus) {
      const again = document.querySelector('button[data-action="' + focus[0] + '"][data-id="' + CSS.escape(focus[1]) + '"]');
      if (again) again.focus();
    }
  }

  function fact (name, value) {
    return [herald.el('dt', { text: name }), herald.el('dd', { text: String(value) })];
  }

  function card (h) {
    const runs = (h.runs || []).slice(0, 30);
    const timeline = herald.el('ol', { class: 'timeline', 'aria-label': 'Latest runs, newest first' },
      ...runs.map((r) => {
        const label = statusText(r.status) + ' at ' + fmtTime(r.timestamp);
        return herald.el('li', { class: ok(r.status) ? 'ok' : 'fail', title: label }, herald.el('span', { class: 'sr-only', text: label }));
      }));
    const last = h.lastRun && h.lastRun.timestamp ? statusText(h.lastRun.status) + ', ' + fmtTime(h.lastRun.timestamp) : 'never';
    const facts = herald.el('dl', { class: 'facts' },
      ...fact('Created by', accessNames[h.accessId] || h.accessId),
      ...fact('Runs', h.runCount),
      ...fact('Failed runs', h.failCount),
      ...fact('Current retries', h.currentRetries),
      ...fact('Max retries', h.maxRetries),
      ...fact('Min interval', h.minIntervalMs + ' ms'),
      ...fact('Last run', last));
    const message = herald.el('p', { class: 'muted', role: 'status', id: 'msg-' + h.id });
    const actions = herald.el('div', { class: 'actions' },
      button('Send a test', 'test', h, 'secondary'),
      h.state === 'inactive' ? button('Reactivate', 'reactivate', h) : null,
      button(confirming.has(h.id) ? 'Confirm delete' : 'Delete', 'delete', h, 'danger'));
    return herald.el('article', { class: 'card webhook', 'data-id': h.id, 'aria-label': 'Webhook ' + h.url },
      herald.el('div', { class: 'status-line' },
        herald.el('h3', { class: 'url', text: h.url }),
        herald.el('span', { class: 'badge ' + h.state, text: h.state })),
      facts,
      herald.el('p', { class: 'muted', text: runs.length ? 'Latest runs (newest first):' : 'No runs yet.' }),
      timeline, actions, message);
  }

  function button (text, action, h, cls) {
    const b = herald.el('button', { type: 'button', class: cls, 'data-action': action, 'data-id': h.id, text });
    b.addEventListener('click', () => act(action, h, b));
    return b;
  }

  async function act (action, h, b) {
    const api = (p) => herald.apiUrl(session.username, p);
    const say = (t) => { const m = $('msg-' + h.id); if (m) m.textContent = t; };
    const id = encodeURIComponent(h.id);
    let r;
    if (action === 'delete' && !confirming.has(h.id)) {
      confirming.add(h.id);
      b.textContent = 'Confirm delete';
      say('Press “Confirm delete” to delete this webhook for good.');
      setTimeout(() => { if (confirming.delete(h.id)) scheduleRefresh(); }, 6000);
      return;
    }
    b.disabled = true;
    if (action === 'test') r = await herald.call('POST', api('webhooks/' + id + '/test'), session.token, {});
    if (action === 'reactivate') r = await herald.call('PUT', api('webhooks/' + id), session.token, { state: 'active' });
    if (action === 'delete') { confirming.delete(h.id); r = await herald.call('DELETE', api('webhooks/' + id), session.token); }
    b.disabled = false;
    if (r.status !== 200) { say(herald.errorText(r.body, 'That did not work.')); return; }
    say(action === 'test' ? 'Test sent.' : action === 'reactivate' ? 'Reactivated.' : 'Deleted.');
    scheduleRefresh();
  }

  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('username').focus();
})();
