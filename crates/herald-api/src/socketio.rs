//! socket.io: why it exists. Pryv.io apps that show live data do not poll and cannot receive
//! webhooks (a phone or a browser has no public URL): they keep one socket.io connection open,
//! hear `eventsChanged` / `streamsChanged` / `accessesChanged` when their user's data changes,
//! and call API methods over the same connection. Pryv's own client (`@pryv/socket.io`) speaks
//! exactly this, so Herald must too, frame for frame (`docs/realtime.md`).
//!
//! What it does:
//! - Engine.IO v4 / Socket.IO v5 (socketioxide) at `/socket.io/`, on the API's port. A client
//!   joins the namespace `/{username}` or `/{username}/{username}` (the form a DNS-less
//!   apiEndpoint gives) with its token in the handshake query (`?auth=`), checked as HTTP checks
//!   it ([`Context::authenticate`]); a refusal is a `connect_error` carrying Pryv's message.
//! - Any event name is a method id, dispatched through the same table as HTTP
//!   ([`methods::dispatch`]), `callBatch` included; the ack is `(null, {...result, meta})` or
//!   `({error, meta})`. Every call authenticates again, so a deleted or expired access stops
//!   working at once.
//! - One task listens to the change bus and tells the sockets of the changed user, never
//!   another's. A socket with scoped subscriptions (`subscribe`, spec 4.1) hears only
//!   `notificationsChanged {keys}`, matched as scoped webhooks are ([`matched_keys`]).
//! - A socket whose access is deleted (or has expired) is disconnected.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use herald_bus::{Received, Subscription as BusSubscription};
use herald_model::access::Access;
use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_model::scope::{check_scopes, matched_keys, parse_scopes, Scope};
use herald_model::stream::StreamTree;
use herald_model::user::{is_valid_username, User};
use herald_model::{ApiError, ErrorId};
use serde_json::{json, Map, Value};
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;

use crate::context::Context;
use crate::{http, methods, App};

/// The most scopes one connection may hold (as for a webhook).
const MAX_SCOPES: usize = 100;
/// The three coarse notifications, as sent after a bus lag ("anything may have changed").
const ALL_KINDS: [ChangeKind; 3] = [ChangeKind::Events, ChangeKind::Streams, ChangeKind::Accesses];
/// A notification has no arguments: an empty array is an empty list (`42/ns,["eventsChanged"]`).
const NO_ARGS: [u8; 0] = [];

/// The socket.io layer to put on the API's router, and its handle (to close every connection
/// on shutdown). Must be called inside the Tokio runtime: it starts the task that routes changes.
pub fn layer(app: Arc<App>) -> (SocketIoLayer, SocketIo) {
    let limit = app.settings.body_limit;
    let (layer, io) = SocketIo::builder().max_payload(limit as u64).ws_max_message_size(limit).build_layer();
    let hub = Arc::new(Hub { app: app.clone(), next_id: AtomicU64::new(1), users: RwLock::new(HashMap::new()) });
    // `/{username}` and `/{username}/{username}`; deeper paths are not namespaces at all.
    for pattern in ["/{a}", "/{a}/{b}"] {
        let hub = hub.clone();
        let auth = move |io: SocketIo, socket: SocketRef, TryData(payload): TryData<Value>| {
            let hub = hub.clone();
            async move { hub.connect(io, socket, payload.unwrap_or(Value::Null)).await }
        };
        io.dyn_ns(pattern, (|| async {}).with(auth)).expect("valid namespace pattern");
    }
    tokio::spawn(route_activity(hub.clone(), app.webhook_activity.subscribe()));
    tokio::spawn(route_changes(hub, app.bus.subscribe()));
    (layer, io)
}

/// One connected socket, listed under its user.
struct Conn {
    id: u64,
    socket: SocketRef,
    state: Arc<ConnState>,
    since: Instant,
}

/// What the socket's handlers share (no socket reference: the socket owns its handlers).
struct ConnState {
    user: Arc<User>,
    access: Access,
    token: String,
    /// Scoped subscriptions in the order they were made: `(scope, {kind, query})` as given.
    subscriptions: Mutex<Vec<(Scope, Value)>>,
    /// The client asked for `webhooksChanged` (Herald's webhooks console): told when a webhook
    /// of the user is created, changed or deleted, or a run of it is saved.
    watch_webhooks: bool,
}

impl ConnState {
    fn scopes(&self) -> Vec<Scope> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(s, _)| s.clone()).collect()
    }
    fn keys(&self) -> Vec<String> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(s, _)| s.key.clone()).collect()
    }
}

/// The connected sockets, by user id.
struct Hub {
    app: Arc<App>,
    next_id: AtomicU64,
    users: RwLock<HashMap<String, HashMap<u64, Arc<Conn>>>>,
}

/// The username of a namespace, or why it is not one.
fn namespace_username(ns: &str) -> Result<&str, ApiError> {
    let segs: Vec<&str> = ns.trim_start_matches('/').split('/').collect();
    let invalid = || ApiError::new(ErrorId::UnknownResource, format!("Invalid resource \"{ns}\"."));
    match segs.as_slice() {
        [u] | [_, u] if segs.iter().all(|s| s == u) && is_valid_username(u) => Ok(u),
        _ => Err(invalid()),
    }
}

impl Hub {
    /// The connect middleware: runs before the client hears it is connected, so the socket is
    /// registered (and its handlers in place) before it can send or miss anything.
    ///
    /// The token comes from the handshake query (`?auth=`, as Pryv's client sends it) or from
    /// the socket.io connect payload (`{token}`), which keeps it out of URLs (Herald's pages).
    /// A payload `{watch: "webhooks"}` asks for `webhooksChanged`.
    async fn connect(self: Arc<Self>, io: SocketIo, socket: SocketRef, payload: Value) -> Result<(), String> {
        let ns = socket.ns().to_string();
        let refused = |e: ApiError| {
            // Nobody can ever connect to this namespace: forget it rather than keep it.
            if e.id == ErrorId::UnknownResource {
                io.delete_ns(&ns);
            }
            e.message
        };
        let username = namespace_username(&ns).map_err(refused)?.to_string();
        let parts = socket.req_parts();
        let token = http::token(&parts.headers, &http::query_params(parts.uri.query()))
            .or_else(|| payload.get("token").and_then(Value::as_str).map(str::to_owned));
        let watch_webhooks = payload.get("watch").and_then(Value::as_str) == Some("webhooks");
        let ctx = self.authenticate(&username, token.as_deref()).await.map_err(refused)?;
        let state = Arc::new(ConnState {
            user: ctx.user.clone(),
            access: ctx.access.clone(),
            token: token.unwrap_or_default(),
            subscriptions: Mutex::new(vec![]),
            watch_webhooks,
        });
        drop(ctx);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.install_handlers(&socket, id, &state);
        self.add(Arc::new(Conn { id, socket: socket.clone(), state: state.clone(), since: Instant::now() }));
        // An access deleted between the first check and now was published before this socket
        // was listed: check again, so that no deletion slips between the two.
        if let Err(e) = self.authenticate(&username, Some(&state.token)).await {
            self.remove(&state.user.id, id);
            return Err(e.message);
        }
        Ok(())
    }

    async fn authenticate(&self, username: &str, token: Option<&str>) -> Result<Context, ApiError> {
        Context::authenticate(self.app.clone(), self.app.begin_request(), username, token).await
    }

    fn install_handlers(self: &Arc<Self>, socket: &SocketRef, id: u64, state: &Arc<ConnState>) {
        for op in ["subscribe", "unsubscribe", "getSubscriptions"] {
            let (hub, st) = (self.clone(), state.clone());
            socket.on(op, move |TryData(params): TryData<Value>, ack: AckSender| async move {
                let params = params.unwrap_or(Value::Null);
                let r = match op {
                    "subscribe" => hub.subscribe(&st, &params).await,
                    "unsubscribe" => Ok(unsubscribe(&st, &params)),
                    _ => Ok(get_subscriptions(&st)),
                };
                hub.answer(ack, r, None);
            });
        }
        let (hub, st) = (self.clone(), state.clone());
        socket.on_fallback(move |Event(method): Event, TryData(params): TryData<Value>, ack: AckSender| async move {
            hub.call(&st, &method, params.unwrap_or_else(|_| json!({})), ack).await;
        });
        let (hub, user_id) = (self.clone(), state.user.id.clone());
        socket.on_disconnect(move || async move { hub.remove(&user_id, id) });
    }

    /// A method call over the socket: authenticated and dispatched as over HTTP.
    async fn call(&self, state: &ConnState, method: &str, params: Value, ack: AckSender) {
        let clock = self.app.begin_request();
        let server_time = clock.server_time;
        let r = match Context::authenticate(self.app.clone(), clock, &state.user.username, Some(&state.token)).await {
            Ok(ctx) => methods::dispatch(Arc::new(ctx), method, params).await,
            Err(e) => Err(e),
        };
        self.answer(ack, r, Some(server_time));
    }

    /// Acknowledge as Pryv's socket.io does: `(null, {...result, meta})` or `({error, meta})`.
    fn answer(&self, ack: AckSender, result: Result<Value, ApiError>, server_time: Option<f64>) {
        let meta = self.app.meta(server_time.unwrap_or_else(|| self.app.begin_request().server_time));
        let sent = match result {
            Ok(v) => {
                let mut body = match v {
                    Value::Object(m) => m,
                    other => Map::from_iter([("result".to_string(), other)]),
                };
                body.insert("meta".into(), meta);
                ack.send(&(Value::Null, Value::Object(body)))
            }
            Err(e) => ack.send(&(json!({ "error": e.to_json(), "meta": meta }),)),
        };
        if let Err(e) = sent {
            tracing::debug!("socket.io ack not sent: {e}");
        }
    }

    /// `subscribe`: `{key, kind?, query?}` or `{scopes: {key: {kind?, query?}}}`. Scopes are
    /// checked against the socket's access and the current stream tree, like a webhook's.
    async fn subscribe(&self, state: &ConnState, params: &Value) -> Result<Value, ApiError> {
        let mut given = Map::new();
        // As given, with Pryv's defaults (`events`, `{}`) filled in; not an object stays as it is,
        // for `parse_scopes` to refuse.
        let scope_of = |v: &Value| match v {
            Value::Object(o) => {
                let or = |k: &str, default: Value| o.get(k).filter(|v| !v.is_null()).cloned().unwrap_or(default);
                json!({ "kind": or("kind", json!("events")), "query": or("query", json!({})) })
            }
            other => other.clone(),
        };
        match (params.get("scopes"), params.get("key")) {
            (Some(Value::Object(scopes)), _) => {
                for (k, v) in scopes {
                    given.insert(k.clone(), scope_of(v));
                }
            }
            (_, Some(Value::String(key))) => {
                given.insert(key.clone(), scope_of(params));
            }
            _ => return Err(ApiError::structure("subscribe requires { key, query } or { scopes: { key: { query } } }")),
        }
        let scopes = parse_scopes(&Value::Object(given.clone()))?;
        let ctx = self.authenticate(&state.user.username, Some(&state.token)).await?;
        check_scopes(&scopes, &ctx.access, &ctx.tree().await?.tree)?;
        let mut subs = state.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = subs.clone();
        for scope in scopes {
            let raw = given.get(&scope.key).cloned().unwrap_or(Value::Null);
            match next.iter_mut().find(|(s, _)| s.key == scope.key) {
                Some(slot) => *slot = (scope, raw),
                None => next.push((scope, raw)),
            }
        }
        if next.len() > MAX_SCOPES {
            return Err(ApiError::param("scopes", format!("At most {MAX_SCOPES} scopes per connection.")));
        }
        *subs = next;
        Ok(json!({ "ok": true, "keys": subs.iter().map(|(s, _)| s.key.clone()).collect::<Vec<_>>() }))
    }

    fn add(&self, conn: Arc<Conn>) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if users.entry(conn.state.user.id.clone()).or_default().insert(conn.id, conn).is_none() {
            metrics::gauge!("herald_socketio_connections").increment(1.0);
        }
    }

    fn remove(&self, user_id: &str, id: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = users.get_mut(user_id) {
            // Removed twice (a disconnect by Herald, then the socket's own handler): counted once.
            if conns.remove(&id).is_some() {
                metrics::gauge!("herald_socketio_connections").decrement(1.0);
            }
            if conns.is_empty() {
                users.remove(user_id);
            }
        }
    }

    fn of_user(&self, user_id: &str) -> Vec<Arc<Conn>> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(user_id).map(|c| c.values().cloned().collect()).unwrap_or_default()
    }

    fn all(&self) -> Vec<Arc<Conn>> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.values().flat_map(|c| c.values().cloned()).collect()
    }

    fn disconnect(&self, conn: &Conn) {
        self.remove(&conn.state.user.id, conn.id);
        let _ = conn.socket.clone().disconnect();
    }

    /// Tell the sockets of the change's user; close those whose access is gone.
    async fn route(&self, change: &Change) {
        if change.kind == ChangeKind::Webhooks {
            self.webhooks_changed(&change.user_id);
            return;
        }
        if !change.kind.is_public() {
            return;
        }
        let conns = self.of_user(&change.user_id);
        if conns.is_empty() {
            return;
        }
        let deleted: HashSet<&str> = match (change.kind, change.change_type) {
            (ChangeKind::Accesses, ChangeType::Delete) => change
                .items
                .iter()
                .filter_map(|i| match i {
                    ChangedItem::Access { id, .. } => Some(id.as_str()),
                    _ => None,
                })
                .collect(),
            _ => HashSet::new(),
        };
        let now = crate::now();
        let mut tree: Option<Option<StreamTree>> = None;
        for conn in conns {
            if deleted.contains(conn.state.access.id.as_str()) || conn.state.access.is_expired(now) {
                self.disconnect(&conn);
                continue;
            }
            let scopes = conn.state.scopes();
            if scopes.is_empty() {
                emit(&conn, change.kind.message(), &NO_ARGS);
                continue;
            }
            if tree.is_none() {
                tree = Some(match self.app.store.streams(&change.user_id).await {
                    Ok(streams) => Some(StreamTree::new(&streams)),
                    Err(e) => {
                        tracing::warn!("socket.io: cannot load the stream tree to match scopes: {e}");
                        None
                    }
                });
            }
            let keys: Vec<&str> = match tree.as_ref().and_then(Option::as_ref) {
                Some(t) => matched_keys(&scopes, change, t),
                // Without the tree, every scope of that kind may have matched.
                None => scopes.iter().filter(|s| s.kind == change.kind).map(|s| s.key.as_str()).collect(),
            };
            if !keys.is_empty() {
                emit(&conn, "notificationsChanged", &json!({ "keys": keys }));
            }
        }
    }

    /// Tell the sockets watching the user's webhooks that they changed (no details: the page
    /// reads them again with its own token).
    fn webhooks_changed(&self, user_id: &str) {
        for conn in self.of_user(user_id) {
            if conn.state.watch_webhooks {
                emit(&conn, ChangeKind::Webhooks.message(), &NO_ARGS);
            }
        }
    }

    /// The bus dropped changes: anything may have changed, for everyone.
    fn lagged(&self) {
        for conn in self.all() {
            let keys = conn.state.keys();
            if keys.is_empty() {
                for kind in ALL_KINDS {
                    emit(&conn, kind.message(), &NO_ARGS);
                }
            } else {
                emit(&conn, "notificationsChanged", &json!({ "keys": keys }));
            }
        }
    }

    /// Forget sockets that never finished connecting (the client left during the handshake, so
    /// no disconnect handler ran).
    fn sweep(&self) {
        for conn in self.all() {
            if !conn.socket.connected() && conn.since.elapsed() > Duration::from_secs(30) {
                self.remove(&conn.state.user.id, conn.id);
            }
        }
    }
}

/// Runs and states saved by this node's delivery engine, to the sockets watching webhooks.
async fn route_activity(hub: Arc<Hub>, mut rx: tokio::sync::broadcast::Receiver<Arc<str>>) {
    loop {
        match rx.recv().await {
            Ok(user_id) => hub.webhooks_changed(&user_id),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                for conn in hub.all() {
                    if conn.state.watch_webhooks {
                        emit(&conn, ChangeKind::Webhooks.message(), &NO_ARGS);
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

fn emit<T: serde::Serialize + ?Sized>(conn: &Conn, event: &str, data: &T) {
    // A full buffer means notifications are already waiting for this client; a socket not yet
    // connected has not been told it is, so it has nothing to miss.
    if let Err(e) = conn.socket.emit(event, data) {
        tracing::debug!("socket.io: {event} not sent: {e}");
    }
}

/// `unsubscribe`: `{key}`, `{keys: [...]}` or `{all: true}`.
fn unsubscribe(state: &ConnState, params: &Value) -> Value {
    let mut subs = state.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    if params.get("all") == Some(&Value::Bool(true)) {
        subs.clear();
    } else if let Some(keys) = params.get("keys").and_then(Value::as_array) {
        subs.retain(|(s, _)| !keys.iter().any(|k| k.as_str() == Some(&s.key)));
    } else if let Some(key) = params.get("key").and_then(Value::as_str) {
        subs.retain(|(s, _)| s.key != key);
    }
    json!({ "ok": true, "keys": subs.iter().map(|(s, _)| s.key.clone()).collect::<Vec<_>>() })
}

/// `getSubscriptions`: `{scopes: {key: {kind, query}}}` as they were given.
fn get_subscriptions(state: &ConnState) -> Value {
    let subs = state.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    let scopes: Map<String, Value> = subs.iter().map(|(s, raw)| (s.key.clone(), raw.clone())).collect();
    json!({ "scopes": scopes })
}

async fn route_changes(hub: Arc<Hub>, mut sub: Box<dyn BusSubscription>) {
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            received = sub.recv() => match received {
                Some(Received::Change(change)) => hub.route(&change).await,
                Some(Received::Lagged(n)) => {
                    tracing::warn!("socket.io: the change bus dropped {n} changes; notifying every socket");
                    hub.lagged();
                }
                None => break,
            },
            _ = sweep.tick() => hub.sweep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert_eq!(namespace_username("/alice").unwrap(), "alice");
        assert_eq!(namespace_username("/alice/alice").unwrap(), "alice");
        assert!(namespace_username("/bobby/alice").is_err());
        assert!(namespace_username("/").is_err());
        assert!(namespace_username("/a").is_err());
        assert!(namespace_username("/alice/alice/alice").is_err());
    }
}
