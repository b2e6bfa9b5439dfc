//! `herald`: reads the settings, opens the store and the bus, and runs the API and the webhook
//! dispatcher on one Tokio runtime. Everything else lives in the library crates.

mod admin;
mod ops;
mod parse_errors;
mod settings;

/// mimalloc returns freed memory to the OS and fragments less than the system allocator under
/// many threads: a node holding a million webhooks stays near its live size.
/// (The `system-allocator` feature keeps the system's, for heap profilers such as heaptrack.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use herald_api::App;
use herald_bus::{ChangeBus, InProcessBus};
use herald_delivery::{DispatcherSettings, Sender, SenderSettings};
use herald_model::webhook::Webhook;
use herald_storage::sqlite::SqliteStore;
use herald_storage::Store;
use settings::{Role, Settings};

/// `webhooks.test`: the API asks, the delivery engine's sender POSTs.
struct Tester(Arc<Sender>);

#[async_trait::async_trait]
impl herald_api::methods::webhooks::WebhookTester for Tester {
    async fn test(&self, webhook: &Webhook) -> Result<u16, String> {
        let msg_id = format!("msg_{}", herald_model::id::new_id());
        let outcome = self.0.post(&webhook.url, &webhook.secret, &msg_id, &["test".to_string()]).await;
        if outcome.is_success() {
            Ok(outcome.status)
        } else if outcome.status == 0 {
            Err("no answer".into())
        } else {
            Err(format!("answered {}", outcome.status))
        }
    }
}

#[derive(Parser)]
#[command(name = "herald", version, about = "A Pryv.io-compatible data server that notifies by webhooks and socket.io")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Operate on a data dir or database: users, webhooks, backups, the change log.
    Admin(admin::AdminArgs),
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML settings file.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    public_url: Option<String>,
    #[arg(long)]
    data_dir: Option<String>,
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long)]
    bus_url: Option<String>,
    #[arg(long)]
    serial: Option<String>,
    #[arg(long)]
    trusted_apps: Option<String>,
    /// Any other setting, by its TOML key: `--set webhooks.max_retries=3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn load_settings(args: &ServeArgs) -> Result<Settings, String> {
    let mut s = Settings::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        s.apply_toml(&text)?;
    }
    s.apply_env(|k| std::env::var(k).ok())?;
    let flags = [
        ("listen", &args.listen),
        ("public_url", &args.public_url),
        ("data_dir", &args.data_dir),
        ("database_url", &args.database_url),
        ("bus_url", &args.bus_url),
        ("serial", &args.serial),
        ("trusted_apps", &args.trusted_apps),
    ];
    for (k, v) in flags {
        if let Some(v) = v {
            s.set(k, v)?;
        }
    }
    for kv in &args.set {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--set {kv}: expected KEY=VALUE"))?;
        s.set(k, v)?;
    }
    Ok(s)
}

/// How this node may deliver webhooks: on its own store (SQLite: the only node), or on a shared
/// PostgreSQL database where one node at a time holds the delivery lock.
enum Delivery {
    Alone,
    Shared { url: String },
}

async fn serve(mut settings: Settings) -> Result<(), String> {
    if let Some(id) = &settings.node_id {
        tracing::info!(node = %id, role = ?settings.role, "starting");
    }
    // SQLite's memory across its connections: process-wide, set before its first connection,
    // and only where the store is SQLite (the budget is reserved at once).
    if settings.database_url.as_deref().is_none_or(|u| u.starts_with("sqlite:")) {
        herald_storage::sqlite::set_memory_budget(settings.sqlite_memory_mib.saturating_mul(1 << 20)).map_err(|e| e.to_string())?;
    }
    let (store, delivery, namespace): (Arc<dyn Store>, Delivery, Option<String>) = match settings.database_url.as_deref() {
        None => (Arc::new(SqliteStore::open(&settings.data_dir, settings.durability).map_err(|e| e.to_string())?), Delivery::Alone, None),
        Some(url) if url.starts_with("sqlite:") => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            (
                Arc::new(SqliteStore::open(std::path::Path::new(path), settings.durability).map_err(|e| e.to_string())?),
                Delivery::Alone,
                None,
            )
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = herald_storage::postgres::PgStore::connect(url).await.map_err(|e| e.to_string())?;
            let namespace = store.cluster_id().await.map_err(|e| e.to_string())?;
            (Arc::new(store), Delivery::Shared { url: url.to_string() }, Some(namespace))
        }
        Some(other) => {
            return Err(format!("HERALD_DATABASE_URL \"{other}\": expected sqlite:PATH or postgres://USER@HOST:PORT/DB"));
        }
    };
    // Between nodes, the NATS connection also carries the throttles' notes.
    let mut gossip: Option<Arc<dyn herald_bus::Gossip>> = None;
    let bus: Arc<dyn ChangeBus> = match (settings.bus_url.as_deref(), &namespace) {
        (None | Some("") | Some("in-process"), _) => Arc::new(InProcessBus::default()),
        (Some(url), Some(ns)) if url.starts_with("nats://") => {
            let nats = Arc::new(herald_bus::nats::NatsBus::connect(url, ns).await.map_err(|e| format!("HERALD_BUS_URL: {e}"))?);
            gossip = Some(nats.clone());
            nats
        }
        (Some(url), None) if url.starts_with("nats://") => {
            return Err("HERALD_BUS_URL=nats://… joins nodes sharing a PostgreSQL database: set HERALD_DATABASE_URL=postgres://… too".into())
        }
        (Some(other), _) => return Err(format!("HERALD_BUS_URL \"{other}\": expected nats://HOST:PORT")),
    };
    // Metrics first, so that a node that only delivers has them too.
    let metrics_addr = match &settings.metrics_listen {
        Some(listen) => {
            let handle = ops::install_metrics()?;
            let listener =
                tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen} for metrics: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            ops::serve_metrics(listener, handle, store.clone(), ops::log_consumers(matches!(delivery, Delivery::Shared { .. })));
            format!("; metrics on http://{addr}/metrics")
        }
        None => String::new(),
    };
    let role = settings.role;
    if matches!(delivery, Delivery::Alone) && role != Role::All {
        return Err("HERALD_ROLE api or delivery needs a shared PostgreSQL database (HERALD_DATABASE_URL=postgres://…)".into());
    }
    let sender = Sender::new(SenderSettings {
        request_timeout_ms: settings.api.webhooks.request_timeout_ms,
        allow_private_urls: settings.api.webhooks.allow_private_urls,
        api_version: herald_api::API_VERSION.into(),
        serial: settings.api.serial.clone(),
    });
    // What this node delivers: every webhook on its own, or its share of the partitions in a
    // cluster. Either way the API waits for it to have loaded and greeted what it holds, so
    // the API's first changes follow the replay of the log; the stop waits for it to save.
    // Saved runs and states, for the webhooks consoles connected to this node (socket.io).
    // In a cluster the console may be connected to another node than the one delivering: each
    // saved activity is also told to the other nodes (a note over NATS, as the throttles do).
    let webhook_activity = tokio::sync::broadcast::channel::<Arc<str>>(1024).0;
    if let Some(g) = &gossip {
        let (mut notes, activity) = (g.listen(WEBHOOK_ACTIVITY_TOPIC), webhook_activity.clone());
        tokio::spawn(async move {
            while let Some(user) = notes.recv().await {
                if let Ok(user) = String::from_utf8(user) {
                    let _ = activity.send(Arc::from(user));
                }
            }
        });
    }
    let deliverer: Option<Deliverer> = if role.delivers() {
        let dispatcher_settings = DispatcherSettings {
            runs_size: settings.api.webhooks.runs_size,
            concurrency: settings.webhooks_concurrency,
            ownership: herald_delivery::Ownership::All,
            greet: true,
            on_saved: Some({
                let (activity, gossip) = (webhook_activity.clone(), gossip.clone());
                herald_delivery::persister::SavedWatcher(Arc::new(move |users: &[Arc<str>]| {
                    for u in users {
                        let _ = activity.send(u.clone());
                        if let Some(g) = &gossip {
                            g.tell(WEBHOOK_ACTIVITY_TOPIC, u.as_bytes().to_vec());
                        }
                    }
                }))
            }),
        };
        // Records every consumer has passed are trimmed once older than the retention.
        let retention = std::time::Duration::from_secs(settings.change_log_retention_secs);
        herald_storage::retention::spawn_log_trimmer(store.clone(), retention, std::time::Duration::from_secs(1));
        match &delivery {
            Delivery::Alone => {
                let handle = herald_delivery::start(store.clone(), bus.clone(), sender.clone(), dispatcher_settings);
                handle.ready.notified().await;
                Some(Deliverer::Alone(handle))
            }
            Delivery::Shared { url } => {
                let leases = herald_storage::postgres::leases::PgLeases::join(url, settings.node_id.as_deref())
                    .await
                    .map_err(|e| format!("delivery leases: {e}"))?;
                let handle = herald_delivery::ownership::start(leases, store.clone(), bus.clone(), sender.clone(), dispatcher_settings);
                handle.ready.notified().await;
                Some(Deliverer::Cluster(handle))
            }
        }
    } else {
        None
    };
    if !role.serves_api() {
        println!("herald delivering webhooks (role delivery{metrics_addr})");
        shutdown_signal().await;
        if let Some(d) = &deliverer {
            d.flush(std::time::Duration::from_secs(5)).await;
        }
        return Ok(());
    }
    let listener =
        tokio::net::TcpListener::bind(&settings.listen).await.map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let public_url = settings.public_url.clone().unwrap_or_else(|| format!("http://{addr}/"));
    settings.api.public_url = public_url.clone();
    settings.api.shared_store = matches!(delivery, Delivery::Shared { .. });
    let ready = ops::Ready { store: store.clone(), bus: bus.clone(), delivers: deliverer.is_some() };
    let mut app = App::new(store.clone(), bus.clone(), settings.api.clone())
        .with_webhook_tester(Arc::new(Tester(sender)))
        .with_webhook_activity(webhook_activity)
        .with_readiness(Arc::new(ready));
    if let Some(g) = gossip {
        app = app.with_throttles(herald_api::Throttles::shared(&settings.api.auth, g));
    }
    let app = Arc::new(app);
    // The caches start empty: nothing logged so far can make them stale.
    app.log_seen.store(store.last_seq().await.map_err(|e| e.to_string())?, std::sync::atomic::Ordering::Release);
    // Tests and scripts read this line to find the port.
    println!("herald listening on http://{addr}/ (public URL {public_url}{metrics_addr})");
    tracing::info!(%addr, "serving");
    // socket.io (`/socket.io/`) sits in front of the HTTP routes, on the same port.
    let (socketio, io) = herald_api::socketio::layer(app.clone());
    let shutdown = async move {
        shutdown_signal().await;
        io.close().await;
    };
    let limits = ServerLimits::from(&settings);
    let meta: parse_errors::Meta = {
        let app = app.clone();
        Arc::new(move || app.meta(herald_api::now()))
    };
    let router = herald_api::http::router(app).layer(socketio);
    let served = serve_http(listener, router, meta, limits, shutdown).await;
    // Runs that finished just before the stop are saved, so the restart counts them and honours
    // minIntervalMs.
    if let Some(d) = &deliverer {
        d.flush(std::time::Duration::from_secs(5)).await;
    }
    served.map_err(|e| e.to_string())
}

/// The gossip topic of saved webhook activity (a user id per note), for the consoles of the
/// other nodes.
const WEBHOOK_ACTIVITY_TOPIC: &str = "webhook-activity";

/// The delivery this node runs.
enum Deliverer {
    Alone(herald_delivery::DispatcherHandle),
    Cluster(herald_delivery::ownership::ClusterHandle),
}

impl Deliverer {
    /// Save what was decided so far (a graceful stop).
    async fn flush(&self, timeout: std::time::Duration) {
        match self {
            Deliverer::Alone(d) => d.flush(timeout).await,
            Deliverer::Cluster(c) => c.flush(timeout).await,
        }
    }
}

/// How connections are served: the limits on slow and greedy clients (README, settings).
struct ServerLimits {
    /// A connection must send a whole request head within this time from the moment it waits
    /// for one: the header read timeout (slowloris) and the idle keep-alive timeout.
    header_read_timeout: std::time::Duration,
    /// Connections served at once; the next waits in the kernel's accept queue.
    max_connections: usize,
    /// Headers the HTTP parser takes before it refuses on its own (without Pryv's body); the API
    /// refuses above its own, lower limit with a JSON 431.
    parser_max_headers: usize,
}

impl From<&Settings> for ServerLimits {
    fn from(s: &Settings) -> Self {
        ServerLimits {
            header_read_timeout: s.header_read_timeout,
            max_connections: s.max_connections.max(1),
            parser_max_headers: (s.api.max_headers * 4).max(400),
        }
    }
}

/// Serve HTTP/1.1 (with upgrades, for socket.io's WebSocket) on `listener` until `shutdown`,
/// then let the connections in progress finish. Each connection carries its peer's address
/// (`ConnectInfo`): login and registration are throttled per client address.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    meta: parse_errors::Meta,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use tower::ServiceExt as _;
    // Told to every connection when the server stops: finish the request in progress, then close.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_headers(limits.parser_max_headers);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection(hyper_util::rt::TokioIo::new(parse_errors::PryvParseErrors::new(stream, meta.clone())), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async move { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Idle connections close at once; busy ones finish their request (bounded, like a drain).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), permits.acquire_many(all)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn main() {
    let cli = Cli::parse();
    let result = ops::init_logging().and_then(|()| match cli.command {
        Command::Serve(args) => load_settings(&args)
            .and_then(|s| tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?.block_on(serve(s))),
        Command::Admin(args) => admin::run(args),
    });
    if let Err(e) = result {
        eprintln!("herald: {e}");
        std::process::exit(1);
    }
}
