// Shared by Herald's pages: calling the API as any Pryv app does, and small DOM helpers.
// The personal token a page gets by signing in stays in memory: never in a URL, a cookie or
// storage, so closing or reloading the page signs out.
'use strict';

const herald = (() => {
  // The server's root: both pages live one level below it (`/auth`, `/www/webhooks`).
  const root = new URL(document.body.dataset.root || '.', document.baseURI);

  function apiUrl (username, path) {
    return new URL(encodeURIComponent(username) + '/' + path, root).href;
  }

  // One API call; resolves to {status, body}. Never throws on an HTTP error: the caller
  // shows Pryv's message.
  async function call (method, url, token, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'omit', cache: 'no-store' });
    } catch (e) {
      return { status: 0, body: { error: { message: 'The server cannot be reached.' } } };
    }
    let json = null;
    try { json = await res.json(); } catch (e) { json = { error: { message: 'Unexpected answer from the server.' } }; }
    return { status: res.status, body: json };
  }

  function errorText (body, fallback) {
    return (body && body.error && body.error.message) || fallback;
  }

  // Sign in as `username`: a personal token for `appId`.
  async function login (username, password, appId) {
    const r = await call('POST', apiUrl(username, 'auth/login'), null, { username, password, appId });
    if (r.status === 200 && r.body && r.body.token) return { token: r.body.token };
    if (r.status === 404) return { error: 'There is no account with this username.' };
    return { error: errorText(r.body, 'Signing in failed.') };
  }

  // Show exactly one of the page's sections, and move the focus to its heading so keyboard
  // and screen-reader users land on what changed.
  function show (id) {
    for (const s of document.querySelectorAll('main section')) s.hidden = s.id !== id;
    const target = document.querySelector('#' + id + ' h2, #' + id + ' input, #' + id);
    if (target) {
      if (!target.hasAttribute('tabindex') && target.tagName === 'H2') target.setAttribute('tabindex', '-1');
      target.focus();
    }
  }

  function el (tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v; else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  return { root, apiUrl, call, errorText, login, show, el };
})();
