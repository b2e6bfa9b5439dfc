//! A step counter fed by Herald webhooks — the use case of Pryv.io's webhooks guide.
//!
//! Herald POSTs a signed notification ("something changed") to this service. The service checks
//! the signature, answers `200` at once, and then syncs: it asks Herald, with its own read token,
//! for the `count/steps` events modified since its last sync (and the deletions), updates its
//! per-event bookkeeping, sums the steps per UTC day and, the first time a day reaches the
//! threshold, POSTs `{"date", "steps", "threshold"}` to a notify URL (or logs a line).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = step_counter::Config::new("http://127.0.0.1:3000/alice/", "read-token", "whsec_…", 10_000);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let handle = step_counter::start(listener, config).await?;
//! println!("give Herald this webhook URL: {}", handle.url());
//! # Ok(()) }
//! ```

pub mod signature;
pub mod tracker;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use signature::{sign, Secret, SignatureError};
pub use tracker::{date_of_day, day_number, utc_date, Tracker};

/// What the service needs to know.
#[derive(Clone)]
pub struct Config {
    /// The user's API endpoint, e.g. `http://127.0.0.1:3000/alice/`. A token in it
    /// (`http://TOKEN@host/alice/`, Pryv's apiEndpoint form) is used when `token` is empty.
    pub api_endpoint: String,
    /// A token that can read the `count/steps` events — not the one that manages the webhook.
    pub token: String,
    /// The webhook's `secret` (`whsec_…`).
    pub secret: String,
    /// Steps per UTC day that trigger the notification.
    pub threshold: i64,
    /// Where to POST `{"date", "steps", "threshold"}`; without it the service logs a line.
    pub notify_url: Option<String>,
    /// How far `webhook-timestamp` may be from now.
    pub tolerance: Duration,
    /// `limit` of each `events.get` page.
    pub page_size: u64,
    /// How far before the last `serverTime` the next sync starts. Herald needs none (its
    /// `serverTime` stays below every write in flight); a margin only re-reads events, which
    /// the per-id bookkeeping makes harmless.
    pub overlap: Duration,
    /// First delay before retrying a failed sync (doubles up to a minute).
    pub retry_delay: Duration,
    /// Timeout of each request to Herald and to the notify URL.
    pub request_timeout: Duration,
}

impl Config {
    pub fn new(api_endpoint: impl Into<String>, token: impl Into<String>, secret: impl Into<String>, threshold: i64) -> Config {
        Config {
            api_endpoint: api_endpoint.into(),
            token: token.into(),
            secret: secret.into(),
            threshold,
            notify_url: None,
            tolerance: Duration::from_secs(signature::DEFAULT_TOLERANCE_SECS),
            page_size: 1000,
            overlap: Duration::ZERO,
            retry_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }

    pub fn with_notify_url(mut self, url: impl Into<String>) -> Config {
        self.notify_url = Some(url.into());
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_endpoint", &self.api_endpoint)
            .field("token", &"…")
            .field("secret", &"…")
            .field("threshold", &self.threshold)
            .field("notify_url", &self.notify_url)
            .field("tolerance", &self.tolerance)
            .field("page_size", &self.page_size)
            .field("overlap", &self.overlap)
            .finish_non_exhaustive()
    }
}

/// A bad configuration.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One threshold crossing, as POSTed to the notify URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub date: String,
    pub steps: i64,
    pub threshold: i64,
}

/// What the service did so far (a snapshot, refreshed after every sync).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Steps per UTC day (`YYYY-MM-DD`).
    pub totals: BTreeMap<String, i64>,
    /// Every notification sent (or logged), in order.
    pub notifications: Vec<Notification>,
    /// `count/steps` events currently counted.
    pub events: usize,
    pub webhooks_accepted: u64,
    pub webhooks_rejected: u64,
    pub syncs: u64,
    pub sync_failures: u64,
    /// `meta.serverTime` of the last successful sync.
    pub server_time: Option<f64>,
    pub last_error: Option<String>,
}

struct SyncState {
    tracker: Tracker,
    /// `meta.serverTime` of the last successful sync.
    since: Option<f64>,
}

struct Shared {
    config: Config,
    endpoint: reqwest::Url,
    token: String,
    secret: Secret,
    client: reqwest::Client,
    /// Held for the whole of a sync: syncs never overlap.
    state: tokio::sync::Mutex<SyncState>,
    /// A change was announced and not synced yet.
    pending: AtomicBool,
    wake: Notify,
    stats: Mutex<Stats>,
}

/// The running service. Dropping it stops it.
pub struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give Herald as the webhook's `url` (any path works).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Steps on a UTC day (`YYYY-MM-DD`).
    pub fn total(&self, date: &str) -> i64 {
        self.shared.stats.lock().unwrap().totals.get(date).copied().unwrap_or(0)
    }

    pub fn totals(&self) -> BTreeMap<String, i64> {
        self.stats().totals
    }

    pub fn notifications(&self) -> Vec<Notification> {
        self.stats().notifications
    }

    /// Ask for a sync, as a webhook does.
    pub fn request_sync(&self) {
        self.shared.request_sync();
    }

    /// Sync now and wait for it (after any sync under way).
    pub async fn sync_now(&self) -> Result<(), String> {
        sync(&self.shared).await
    }

    /// Poll the stats until `pred` holds or `timeout` passes; returns the last snapshot.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> Stats {
        let end = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if pred(&s) || Instant::now() >= end {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop serving and syncing.
    pub fn shutdown(self) {}
}

impl Drop for Handle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn unix_now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The endpoint without credentials, ending with `/`, and the token found in it (if any).
fn parse_endpoint(endpoint: &str) -> Result<(reqwest::Url, Option<String>), ConfigError> {
    let mut url = reqwest::Url::parse(endpoint.trim()).map_err(|e| ConfigError(format!("api endpoint {endpoint:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError(format!("api endpoint {endpoint:?}: not http(s)")));
    }
    let token = (!url.username().is_empty()).then(|| url.username().to_string());
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok((url, token))
}

/// Start the service on `listener`: it serves webhook POSTs (any path), `GET /status` (the stats
/// as JSON), and runs a first sync at once.
pub async fn start(listener: TcpListener, config: Config) -> Result<Handle, ConfigError> {
    let (endpoint, url_token) = parse_endpoint(&config.api_endpoint)?;
    let token = match (config.token.trim(), url_token) {
        ("", Some(t)) => t,
        ("", None) => return Err(ConfigError("a read token is needed (--token, or in the api endpoint)".into())),
        (t, _) => t.to_string(),
    };
    let secret = Secret::parse(&config.secret).map_err(ConfigError)?;
    if config.page_size == 0 {
        return Err(ConfigError("page size must be positive".into()));
    }
    if let Some(u) = &config.notify_url {
        reqwest::Url::parse(u).map_err(|e| ConfigError(format!("notify url {u:?}: {e}")))?;
    }
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .user_agent(concat!("step-counter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError(format!("HTTP client: {e}")))?;
    let addr = listener.local_addr().map_err(|e| ConfigError(format!("listener: {e}")))?;
    let shared = Arc::new(Shared {
        config,
        endpoint,
        token,
        secret,
        client,
        state: tokio::sync::Mutex::new(SyncState { tracker: Tracker::new(), since: None }),
        pending: AtomicBool::new(false),
        wake: Notify::new(),
        stats: Mutex::new(Stats::default()),
    });
    let app = Router::new().route("/status", get(status)).fallback(receive).with_state(shared.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("step-counter server stopped: {e}");
        }
    });
    let worker = tokio::spawn(worker(shared.clone()));
    // A first sync builds the baseline without waiting for a change.
    shared.request_sync();
    tracing::info!(%addr, endpoint = %shared.endpoint, threshold = shared.config.threshold, "step-counter listening");
    Ok(Handle { addr, shared, tasks: vec![server, worker] })
}

impl Shared {
    fn request_sync(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats.lock().unwrap().clone())
}

/// A webhook POST: verify, count, ask for a sync, answer at once.
async fn receive(State(shared): State<Arc<Shared>>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, Json(json!({"error": "POST webhooks here"}))).into_response();
    }
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = shared.secret.verify(
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        &body,
        unix_now(),
        shared.config.tolerance.as_secs(),
    );
    if let Err(e) = verified {
        tracing::warn!("refused a webhook POST: {e}");
        shared.stats.lock().unwrap().webhooks_rejected += 1;
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": e.to_string()}))).into_response();
    }
    // Every message (eventsChanged, webhooksServiceBoot, test, …) means "look again".
    let messages = serde_json::from_slice::<Value>(&body).ok().map(|b| b["messages"].clone()).unwrap_or(Value::Null);
    tracing::debug!(id = h("webhook-id"), %messages, "webhook received");
    shared.stats.lock().unwrap().webhooks_accepted += 1;
    shared.request_sync();
    (StatusCode::OK, Json(json!({"ok": true}))).into_response()
}

/// Runs the syncs one after the other; a request that arrives during a sync causes exactly one
/// more sync afterwards (requests coalesce).
async fn worker(shared: Arc<Shared>) {
    let mut failures: u32 = 0;
    loop {
        shared.wake.notified().await;
        while shared.pending.swap(false, Ordering::SeqCst) {
            match sync(&shared).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let delay = shared.config.retry_delay.saturating_mul(1 << (failures - 1).min(6)).min(Duration::from_secs(60));
                    tracing::warn!("sync failed ({e}); retrying in {delay:?}");
                    shared.pending.store(true, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// One page of `events.get`.
struct Page {
    events: Vec<Value>,
    deletions: Vec<Value>,
    server_time: f64,
}

async fn fetch_page(shared: &Shared, modified_since: Option<f64>, skip: u64) -> Result<Page, String> {
    let mut url = shared.endpoint.join("events").map_err(|e| e.to_string())?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("types", tracker::STEPS_TYPE);
        // Trashed events too: a trash is a change we must see (it just counts nothing).
        q.append_pair("state", "all");
        // Always a limit: without fromTime/toTime/limit, Pryv returns only 20 events.
        q.append_pair("limit", &shared.config.page_size.to_string());
        q.append_pair("skip", &skip.to_string());
        if let Some(since) = modified_since {
            q.append_pair("modifiedSince", &since.to_string());
            q.append_pair("includeDeletions", "true");
        }
    }
    let res = shared.client.get(url).header("Authorization", &shared.token).send().await.map_err(|e| format!("events.get: {e}"))?;
    let status = res.status();
    let body: Value = res.json().await.map_err(|e| format!("events.get ({status}): {e}"))?;
    if !status.is_success() {
        return Err(format!("events.get: {status} {}", body["error"]));
    }
    let server_time = body["meta"]["serverTime"].as_f64().ok_or("events.get: no meta.serverTime")?;
    let list = |k: &str| body[k].as_array().cloned().unwrap_or_default();
    Ok(Page { events: list("events"), deletions: list("eventDeletions"), server_time })
}

/// One sync: fetch what changed since the last one, update the totals, notify.
async fn sync(shared: &Shared) -> Result<(), String> {
    let res = sync_locked(shared).await;
    let mut stats = shared.stats.lock().unwrap();
    match &res {
        Ok(()) => stats.syncs += 1,
        Err(e) => {
            stats.sync_failures += 1;
            stats.last_error = Some(e.clone());
        }
    }
    res
}

async fn sync_locked(shared: &Shared) -> Result<(), String> {
    let mut state = shared.state.lock().await;
    let first = state.since.is_none();
    let modified_since = state.since.map(|t| t - shared.config.overlap.as_secs_f64());
    let page_size = shared.config.page_size;
    let mut skip = 0;
    // The serverTime of the first page: whatever changes after it is seen next time.
    let mut server_time = None;
    let mut seen = 0usize;
    loop {
        let page = fetch_page(shared, modified_since, skip).await?;
        server_time.get_or_insert(page.server_time);
        seen += page.events.len();
        for e in &page.events {
            state.tracker.apply_event(e);
        }
        for d in &page.deletions {
            state.tracker.apply_deletion(d);
        }
        if (page.events.len() as u64) < page_size {
            break;
        }
        skip += page_size;
    }
    let threshold = shared.config.threshold;
    if first {
        let today = day_number(unix_now_f64());
        state.tracker.mark_past_days_notified(threshold, today);
    }
    let mut sent = Vec::new();
    let mut notify_error = None;
    for (day, steps) in state.tracker.due(threshold) {
        let n = Notification { date: date_of_day(day), steps, threshold };
        match notify(shared, &n).await {
            Ok(()) => {
                state.tracker.mark_notified(day);
                sent.push(n);
            }
            // Not marked: the next sync tries again.
            Err(e) => notify_error = Some(e),
        }
    }
    state.since = server_time;
    tracing::debug!(events = seen, ?modified_since, "synced");
    let mut stats = shared.stats.lock().unwrap();
    stats.totals = state.tracker.totals_by_date();
    stats.events = state.tracker.event_count();
    stats.notifications.extend(sent);
    stats.server_time = server_time;
    if let Some(e) = notify_error {
        stats.last_error = Some(e);
    }
    Ok(())
}

async fn notify(shared: &Shared, n: &Notification) -> Result<(), String> {
    let Some(url) = &shared.config.notify_url else {
        tracing::info!(date = %n.date, steps = n.steps, threshold = n.threshold, "daily step threshold reached");
        return Ok(());
    };
    let res = shared.client.post(url).json(n).send().await.map_err(|e| format!("notify {url}: {e}"))?;
    if !res.status().is_success() {
        let e = format!("notify {url}: {}", res.status());
        tracing::warn!("{e}");
        return Err(e);
    }
    tracing::info!(date = %n.date, steps = n.steps, "notified {url}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let (u, t) = parse_endpoint("http://127.0.0.1:3000/alice").unwrap();
        assert_eq!((u.as_str(), t), ("http://127.0.0.1:3000/alice/", None));
        let (u, t) = parse_endpoint("https://ck1abc@alice.example.com/").unwrap();
        assert_eq!((u.as_str(), t.as_deref()), ("https://alice.example.com/", Some("ck1abc")));
        assert_eq!(u.join("events").unwrap().as_str(), "https://alice.example.com/events");
        assert!(parse_endpoint("ftp://x/").is_err());
        assert!(parse_endpoint("not a url").is_err());
    }
}
