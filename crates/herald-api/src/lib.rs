//! Herald's Pryv.io API.
//!
//! Every Pryv method lives in [`methods`], one module per resource, registered by its Pryv id
//! (`events.create`, `webhooks.update`, ...) in one table. The transports only translate:
//! [`http`] maps routes to method ids and params, batch calls (`POST /{username}/`) dispatch
//! each call by id, and socket.io does the same. Authentication and the response envelope
//! (`meta`, Pryv errors) are shared by all of them.

pub mod access_requests;
pub mod cache;
pub mod context;
pub mod hashing;
pub mod health;
pub mod http;
mod http_files;
pub mod mail;
pub mod methods;
pub mod settings;
pub mod socketio;
pub mod throttle;
pub mod web;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use herald_bus::ChangeBus;
use herald_model::user::User;
use herald_model::{ApiError, ErrorId};
use herald_storage::Store;
use serde_json::{json, Value};

pub use context::Context;
pub use settings::ApiSettings;

/// The API version Herald reports: the Pryv.io API it is compatible with.
pub const API_VERSION: &str = "1.9.2";

/// Shared state of the API: storage, bus, settings and the method table.
pub struct App {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn ChangeBus>,
    pub settings: ApiSettings,
    pub methods: methods::MethodTable,
    /// Users are never renamed, so a username resolves to the same user for the process's life.
    users: RwLock<HashMap<String, Arc<User>>>,
    /// Sends `webhooks.test` POSTs; set by the binary (it owns the delivery engine).
    pub webhook_tester: Option<Arc<dyn methods::webhooks::WebhookTester>>,
    /// Time stamps of the requests being processed (see [`App::begin_request`]).
    in_flight: Arc<Mutex<InFlight>>,
    pub cache: cache::Cache,
    /// With a shared store: the change log is applied to the caches up to here.
    pub log_seen: std::sync::atomic::AtomicU64,
    /// Catch-ups run one at a time, and a request reuses one that started after it began.
    log_probe: tokio::sync::Mutex<()>,
    /// Catch-ups started, and the number of the last one completed.
    probes_started: std::sync::atomic::AtomicU64,
    probes_done: std::sync::atomic::AtomicU64,
    /// A catch-up started by [`App::keep_log_seen_near`] is running.
    background_catch_up: std::sync::atomic::AtomicBool,
    /// Every password hash and check runs here (`hashing`).
    pub hasher: hashing::HashPool,
    pub throttles: Throttles,
    /// What `/health/ready` asks; set by the binary (it knows the store, dispatcher and bus).
    pub readiness: Option<Arc<dyn health::Readiness>>,
    /// Key of attachments' read tokens (settings, else made once and kept in the store).
    read_token_secret: tokio::sync::OnceCell<Arc<str>>,
    /// Users whose webhooks just had a run or a state change saved by the delivery engine: the
    /// webhooks console hears it over socket.io (`webhooksChanged`).
    pub webhook_activity: tokio::sync::broadcast::Sender<Arc<str>>,
}

/// The throttles of password guessing and account creation (docs/security.md).
pub struct Throttles {
    /// Failed logins per username.
    pub login_user: Arc<dyn throttle::Throttle>,
    /// Failed logins (and logins to unknown users) per client address.
    pub login_address: Arc<dyn throttle::Throttle>,
    /// Registrations per client address. A password reset, once Herald has one, gets a throttle
    /// of the same kind.
    pub registration_address: Arc<dyn throttle::Throttle>,
}

impl Throttles {
    /// The throttles of one node, in memory (they start empty after a restart).
    pub fn in_memory(s: &settings::AuthSettings) -> Throttles {
        let t = |free| -> Arc<dyn throttle::Throttle> { Arc::new(throttle::MemoryThrottle::new(s.policy(free), s.throttle_capacity)) };
        Throttles {
            login_user: t(s.login_failures_per_user),
            login_address: t(s.login_failures_per_address),
            registration_address: t(s.registrations_per_address),
        }
    }

    /// The throttles of a cluster's node: in memory, and shared with the other nodes.
    pub fn shared(s: &settings::AuthSettings, gossip: Arc<dyn herald_bus::Gossip>) -> Throttles {
        let t = |free, topic| -> Arc<dyn throttle::Throttle> {
            throttle::SharedThrottle::new(throttle::MemoryThrottle::new(s.policy(free), s.throttle_capacity), gossip.clone(), topic)
        };
        Throttles {
            login_user: t(s.login_failures_per_user, "throttle.login-user"),
            login_address: t(s.login_failures_per_address, "throttle.login-address"),
            registration_address: t(s.registrations_per_address, "throttle.registration-address"),
        }
    }
}

#[derive(Default)]
struct InFlight {
    next: u64,
    stamps: HashMap<u64, f64>,
}

/// A request's times: `now` stamps what it writes (`modified`, `created`, `deleted`);
/// `server_time` is the `meta.serverTime` it answers. Dropping it ends the request.
pub struct RequestClock {
    pub now: f64,
    pub server_time: f64,
    id: u64,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Drop for RequestClock {
    fn drop(&mut self) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.stamps.remove(&self.id);
        }
    }
}

impl App {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn ChangeBus>, settings: ApiSettings) -> Self {
        let a = &settings.auth;
        let hasher = hashing::HashPool::new(&hashing::HashPoolSettings {
            threads: a.hash_threads,
            queue: a.hash_queue,
            nice: a.hash_nice,
            argon2_memory_kib: a.argon2_memory_kib,
            argon2_iterations: a.argon2_iterations,
        });
        let throttles = Throttles::in_memory(a);
        App {
            hasher,
            throttles,
            store,
            bus,
            settings,
            methods: methods::table(),
            users: RwLock::new(HashMap::new()),
            webhook_tester: None,
            in_flight: Arc::new(Mutex::new(InFlight::default())),
            cache: cache::Cache::default(),
            log_seen: std::sync::atomic::AtomicU64::new(0),
            log_probe: tokio::sync::Mutex::new(()),
            probes_started: std::sync::atomic::AtomicU64::new(0),
            probes_done: std::sync::atomic::AtomicU64::new(0),
            background_catch_up: std::sync::atomic::AtomicBool::new(false),
            readiness: None,
            read_token_secret: tokio::sync::OnceCell::new(),
            webhook_activity: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Share the delivery engine's channel of webhook activity (see `webhook_activity`).
    pub fn with_webhook_activity(mut self, activity: tokio::sync::broadcast::Sender<Arc<str>>) -> Self {
        self.webhook_activity = activity;
        self
    }

    /// The key of attachments' read tokens once [`App::read_token_secret`] has loaded it (every
    /// authenticated request has); empty before.
    pub(crate) fn loaded_read_token_secret(&self) -> Arc<str> {
        self.read_token_secret.get().cloned().unwrap_or_else(|| Arc::from(""))
    }

    /// The key of attachments' read tokens: the setting, or the one kept in the store (made at
    /// the first call on a new store). Read once per process.
    pub async fn read_token_secret(&self) -> Result<Arc<str>, ApiError> {
        let s = self
            .read_token_secret
            .get_or_try_init(|| async {
                if !self.settings.extras.read_token_secret.is_empty() {
                    return Ok(Arc::from(self.settings.extras.read_token_secret.as_str()));
                }
                let fresh = herald_model::id::new_token() + &herald_model::id::new_token();
                let kept = self.store.secret("attachments.read_token", &fresh).await.map_err(context::store_error)?;
                Ok::<_, ApiError>(Arc::from(kept.as_str()))
            })
            .await?;
        Ok(s.clone())
    }

    /// Announce a committed change: caches first (so this node's next request sees it), then
    /// the bus.
    pub fn publish(&self, change: herald_model::change::Change) {
        self.cache.invalidate(&change);
        self.bus.publish(change);
    }

    /// With a store shared by several nodes: drop from the caches what changes committed
    /// anywhere make stale, reading the change log from where this node last looked. The bus
    /// usually does it first; this makes it certain before a request trusts a cached token or
    /// stream tree.
    ///
    /// Concurrent requests share the reading (one query per round, not one per request): a
    /// request waits for a catch-up that started after it began, whose read therefore sees every
    /// change acknowledged before the request; one that started earlier may not, so it does not
    /// count. The log is numbered in commit order, so reading past `log_seen` until a short page
    /// sees every committed record: no separate `MAX(seq)` query.
    pub async fn catch_up_with_log(&self) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release, SeqCst};
        if !self.settings.shared_store {
            return Ok(());
        }
        let begun = self.probes_started.load(SeqCst);
        let _turn = self.log_probe.lock().await;
        if self.probes_done.load(SeqCst) > begun {
            return Ok(());
        }
        let probe = self.probes_started.fetch_add(1, SeqCst) + 1;
        const PAGE: usize = 1000;
        let mut seen = self.log_seen.load(Acquire);
        loop {
            let page = self.store.changes_after(seen, PAGE).await.map_err(context::store_error)?;
            for c in &page {
                self.cache.invalidate(c);
            }
            if let Some(end) = page.last().map(|c| c.seq) {
                seen = end;
                self.log_seen.fetch_max(seen, AcqRel);
            }
            if page.len() < PAGE {
                break;
            }
        }
        self.probes_done.store(probe, Release);
        Ok(())
    }

    /// After a write checked against the log in its own transaction (numbered up to `seq`;
    /// see [`context::Context::authenticate_deferring`]): such requests do not move `log_seen`,
    /// and the check reads the log past it, so on a node that only creates events a catch-up is
    /// started in the background once `log_seen` lags the log by more than a few records (one
    /// at a time; no request waits for it).
    pub fn keep_log_seen_near(self: &Arc<Self>, seq: Option<u64>) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        const LAG: u64 = 64;
        let Some(seq) = seq else { return };
        if seq <= self.log_seen.load(Acquire).saturating_add(LAG) || self.background_catch_up.swap(true, AcqRel) {
            return;
        }
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.catch_up_with_log().await {
                tracing::warn!(error = ?e, "cannot read the change log");
            }
            app.background_catch_up.store(false, Release);
        });
    }

    /// Start a request: take its time stamp and its `meta.serverTime`.
    ///
    /// Clients sync with `events.get?modifiedSince=<last meta.serverTime>`. For that to miss
    /// nothing, every write that a read did not see must carry a stamp after the read's
    /// `serverTime`. A write is stamped when its request starts but commits a little later, so
    /// `serverTime` is taken when the request starts, held below the stamp of every request
    /// still in flight, and one millisecond back (stamps have millisecond precision). A client
    /// may then see an item twice, never zero times.
    pub fn begin_request(&self) -> RequestClock {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let now = now();
        let oldest = f.stamps.values().copied().fold(now, f64::min);
        let server_time = herald_model::round_ms(oldest - 0.001);
        let id = f.next;
        f.next += 1;
        f.stamps.insert(id, now);
        RequestClock { now, server_time, id, in_flight: self.in_flight.clone() }
    }

    /// Replace the in-memory throttles (a cluster shares them between nodes).
    pub fn with_throttles(mut self, throttles: Throttles) -> Self {
        self.throttles = throttles;
        self
    }

    pub fn with_readiness(mut self, readiness: Arc<dyn health::Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    pub fn with_webhook_tester(mut self, tester: Arc<dyn methods::webhooks::WebhookTester>) -> Self {
        self.webhook_tester = Some(tester);
        self
    }

    /// The user named in the path, or Pryv's 404.
    pub async fn user(&self, username: &str) -> Result<Arc<User>, ApiError> {
        if let Some(u) = self.users.read().ok().and_then(|m| m.get(username).cloned()) {
            return Ok(u);
        }
        let user = self.store.user_by_name(username).await.map_err(context::store_error)?.ok_or_else(|| {
            ApiError::new(ErrorId::UnknownResource, format!("Unknown user \"{username}\"")).with_data(json!({"username": username}))
        })?;
        let user = Arc::new(user);
        if let Ok(mut m) = self.users.write() {
            m.insert(username.to_string(), user.clone());
        }
        Ok(user)
    }

    /// `meta` of every response; `server_time` from the request's [`RequestClock`].
    pub fn meta(&self, server_time: f64) -> Value {
        json!({ "apiVersion": API_VERSION, "serverTime": server_time, "serial": self.settings.serial })
    }

    /// `http://{token}@host/{username}/`, Pryv's apiEndpoint form.
    pub fn api_endpoint(&self, username: &str, token: Option<&str>) -> String {
        let base = self.settings.public_url.trim_end_matches('/');
        let with_user = format!("{base}/{username}/");
        match (token, with_user.split_once("://")) {
            (Some(t), Some((scheme, rest))) => format!("{scheme}://{t}@{rest}"),
            _ => with_user,
        }
    }
}

/// Now, as a Pryv timestamp (seconds, millisecond precision).
pub fn now() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    herald_model::round_ms(d.as_secs_f64())
}
