//! Black-box tests of socket.io (spec 5.9 and the scoped subscriptions of 4.1) over a real
//! websocket, speaking Engine.IO v4 / Socket.IO v5 frame by frame as Pryv's JS client does
//! (`/work/shared/reference/pryv-js-client.md`): auth, notifications (and no cross-user leak),
//! method calls, scoped subscriptions, and the socket closed when its access is deleted.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::Server;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);

/// What a Socket.IO client receives on its namespace.
#[derive(Debug, Clone, PartialEq)]
enum Packet {
    /// `42/ns,["name", args...]`
    Event(String, Vec<Value>),
    /// `43/ns,ID[args...]`
    Ack(u64, Vec<Value>),
    /// `41/ns,`
    Disconnect,
}

/// A raw Socket.IO client on one namespace: the frames of the reference, nothing more.
struct Sio {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    ns: String,
    next_ack: u64,
    pending: VecDeque<Packet>,
    /// Every frame received, as text, for exact-frame assertions.
    frames: Vec<String>,
}

impl Sio {
    /// Upgrade, read the Engine.IO open packet, join `ns`. `Err` is the `connect_error` message.
    async fn connect(s: &Server, ns: &str, token: Option<&str>) -> Result<Sio, String> {
        let host = s.base.trim_start_matches("http://");
        let auth = token.map(|t| format!("auth={t}&")).unwrap_or_default();
        let url = format!("ws://{host}/socket.io/?{auth}EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket upgrade");
        let mut sio = Sio { ws, ns: ns.to_string(), next_ack: 0, pending: VecDeque::new(), frames: vec![] };
        let open = sio.frame().await.expect("engine.io open packet");
        assert!(open.starts_with("0{"), "{open}");
        let open: Value = serde_json::from_str(&open[1..]).unwrap();
        assert!(open["sid"].is_string() && open["pingInterval"].is_number() && open["pingTimeout"].is_number(), "{open}");
        sio.send(format!("40{ns},")).await;
        let answer = sio.frame().await.expect("connect answer");
        if let Some(rest) = answer.strip_prefix(&format!("40{ns},")) {
            let v: Value = serde_json::from_str(rest).unwrap();
            assert!(v["sid"].is_string(), "{answer}");
            Ok(sio)
        } else if let Some(rest) = answer.strip_prefix(&format!("44{ns},")) {
            let v: Value = serde_json::from_str(rest).unwrap();
            Err(v["message"].as_str().unwrap_or_default().to_string())
        } else {
            panic!("unexpected answer to connect: {answer}")
        }
    }

    /// Connect, then let the notifications of changes made before the connection pass: the bus
    /// may still be routing them when the socket joins, and they may then reach it (a client
    /// can always hear of a change twice, never zero times).
    async fn open(s: &Server, ns: &str, token: &str) -> Sio {
        let mut sio = Sio::connect(s, ns, Some(token)).await.expect("connected");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = sio.ok("getSubscriptions", &[]).await;
        sio.pending.clear();
        sio
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next text frame (answering pings), or `None` when the connection closes.
    async fn frame(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame in time")? {
                Ok(Message::Text(t)) if t.as_str() == "2" => self.send("3".into()).await,
                Ok(Message::Text(t)) => {
                    self.frames.push(t.to_string());
                    return Some(t.to_string());
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn parse(&self, f: &str) -> Option<Packet> {
        let prefix = |t: &str| format!("4{t}{},", self.ns);
        if let Some(rest) = f.strip_prefix(&prefix("2")) {
            let mut a: Vec<Value> = serde_json::from_str(rest).expect("event JSON");
            let name = a.remove(0).as_str().unwrap().to_string();
            return Some(Packet::Event(name, a));
        }
        if let Some(rest) = f.strip_prefix(&prefix("3")) {
            let i = rest.find('[').expect("ack args");
            return Some(Packet::Ack(rest[..i].parse().unwrap(), serde_json::from_str(&rest[i..]).unwrap()));
        }
        if f == prefix("1") {
            return Some(Packet::Disconnect);
        }
        None
    }

    /// The next packet of the namespace; `None` if the connection closed.
    async fn packet(&mut self) -> Option<Packet> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        loop {
            let f = self.frame().await?;
            if let Some(p) = self.parse(&f) {
                return Some(p);
            }
        }
    }

    /// The next event (acks are not expected here).
    async fn event(&mut self) -> (String, Vec<Value>) {
        match self.packet().await {
            Some(Packet::Event(n, a)) => (n, a),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// `socket.emit(name, args..., ack)`: the ack's arguments. Events received meanwhile wait.
    async fn call(&mut self, name: &str, args: &[Value]) -> Vec<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let mut all = vec![json!(name)];
        all.extend_from_slice(args);
        self.send(format!("42{},{id}{}", self.ns, Value::Array(all))).await;
        let mut held = VecDeque::new();
        let out = loop {
            let f = self.frame().await.expect("connection open while waiting for an ack");
            match self.parse(&f) {
                Some(Packet::Ack(i, a)) if i == id => break a,
                Some(p) => held.push_back(p),
                None => {}
            }
        };
        self.pending.extend(held);
        out
    }

    /// The ack of a successful call: `(null, result)`.
    async fn ok(&mut self, name: &str, args: &[Value]) -> Value {
        let a = self.call(name, args).await;
        assert_eq!(a.len(), 2, "{name}: {a:?}");
        assert_eq!(a[0], Value::Null, "{name}: {a:?}");
        a[1].clone()
    }

    /// The ack of a failed call: `({error, meta})`, returning the error id.
    async fn err(&mut self, name: &str, args: &[Value]) -> String {
        let a = self.call(name, args).await;
        assert_eq!(a.len(), 1, "{name}: {a:?}");
        assert!(a[0]["meta"]["serverTime"].is_number(), "{a:?}");
        assert!(a[0]["error"]["message"].is_string(), "{a:?}");
        a[0]["error"]["id"].as_str().unwrap().to_string()
    }

    /// Nothing else arrives before the answer to a harmless call: everything routed earlier has
    /// been delivered by then (the server sends in order).
    async fn assert_quiet(&mut self) {
        let _ = self.ok("getSubscriptions", &[]).await;
        assert!(self.pending.is_empty(), "unexpected packets: {:?}", self.pending);
    }
}

async fn stream(s: &Server, u: &str, token: &str, id: &str, parent: Option<&str>) {
    let (st, b) = s.post(&format!("/{u}/streams"), token, json!({"id": id, "name": id, "parentId": parent})).await;
    assert_eq!(st, 201, "{b}");
}

async fn event(s: &Server, u: &str, token: &str, stream: &str, t: &str) -> String {
    let (st, b) = s.post(&format!("/{u}/events"), token, json!({"streamIds": [stream], "type": t, "content": 1})).await;
    assert_eq!(st, 201, "{b}");
    b["event"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn connections_are_authenticated_like_http() {
    let s = Server::start();
    let alice = s.register("alice").await;
    let _ = s.register("bobby").await;

    assert_eq!(Sio::connect(&s, "/alice/alice", Some("not-a-token")).await.err().unwrap(), "Cannot find access from token.");
    let missing = Sio::connect(&s, "/alice/alice", None).await.err().unwrap();
    assert!(missing.contains("access token is missing"), "{missing}");
    // Bobby's namespace with Alice's token: that token is not Bobby's.
    assert_eq!(Sio::connect(&s, "/bobby", Some(&alice)).await.err().unwrap(), "Cannot find access from token.");
    assert_eq!(Sio::connect(&s, "/nobody/nobody", Some(&alice)).await.err().unwrap(), "Unknown user \"nobody\"");
    for ns in ["/bobby/alice", "/x"] {
        let e = Sio::connect(&s, ns, Some(&alice)).await.err().unwrap();
        assert!(e.starts_with("Invalid resource"), "{ns}: {e}");
    }
    // Expired access.
    let (_, expiring) = s
        .access(
            "alice",
            &alice,
            json!({"name": "short", "type": "app", "permissions": [{"streamId": "*", "level": "read"}], "expireAfter": 1}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(Sio::connect(&s, "/alice", Some(&expiring)).await.err().unwrap(), "Access has expired.");

    // Both namespace forms connect, and both hear the user's changes.
    let mut a = Sio::open(&s, "/alice/alice", &alice).await;
    let mut b = Sio::open(&s, "/alice", &alice).await;
    let info = a.ok("getAccessInfo", &[json!({})]).await;
    assert_eq!(info["user"]["username"], "alice");
    assert!(info["meta"]["serverTime"].is_number());
    stream(&s, "alice", &alice, "diary", None).await;
    assert_eq!(a.event().await.0, "streamsChanged");
    assert_eq!(b.event().await.0, "streamsChanged");
}

#[tokio::test]
async fn notifications_follow_the_users_committed_changes_and_never_leak() {
    let s = Server::start();
    let alice = s.register("alice").await;
    let bobby = s.register("bobby").await;
    let mut a = Sio::open(&s, "/alice/alice", &alice).await;
    let mut b = Sio::open(&s, "/bobby/bobby", &bobby).await;

    stream(&s, "alice", &alice, "diary", None).await;
    assert_eq!(a.event().await, ("streamsChanged".into(), vec![]));
    event(&s, "alice", &alice, "diary", "note/txt").await;
    assert_eq!(a.event().await, ("eventsChanged".into(), vec![]));
    assert_eq!(a.frames.last().unwrap(), "42/alice/alice,[\"eventsChanged\"]");
    s.access("alice", &alice, json!({"name": "reader", "type": "shared", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    assert_eq!(a.event().await, ("accessesChanged".into(), vec![]));

    // Bobby heard none of it: his first notification is his own change.
    stream(&s, "bobby", &bobby, "bobby-stream", None).await;
    assert_eq!(b.event().await, ("streamsChanged".into(), vec![]));
    b.assert_quiet().await;
    a.assert_quiet().await;
}

#[tokio::test]
async fn api_methods_over_the_socket() {
    let s = Server::start();
    let alice = s.register("alice").await;
    let mut a = Sio::open(&s, "/alice/alice", &alice).await;

    // Any method id as the event name: (null, {...result, meta}).
    let created = a.ok("streams.create", &[json!({"id": "diary", "name": "Diary"})]).await;
    assert_eq!(created["stream"]["id"], "diary");
    assert!(created["meta"]["serverTime"].is_number() && created["meta"]["apiVersion"].is_string());
    let e = a.ok("events.create", &[json!({"streamIds": ["diary"], "type": "note/txt", "content": "over the socket"})]).await;
    let id = e["event"]["id"].as_str().unwrap().to_string();
    let got = a.ok("events.get", &[json!({"streams": ["diary"]})]).await;
    assert_eq!(got["events"][0]["id"], id.as_str());
    // The socket's own writes notify it too.
    assert_eq!(a.event().await.0, "streamsChanged");
    assert_eq!(a.event().await.0, "eventsChanged");

    // Errors: ({error, meta}).
    assert_eq!(a.err("events.getOne", &[json!({"id": "nope"})]).await, "unknown-resource");
    assert_eq!(a.err("no.such.method", &[json!({})]).await, "invalid-method");
    assert_eq!(a.err("streams.create", &[json!({"name": 5})]).await, "invalid-parameters-format");

    // callBatch, as @pryv/socket.io's `socket.api()` sends it.
    let batch = a
        .ok(
            "callBatch",
            &[json!([{"method": "events.get", "params": {"limit": 1}}, {"method": "events.getOne", "params": {"id": "nope"}}])],
        )
        .await;
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["events"][0]["id"], id.as_str());
    assert_eq!(results[1]["error"]["id"], "unknown-resource");
    assert_eq!(a.err("callBatch", &[json!({"not": "an array"})]).await, "invalid-request-structure");
    // The exact frame of the reference: `43/ns,ID[null,{"results":[...],...}]`.
    assert!(a.frames.iter().any(|f| f.starts_with("43/alice/alice,") && f.contains("[null,{\"results\":[")), "{:?}", a.frames);

    // A call without params.
    let info = a.ok("getAccessInfo", &[]).await;
    assert_eq!(info["type"], "personal");
}

#[tokio::test]
async fn scoped_subscriptions() {
    let s = Server::start();
    let alice = s.register("alice").await;
    stream(&s, "alice", &alice, "diary", None).await;
    stream(&s, "alice", &alice, "health", None).await;
    let mut a = Sio::open(&s, "/alice/alice", &alice).await;

    let r = a.ok("subscribe", &[json!({"key": "diary", "query": {"streams": ["diary"]}})]).await;
    assert_eq!(r, json!({"ok": true, "keys": ["diary"], "meta": r["meta"]}));
    let r = a
        .ok(
            "subscribe",
            &[json!({"scopes": {
                "steps": {"kind": "events", "query": {"types": ["count/*"]}},
                "structure": {"kind": "streams", "query": {"streams": ["diary"]}}
            }})],
        )
        .await;
    assert_eq!(r["keys"], json!(["diary", "steps", "structure"]));
    let subs = a.ok("getSubscriptions", &[]).await;
    assert_eq!(
        subs["scopes"],
        json!({
            "diary": {"kind": "events", "query": {"streams": ["diary"]}},
            "steps": {"kind": "events", "query": {"types": ["count/*"]}},
            "structure": {"kind": "streams", "query": {"streams": ["diary"]}}
        })
    );

    // Scoped: notificationsChanged with the matched keys, never the coarse events.
    event(&s, "alice", &alice, "diary", "note/txt").await;
    assert_eq!(a.event().await, ("notificationsChanged".into(), vec![json!({"keys": ["diary"]})]));
    event(&s, "alice", &alice, "diary", "count/steps").await;
    assert_eq!(a.event().await, ("notificationsChanged".into(), vec![json!({"keys": ["diary", "steps"]})]));
    event(&s, "alice", &alice, "health", "note/txt").await; // matches nothing
    stream(&s, "alice", &alice, "diary-child", Some("diary")).await;
    assert_eq!(a.event().await, ("notificationsChanged".into(), vec![json!({"keys": ["structure"]})]));
    // Matched against the tree of now: the new child is part of "diary".
    event(&s, "alice", &alice, "diary-child", "note/txt").await;
    assert_eq!(a.event().await, ("notificationsChanged".into(), vec![json!({"keys": ["diary"]})]));
    s.access("alice", &alice, json!({"name": "x", "type": "shared", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    a.assert_quiet().await;

    // Unsubscribing.
    assert_eq!(a.ok("unsubscribe", &[json!({"key": "diary"})]).await["keys"], json!(["steps", "structure"]));
    assert_eq!(a.ok("unsubscribe", &[json!({"keys": ["structure", "unknown"]})]).await["keys"], json!(["steps"]));
    event(&s, "alice", &alice, "diary", "note/txt").await;
    event(&s, "alice", &alice, "health", "count/steps").await;
    assert_eq!(a.event().await, ("notificationsChanged".into(), vec![json!({"keys": ["steps"]})]));
    assert_eq!(a.ok("unsubscribe", &[json!({"all": true})]).await["keys"], json!([]));
    assert_eq!(a.ok("getSubscriptions", &[]).await["scopes"], json!({}));
    // No scope left: the coarse notifications again.
    event(&s, "alice", &alice, "diary", "note/txt").await;
    assert_eq!(a.event().await, ("eventsChanged".into(), vec![]));

    // Invalid or forbidden subscriptions.
    assert_eq!(a.err("subscribe", &[json!({"query": {}})]).await, "invalid-request-structure");
    assert_eq!(a.err("subscribe", &[json!({"scopes": {"k": 5}})]).await, "invalid-request-structure");
    assert_eq!(a.err("subscribe", &[json!({"key": "k", "kind": "webhooks"})]).await, "invalid-request-structure");
    assert_eq!(a.err("subscribe", &[json!({"key": "k", "query": {"streams": ["no-such-stream"]}})]).await, "unknown-referenced-resource");
    let (_, reader) =
        s.access("alice", &alice, json!({"name": "reader", "type": "app", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    let mut r = Sio::open(&s, "/alice/alice", &reader).await;
    assert_eq!(r.err("subscribe", &[json!({"key": "k", "query": {"streams": ["health"]}})]).await, "forbidden");
    assert_eq!(r.err("subscribe", &[json!({"key": "k", "kind": "accesses", "query": {"types": ["shared"]}})]).await, "forbidden");
    assert_eq!(r.ok("subscribe", &[json!({"key": "mine", "query": {"streams": ["diary"]}})]).await["keys"], json!(["mine"]));
    // A refused subscription leaves the others as they were.
    assert_eq!(r.ok("getSubscriptions", &[]).await["scopes"], json!({"mine": {"kind": "events", "query": {"streams": ["diary"]}}}));
}

#[tokio::test]
async fn a_socket_whose_access_is_deleted_is_closed() {
    let s = Server::start();
    let alice = s.register("alice").await;
    let (app_id, app) =
        s.access("alice", &alice, json!({"name": "app", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let mut doomed = Sio::open(&s, "/alice/alice", &app).await;
    let mut other = Sio::open(&s, "/alice/alice", &alice).await;

    let (st, b) = s.delete(&format!("/alice/accesses/{app_id}"), &alice).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(doomed.packet().await, Some(Packet::Disconnect));
    // The other socket of the user stays, and hears of the change.
    assert_eq!(other.event().await, ("accessesChanged".into(), vec![]));
    // The deleted token no longer connects.
    assert_eq!(Sio::connect(&s, "/alice/alice", Some(&app)).await.err().unwrap(), "Cannot find access from token.");

    // Logging out ends the session's sockets too.
    let (st, b) = s.req("POST", "/alice/auth/logout", Some(&alice), Some(json!({}))).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(other.packet().await, Some(Packet::Disconnect));
}
