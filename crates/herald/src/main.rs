//! `herald`: reads the settings, opens the store and the bus, and runs the API and the webhook
//! dispatcher on one Tokio runtime. Everything else lives in the library crates.

mod settings;

/// mimalloc returns freed memory to the OS and fragments less than the system allocator under
/// many threads: a node holding a million webhooks stays near its live size.
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
use settings::Settings;

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

async fn serve(mut settings: Settings) -> Result<(), String> {
    let store: Arc<dyn Store> = match settings.database_url.as_deref() {
        None => Arc::new(SqliteStore::open(&settings.data_dir, settings.durability).map_err(|e| e.to_string())?),
        Some(url) if url.starts_with("sqlite:") => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            Arc::new(SqliteStore::open(std::path::Path::new(path), settings.durability).map_err(|e| e.to_string())?)
        }
        Some(other) => return Err(format!("HERALD_DATABASE_URL \"{other}\": only the embedded SQLite store is available in this build")),
    };
    let bus: Arc<dyn ChangeBus> = match settings.bus_url.as_deref() {
        None | Some("") | Some("in-process") => Arc::new(InProcessBus::default()),
        Some(other) => return Err(format!("HERALD_BUS_URL \"{other}\": only the in-process bus is available in this build")),
    };
    let listener =
        tokio::net::TcpListener::bind(&settings.listen).await.map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let public_url = settings.public_url.clone().unwrap_or_else(|| format!("http://{addr}/"));
    settings.api.public_url = public_url.clone();
    let sender = Sender::new(SenderSettings {
        request_timeout_ms: settings.api.webhooks.request_timeout_ms,
        allow_private_urls: settings.api.webhooks.allow_private_urls,
        api_version: herald_api::API_VERSION.into(),
        serial: settings.api.serial.clone(),
    });
    let dispatcher = herald_delivery::start(
        store.clone(),
        bus.clone(),
        sender.clone(),
        DispatcherSettings { runs_size: settings.api.webhooks.runs_size, concurrency: settings.webhooks_concurrency },
    );
    // Records every consumer has passed are trimmed once older than the retention.
    herald_storage::retention::spawn_log_trimmer(
        store.clone(),
        std::time::Duration::from_secs(settings.change_log_retention_secs),
        std::time::Duration::from_secs(1),
    );
    let app = Arc::new(App::new(store.clone(), bus.clone(), settings.api.clone()).with_webhook_tester(Arc::new(Tester(sender))));
    // Serve once every stored webhook is loaded and greeted, so nothing is dispatched twice.
    dispatcher.ready.notified().await;
    // Tests and scripts read this line to find the port.
    println!("herald listening on http://{addr}/ (public URL {public_url})");
    tracing::info!(%addr, "serving");
    // socket.io (`/socket.io/`) sits in front of the HTTP routes, on the same port.
    let (socketio, io) = herald_api::socketio::layer(app.clone());
    let shutdown = async move {
        shutdown_signal().await;
        io.close().await;
    };
    // With the peer's address: login and registration are throttled per client address.
    let service = herald_api::http::router(app).layer(socketio).into_make_service_with_connect_info::<SocketAddr>();
    // Answers written in parts (a streamed `events.get`) go out at once, not after a delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
    // Runs that finished just before the stop are saved, so the restart counts them and honours
    // minIntervalMs.
    dispatcher.flush(std::time::Duration::from_secs(5)).await;
    served.map_err(|e| e.to_string())
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => load_settings(&args)
            .and_then(|s| tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?.block_on(serve(s))),
    };
    if let Err(e) = result {
        eprintln!("herald: {e}");
        std::process::exit(1);
    }
}
