//! What operators watch: Prometheus metrics on their own listener, the readiness checks of
//! `/health/ready`, and the log format. The library crates only record metrics through the
//! `metrics` facade; this module installs the exporter that renders them.

use std::sync::Arc;
use std::time::Duration;

use herald_bus::ChangeBus;
use herald_storage::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the time histograms, in seconds: from a fast read to a webhook timeout.
const TIME_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the store's commit groups (writes per commit).
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// The commit-to-answer time includes retries, which can wait for hours.
const LONG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 86400.0];

/// Install the process-wide recorder. Histograms get buckets (not summaries) so that
/// `histogram_quantile` works over several nodes.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let b = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("herald_webhook_commit_to_answer_seconds".into()), LONG_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), TIME_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("herald_store_commit_group_size".into()), GROUP_BUCKETS))
        .map_err(|e| e.to_string())?;
    let handle = b.install_recorder().map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

/// `# HELP` lines: what each metric means, for whoever reads `/metrics` first.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("herald_http_requests_total", "HTTP requests answered, by Pryv method id and status");
    describe_histogram!(
        "herald_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (to the first part of a streamed answer)"
    );
    describe_counter!(
        "herald_webhook_deliveries_total",
        "Webhook POSTs, by outcome: 2xx, 4xx, 5xx (status class), timeout, connection, blocked"
    );
    describe_histogram!("herald_webhook_delivery_duration_seconds", Unit::Seconds, "Time of one webhook POST, until answered or failed");
    describe_histogram!(
        "herald_webhook_commit_to_answer_seconds",
        Unit::Seconds,
        "From the dispatcher hearing a committed change to the successful answer of the POST that carried it (retries included)"
    );
    describe_gauge!("herald_webhooks", "Webhooks held by the dispatcher, by state");
    describe_gauge!("herald_webhook_pending_messages", "Messages waiting to be POSTed, over all webhooks");
    describe_gauge!("herald_webhook_posts_in_flight", "Webhook POSTs running now");
    describe_counter!("herald_webhook_deactivations_total", "Webhooks turned inactive after too many failed deliveries");
    describe_gauge!("herald_socketio_connections", "socket.io connections open now");
    describe_histogram!("herald_store_commit_duration_seconds", Unit::Seconds, "Time of one store commit (a group of writes on SQLite)");
    describe_histogram!("herald_store_commit_group_size", "Writes committed together in one transaction");
    describe_gauge!(
        "herald_sqlite_memory_bytes",
        Unit::Bytes,
        "Memory SQLite holds now, page caches included (bounded by HERALD_SQLITE_MEMORY_MIB)"
    );
    describe_gauge!("herald_change_log_lag_records", "Change-log records the slowest webhook dispatcher (partition) has not passed yet");
}

/// The change log's consumers: the one dispatcher of a node alone, or one per partition on a
/// shared PostgreSQL database.
pub fn log_consumers(shared: bool) -> &'static [&'static str] {
    if shared {
        herald_model::partition::consumers()
    } else {
        &[herald_delivery::dispatcher::LOG_CONSUMER]
    }
}

/// Records after the slowest consumer's cursor.
pub async fn log_lag(store: &dyn Store, consumers: &[&str]) -> Result<u64, String> {
    let last = store.last_seq().await.map_err(|e| e.to_string())?;
    let mut slowest = last;
    for c in consumers {
        slowest = slowest.min(store.log_cursor(c).await.map_err(|e| e.to_string())?);
    }
    Ok(last - slowest)
}

/// Figures read from the store when scraped rather than kept up to date on every write (reads
/// of one row each: no scan).
async fn refresh_store_gauges(store: &dyn Store, consumers: &[&str]) {
    if let Ok(lag) = log_lag(store, consumers).await {
        metrics::gauge!("herald_change_log_lag_records").set(lag as f64);
    }
    // Process-wide; zero on a node whose store is PostgreSQL.
    metrics::gauge!("herald_sqlite_memory_bytes").set(herald_storage::sqlite::memory_used() as f64);
}

/// Serve `GET /metrics` on `listener` until the process ends. Anything else is a 404: this
/// port is for scrapers only.
pub fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    consumers: &'static [&'static str],
) {
    use axum::routing::get;
    // Histograms keep their samples until upkeep folds them in; scrapes do it too, but a node
    // nobody scrapes must not grow.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (handle, store) = (handle.clone(), store.clone());
            async move {
                refresh_store_gauges(&*store, consumers).await;
                handle.run_upkeep();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
}

/// `/health/ready`: the store answers, the dispatcher (on the node that delivers) has loaded
/// every webhook, and the bus is connected.
pub struct Ready {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn ChangeBus>,
    /// Whether this node delivers webhooks (role `all` or `delivery`).
    pub delivers: bool,
}

#[async_trait::async_trait]
impl herald_api::health::Readiness for Ready {
    async fn checks(&self) -> Vec<herald_api::health::Check> {
        let store = match tokio::time::timeout(Duration::from_secs(2), self.store.last_seq()).await {
            Ok(Ok(_)) => Ok(()),
            // The cause goes to the log, not to whoever asks.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the store does not answer");
                Err("the store does not answer".into())
            }
            Err(_) => Err("the store did not answer within 2 s".into()),
        };
        let bus = if self.bus.is_connected() { Ok(()) } else { Err("the change bus is disconnected".into()) };
        let mut checks = vec![("store", store), ("bus", bus)];
        if self.delivers {
            // The API is served only once the dispatchers have loaded what this node holds and
            // replayed the log (`serve`), so a node answering here has passed that point.
            checks.push(("dispatcher", Ok(())));
        }
        checks
    }
}

/// Libraries whose `debug` and `trace` lines show payloads (statements, frames, packets).
const QUIET: &[&str] = &["tokio_postgres", "tungstenite", "tokio_tungstenite", "socketioxide", "engineioxide", "async_nats"];

/// Logs on stderr: `HERALD_LOG` is the filter (`tracing`'s `EnvFilter` syntax, default `warn`),
/// `HERALD_LOG_FORMAT` is `text` (default) or `json` (one object per line).
///
/// Whatever the filter, the libraries that write what passes through them at `debug` and
/// `trace` are held at `warn`: PostgreSQL's statements carry tokens and password hashes as
/// parameters, socket.io and WebSocket frames carry tokens (docs/operations.md, "Logs").
pub fn init_logging() -> Result<(), String> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| "warn".into());
    for quiet in QUIET {
        filter = filter.add_directive(format!("{quiet}=warn").parse().map_err(|e| format!("{quiet}: {e}"))?);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("HERALD_LOG_FORMAT").as_deref() {
        Err(_) | Ok("") | Ok("text") => builder.init(),
        Ok("json") => builder.json().flatten_event(true).with_current_span(false).init(),
        Ok(other) => {
            builder.init();
            return Err(format!("HERALD_LOG_FORMAT \"{other}\": expected text or json"));
        }
    }
    Ok(())
}
