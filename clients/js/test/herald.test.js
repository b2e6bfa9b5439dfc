// Pryv.io's official JavaScript client (`pryv`, `@pryv/socket.io`), unmodified, against a running
// Herald. HERALD is the server's base URL, e.g. `HERALD=http://127.0.0.1:3000 node --test`.
// The server must let webhooks call loopback (HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS=true): the test
// receives its webhook on 127.0.0.1. `cargo test -p herald --test js_client` starts one and runs this.
//
// The steps share one user and run in order; each asserts what the library gave back.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const pryv = require('pryv');
require('@pryv/socket.io')(pryv);

const HERALD = (process.env.HERALD || '').replace(/\/+$/, '');
if (!HERALD) throw new Error('Set HERALD to the base URL of a running Herald, e.g. HERALD=http://127.0.0.1:3000');

const APP_ID = 'herald-js-tests';
const PASSWORD = 'js-client-pw';
const username = 'js' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6);

// Shared between the steps.
let service, personal, app, since, eventId;
const sockets = [];

// A local receiver for the webhook the test registers.
const received = [];
const receiver = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    try { received.push(JSON.parse(body)); } catch { received.push(body); }
    res.writeHead(200).end();
  });
});

before(async () => {
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  for (const s of sockets) { try { s.close(); } catch { /* already closed */ } }
  await new Promise((resolve) => receiver.close(resolve));
});

/** Resolves with the arguments of the first `eventName` the socket emits, or rejects after `ms`. */
function next (socket, eventName, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${eventName} within ${ms} ms`)), ms);
    socket.on(eventName, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

async function until (check, ms = 5000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return check();
}

test('pryv.Service reads Herald\'s service info', async () => {
  service = new pryv.Service(HERALD + '/reg/service/info');
  const info = await service.info();
  assert.equal(typeof info.name, 'string');
  assert.equal(info.api, HERALD + '/{username}/');
  assert.equal(info.register, HERALD + '/reg/');
  assert.equal(typeof info.access, 'string');
  assert.equal(await service.supportsHF(), false);
});

test('registration: hostings, createUser, userExists', async () => {
  const raw = await (await fetch(HERALD + '/reg/hostings')).json();
  assert.ok(raw.regions, JSON.stringify(raw));
  const hostings = await service.flatHostings();
  assert.ok(hostings.length >= 1);
  assert.ok(hostings.some((h) => h.available), JSON.stringify(hostings));

  const created = await service.createUser({
    username, password: PASSWORD, email: username + '@example.com', hosting: 'auto', appId: APP_ID
  });
  assert.equal(created.username, username);
  assert.equal(created.apiEndpoint, HERALD + '/' + username + '/');

  assert.equal(await service.userExists(username), true);
  assert.equal(await service.userExists('nobody-' + username), false);
});

test('service.login and connection.accessInfo', async () => {
  personal = await service.login(username, PASSWORD, APP_ID);
  assert.ok(personal instanceof pryv.Connection);
  assert.ok(personal.token);
  assert.equal(personal.endpoint, HERALD + '/' + username + '/');
  const info = await personal.accessInfo();
  assert.equal(info.type, 'personal');
  assert.equal(info.user.username, username);
  assert.equal(typeof info.meta.serverTime, 'number');
  assert.equal(await personal.username(), username);
});

test('connection.api: streams.create, events.create, events.get, webhooks.create, webhooks.get in one batch', async () => {
  // Webhooks belong to app accesses: the personal connection creates one, then works with it.
  const access = await personal.apiOne('accesses.create', {
    name: 'js-app', type: 'app', permissions: [{ streamId: '*', level: 'manage' }]
  }, 'access');
  assert.equal(access.type, 'app');
  app = new pryv.Connection(access.apiEndpoint);
  assert.equal(app.token, access.token);
  since = (await app.accessInfo()).meta.serverTime;

  const url = `http://127.0.0.1:${receiver.address().port}/notify`;
  const results = await app.api([
    { method: 'streams.create', params: { id: 'js-diary', name: 'JS diary' } },
    { method: 'events.create', params: { streamIds: ['js-diary'], type: 'note/txt', content: 'hello from pryv.js' } },
    { method: 'events.get', params: { streams: ['js-diary'] } },
    { method: 'webhooks.create', params: { url } },
    { method: 'webhooks.get', params: {} }
  ]);
  assert.equal(results.length, 5);
  for (const r of results) assert.equal(r.error, undefined, JSON.stringify(r));
  assert.equal(results[0].stream.id, 'js-diary');
  eventId = results[1].event.id;
  assert.equal(results[1].event.content, 'hello from pryv.js');
  assert.deepEqual(results[2].events.map((e) => e.id), [eventId]);
  assert.equal(results[3].webhook.url, url);
  assert.equal(results[3].webhook.state, 'active');
  assert.deepEqual(results[4].webhooks.map((w) => w.id), [results[3].webhook.id]);

  // A failing call is an element of the results, not a failure of the batch.
  const [bad] = await app.api([{ method: 'events.getOne', params: { id: 'no-such-event' } }]);
  assert.equal(bad.error.id, 'unknown-resource');
  // An empty batch (the client sends one when a batch is an exact multiple of its chunk size).
  assert.deepEqual(await app.api([]), []);
});

test('connection.get(\'events\', {modifiedSince})', async () => {
  const res = await app.get('events', { modifiedSince: since, includeDeletions: true });
  assert.equal(typeof res.meta.serverTime, 'number');
  assert.ok(res.events.some((e) => e.id === eventId), JSON.stringify(res));
  const later = await app.get('events', { modifiedSince: res.meta.serverTime + 1 });
  assert.deepEqual(later.events, []);

  // The streamed variant needs compact JSON.
  const streamed = [];
  const r = await app.getEventsStreamed({ streams: ['js-diary'] }, (e) => streamed.push(e.id));
  assert.equal(r.eventsCount, 1);
  assert.deepEqual(streamed, [eventId]);
});

test('socket.io: eventsChanged after an events.create made by another connection', async () => {
  const socket = await app.socket.open();
  sockets.push(socket);
  // Notifications of the changes above may still be on their way: let them pass.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const changed = next(socket, 'eventsChanged');
  await personal.apiOne('events.create', { streamIds: ['js-diary'], type: 'count/steps', content: 1200 }, 'event');
  const args = await changed;
  assert.deepEqual(args, []);

  // API calls over the socket go through the same methods (callBatch).
  const [res] = await socket.api([{ method: 'events.get', params: { streams: ['js-diary'], limit: 1 } }]);
  assert.equal(res.events.length, 1);
  assert.equal(res.events[0].type, 'count/steps');

  // streamsChanged too.
  const streams = next(socket, 'streamsChanged');
  await personal.apiOne('streams.create', { id: 'js-other', name: 'Other' }, 'stream');
  await streams;

  // And the webhook registered through the library heard of it as well.
  assert.ok(await until(() => received.some((b) => b && Array.isArray(b.messages) && b.messages.includes('eventsChanged'))),
    JSON.stringify(received));
});

test('socket.io refuses a bad token', async () => {
  const bad = new pryv.Connection(HERALD.replace('://', '://not-a-token@') + '/' + username + '/');
  // `open()` first reads access-info, which fails with Pryv's error.
  await assert.rejects(bad.socket.open(), /Cannot find access from token/);
  // The socket.io handshake itself refuses it too: the client @pryv/socket.io uses, its options.
  const io = require('socket.io-client');
  const raw = io(`${HERALD}/${username}/${username}?auth=not-a-token`, { forceNew: true, transports: ['websocket'], reconnection: false });
  try {
    const err = await new Promise((resolve, reject) => {
      raw.on('connect', () => reject(new Error('connected with a bad token')));
      raw.on('connect_error', resolve);
    });
    assert.equal(err.message, 'Cannot find access from token.');
  } finally {
    raw.close();
  }
});

test('socket.io: a socket whose access is deleted is closed', async () => {
  const [socket] = sockets;
  const closed = next(socket, 'disconnect');
  const info = await app.accessInfo();
  await personal.apiOne('accesses.delete', { id: info.id }, 'accessDeletion');
  const [reason] = await closed;
  assert.equal(reason, 'io server disconnect');
});

test('GET /{username}/service/info, and an unknown user is unknown-resource', async () => {
  const info = await app.service.info();
  assert.equal(info.api, HERALD + '/{username}/');
  assert.equal(app.service.infoSync().register, HERALD + '/reg/');

  const ghost = new pryv.Connection(HERALD.replace('://', '://some-token@') + '/nobody-' + username + '/');
  const res = await ghost.accessInfo();
  assert.equal(res.error.id, 'unknown-resource');
  assert.equal(typeof res.meta.serverTime, 'number');
  await assert.rejects(ghost.username(), /Failed fetching accessinfo/);
});

// Issue 10: attachments, account, lookups.

/** GET a file of an event with its readToken: the bytes. */
async function download (eventObj, i = 0) {
  const a = eventObj.attachments[i];
  const res = await fetch(`${HERALD}/${username}/events/${eventObj.id}/${a.id}?readToken=${encodeURIComponent(a.readToken)}`);
  assert.equal(res.status, 200);
  return Buffer.from(await res.arrayBuffer());
}

test('createEventWithFile (from a path) and createEventWithFileFromBuffer, read back', async () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-'));
  const file = path.join(dir, 'note.txt');
  fs.writeFileSync(file, 'a file attached by pryv.js\n');

  const fromPath = await personal.createEventWithFile({ streamIds: ['js-diary'], type: 'picture/attached' }, file);
  assert.equal(fromPath.error, undefined, JSON.stringify(fromPath));
  const [a] = fromPath.event.attachments;
  assert.equal(a.fileName, 'note.txt');
  assert.equal(a.type, 'text/plain');
  assert.equal(a.size, 27);
  assert.match(a.integrity, /^sha256-/);
  assert.equal(typeof a.readToken, 'string');
  assert.equal((await download(fromPath.event)).toString(), 'a file attached by pryv.js\n');

  const bytes = Buffer.from(Array.from({ length: 70000 }, (_, i) => i % 256));
  const fromBuffer = await personal.createEventWithFileFromBuffer({ streamIds: ['js-diary'], type: 'file/attached' }, bytes, 'data.bin');
  assert.equal(fromBuffer.error, undefined, JSON.stringify(fromBuffer));
  assert.equal(fromBuffer.event.attachments[0].fileName, 'data.bin');
  assert.equal(fromBuffer.event.attachments[0].size, bytes.length);
  assert.ok((await download(fromBuffer.event)).equals(bytes));

  // Read back through the API: the events carry their attachments.
  const got = await personal.apiOne('events.getOne', { id: fromBuffer.event.id }, 'event');
  assert.equal(got.attachments[0].id, fromBuffer.event.attachments[0].id);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('account.get, account.changePassword and back', async () => {
  const account = await personal.apiOne('account.get', {}, 'account');
  assert.equal(account.username, username);
  assert.equal(account.email, username + '@example.com');
  assert.equal(typeof account.storageUsed.dbDocuments, 'number');
  assert.ok(account.storageUsed.attachedFiles >= 27 + 70000, JSON.stringify(account));

  const [wrong] = await personal.api([{ method: 'account.changePassword', params: { oldPassword: 'not-it', newPassword: 'js-other-pw' } }]);
  assert.equal(wrong.error.id, 'invalid-operation');
  await personal.apiOne('account.changePassword', { oldPassword: PASSWORD, newPassword: 'js-other-pw' });
  const again = await service.login(username, 'js-other-pw', APP_ID);
  assert.ok(again.token);
  await personal.apiOne('account.changePassword', { oldPassword: 'js-other-pw', newPassword: PASSWORD });
  assert.ok((await service.login(username, PASSWORD, APP_ID)).token);
});

test('service.userIdForEmail', async () => {
  assert.equal(await service.userIdForEmail(username + '@example.com'), username);
  assert.equal(await service.userIdForEmail('nobody-' + username + '@example.com'), null);
});

test('access requests: startAccessRequest, the consent page\'s calls, pollAccessRequest', async () => {
  const request = await service.startAccessRequest({
    requestingAppId: 'herald-js-consent',
    requestedPermissions: [{ streamId: 'js-consent', level: 'read', defaultName: 'JS consent' }],
    languageCode: 'en',
    returnURL: false
  });
  assert.match(request.key, /^[A-Za-z0-9_-]{16}$/);
  assert.equal(request.pollRateMs, 1000);
  assert.ok(request.authUrl.startsWith(HERALD + '/auth?lang=en&key=' + request.key), request.authUrl);
  let state = await service.pollAccessRequest(request.poll);
  assert.equal(state.status, 'NEED_SIGNIN');
  assert.equal(state.requestingAppId, 'herald-js-consent');

  // What the consent page does once the person accepts: checkApp, a new app access, and the
  // outcome posted to the poll URL.
  const checked = await personal.apiOne('accesses.checkApp', {
    requestingAppId: state.requestingAppId, requestedPermissions: state.requestedPermissions
  }, 'checkedPermissions');
  const access = await personal.apiOne('accesses.create', { name: state.requestingAppId, type: 'app', permissions: checked }, 'access');
  const posted = await fetch(request.poll, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ status: 'ACCEPTED', username, token: access.token })
  });
  assert.equal(posted.status, 200);

  state = await service.pollAccessRequest(request.key);
  assert.equal(state.status, 'ACCEPTED');
  assert.equal(state.username, username);
  const granted = new pryv.Connection(state.apiEndpoint);
  const info = await granted.accessInfo();
  assert.equal(info.name, 'herald-js-consent');
  assert.deepEqual(info.permissions, [{ streamId: 'js-consent', level: 'read' }]);

  // Refused: the library hands back the 403 body.
  const refused = await service.startAccessRequest({ requestingAppId: 'herald-js-consent', requestedPermissions: checked });
  await fetch(refused.poll, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ status: 'REFUSED', reasonId: 'REFUSED_BY_USER' })
  });
  const answer = await service.pollAccessRequest(refused.key);
  assert.equal(answer.status, 'REFUSED');
  assert.equal(answer.reasonId, 'REFUSED_BY_USER');
  await assert.rejects(service.pollAccessRequest('AAAAAAAAAAAAAAAA'), /Unknown or expired access key/);
});
