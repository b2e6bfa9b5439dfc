// A minimal socket.io client for Herald's pages: Engine.IO 4 / Socket.IO 5 over WebSocket only,
// the protocol docs/realtime.md describes. It joins one namespace with a connect payload
// (`{token, watch}`: the token travels in the payload, not in the URL), answers pings, hands
// every event to `onEvent`, and reconnects with growing delays. Small enough to read whole,
// so the pages need no third-party bundle.
'use strict';

function heraldSocket (namespace, payload, onEvent, onStatus) {
  let ws = null;
  let stopped = false;
  let delay = 1000;

  function packet (data) {
    // Engine.IO: '0' open, '2' ping, '4' message (a Socket.IO packet follows).
    if (data[0] === '0') { ws.send('40' + namespace + ',' + JSON.stringify(payload)); return; }
    if (data[0] === '2') { ws.send('3'); return; }
    if (data[0] !== '4') return;
    const type = data[1];
    let rest = data.slice(2);
    if (rest[0] === '/') { const comma = rest.indexOf(','); rest = comma < 0 ? '' : rest.slice(comma + 1); }
    if (type === '0') { delay = 1000; onStatus('live'); return; }
    if (type === '4') {
      stopped = true;
      let message = 'refused';
      try { message = JSON.parse(rest).message; } catch (e) { /* keep the default */ }
      onStatus('refused', message);
      ws.close();
      return;
    }
    if (type === '2') {
      let args = [];
      try { args = JSON.parse(rest.replace(/^\d+/, '')); } catch (e) { return; }
      if (Array.isArray(args) && typeof args[0] === 'string') onEvent(args[0], args.slice(1));
    }
  }

  function open () {
    const url = new URL('socket.io/?EIO=4&transport=websocket', herald.root);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(url.href);
    ws.onmessage = (m) => { if (typeof m.data === 'string') packet(m.data); };
    ws.onclose = () => {
      if (stopped) return;
      onStatus('offline');
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  open();
  return { close () { stopped = true; if (ws) ws.close(); } };
}
