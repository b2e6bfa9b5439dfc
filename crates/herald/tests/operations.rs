//! What an operator sees: Prometheus metrics after real traffic, the health endpoints, logs
//! (JSON format, nothing secret in them), and the OpenAPI description served by the API.

mod common;

use std::time::Duration;

use common::{Receiver, Server};
use serde_json::{json, Value};

/// The value of `name` with every label of `labels` (summed over the other labels); 0 when the
/// series does not exist yet.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + timeout;
    while !f() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Real traffic moves the counters by exactly what happened: three event creations, one
/// webhook answering 200, one answering 503 until it is turned inactive, one nobody listens to.
#[tokio::test]
async fn metrics_count_real_traffic() {
    let s = Server::start();
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_status(503);
    // A port nobody listens on: bound, then closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/notify", l.local_addr().unwrap())
    };
    let before = s.scrape().await;
    assert!(before.contains("# HELP herald_http_requests_total") || before.is_empty() || before.contains("herald_"), "{before}");

    let personal = s.register("metrics-user").await;
    let (_, app) = s
        .access("metrics-user", &personal, json!({"name": "m", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]}))
        .await;
    let (st, b) = s.post("/metrics-user/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201, "{b}");
    for (url, retries) in [(ok.url.clone(), 5), (failing.url.clone(), 2), (closed.clone(), 2)] {
        let (st, b) = s.post("/metrics-user/webhooks", &app, json!({"url": url, "maxRetries": retries, "minIntervalMs": 50})).await;
        assert_eq!(st, 201, "{b}");
    }
    // An unknown route and a bad token: counted under `none` and the method.
    let (st, _) = s.get("/metrics-user/nothing-here", &app).await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/metrics-user/events", "not-a-token").await;
    assert_eq!(st, 403);
    for i in 0..3 {
        let (st, b) = s.post("/metrics-user/events", &app, json!({"streamIds": ["s"], "type": "count/steps", "content": i})).await;
        assert_eq!(st, 201, "{b}");
    }
    // Both failing webhooks end inactive after three failures each (maxRetries 2); the good
    // one got its POSTs.
    let mut text = String::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        text = if std::time::Instant::now() > end { panic!("never settled:\n{text}") } else { s.scrape().await };
        if metric(&text, "herald_webhook_deactivations_total", &[]) == 2.0
            && metric(&text, "herald_webhook_posts_in_flight", &[]) == 0.0
            && metric(&text, "herald_webhooks", &[("state", "inactive")]) == 2.0
            && ok.count() >= 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quiet now: nothing is owed to the good webhook.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = s.scrape().await;

    let http = |method: &str, status: &str| metric(&text, "herald_http_requests_total", &[("method", method), ("status", status)]);
    assert_eq!(http("events.create", "201"), 3.0, "{text}");
    assert_eq!(http("events.get", "403"), 1.0, "{text}");
    assert_eq!(http("webhooks.create", "201"), 3.0, "{text}");
    assert_eq!(http("streams.create", "201"), 1.0);
    assert_eq!(http("auth.register", "201"), 1.0);
    assert_eq!(http("auth.login", "200"), 1.0);
    assert_eq!(http("none", "404"), 1.0, "{text}");
    assert!(metric(&text, "herald_http_request_duration_seconds_count", &[("method", "events.create")]) == 3.0, "{text}");

    let deliveries = |outcome: &str| metric(&text, "herald_webhook_deliveries_total", &[("outcome", outcome)]);
    assert_eq!(deliveries("2xx"), ok.count() as f64, "{text}");
    assert_eq!(deliveries("5xx"), failing.count() as f64, "{text}");
    assert_eq!(failing.count(), 3, "maxRetries 2: the first POST and two retries failed, then inactive");
    assert_eq!(deliveries("connection"), 3.0, "{text}");
    assert_eq!(deliveries("timeout") + deliveries("blocked") + deliveries("4xx"), 0.0, "{text}");
    let posts = ok.count() + failing.count() + 3;
    assert_eq!(metric(&text, "herald_webhook_delivery_duration_seconds_count", &[]), posts as f64, "{text}");
    // Every successful POST answered something owed since a change.
    assert_eq!(metric(&text, "herald_webhook_commit_to_answer_seconds_count", &[]), ok.count() as f64, "{text}");
    assert_eq!(metric(&text, "herald_webhooks", &[("state", "active")]), 1.0);
    // The inactive ones keep what they owe (eventsChanged) for their reactivation.
    assert_eq!(metric(&text, "herald_webhook_pending_messages", &[]), 2.0, "{text}");
    assert!(metric(&text, "herald_store_commit_duration_seconds_count", &[]) >= 8.0, "{text}");
    assert!(metric(&text, "herald_store_commit_group_size_count", &[]) >= 8.0, "{text}");
    assert!(text.contains("herald_change_log_lag_records"), "{text}");
    // Buckets, so that histogram_quantile works.
    assert!(text.contains("herald_webhook_delivery_duration_seconds_bucket{le=\"0.005\"}"), "{text}");
}

/// SQLite's memory stays within `HERALD_SQLITE_MEMORY_MIB` while the database outgrows it many
/// times: 6,000 events written and read back in full, through a 2 MiB budget. The gauge shows
/// what SQLite uses (more than nothing: the page cache is in use), never beyond the budget. On
/// PostgreSQL the budget does not apply and the gauge stays 0.
#[tokio::test]
async fn sqlite_memory_stays_within_its_budget() {
    let budget = 2u64 << 20;
    let s = Server::start_with(&[("HERALD_SQLITE_MEMORY_MIB", "2")]);
    let personal = s.register("budget-user").await;
    let (st, b) = s.post("/budget-user/streams", &personal, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201, "{b}");
    let text = "x".repeat(400);
    let mut highest = 0.0f64;
    for round in 0..6 {
        let calls: Vec<Value> = (0..1000)
            .map(|i| json!({"method": "events.create", "params": {"streamIds": ["s"], "type": "note/txt", "content": format!("{round}-{i}-{text}")}}))
            .collect();
        let (st, b) = s.post("/budget-user/", &personal, Value::Array(calls)).await;
        assert_eq!(st, 200, "{b}");
        assert!(b["results"].as_array().unwrap().iter().all(|r| r.get("event").is_some()), "every create succeeded");
        let (st, b) = s.get("/budget-user/events?limit=100000", &personal).await;
        assert_eq!(st, 200);
        assert_eq!(b["events"].as_array().unwrap().len(), (round + 1) * 1000);
        highest = highest.max(metric(&s.scrape().await, "herald_sqlite_memory_bytes", &[]));
    }
    if s.on_postgres() {
        assert_eq!(highest, 0.0, "the gauge is SQLite's");
        return;
    }
    // The database is far larger than the budget: ~6,000 events of ~500 bytes plus indexes.
    let db = std::fs::metadata(s.data_dir().join("herald.db")).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(s.data_dir().join("herald.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(db > 2 * budget, "the database ({db} bytes) outgrows the budget");
    assert!(highest > 0.0, "the page cache is in use");
    assert!(highest <= budget as f64, "SQLite used {highest} bytes, over its {budget}-byte budget");
}

/// socket.io connections are counted while open.
#[tokio::test]
async fn metrics_count_socketio_connections() {
    use futures::{SinkExt as _, StreamExt as _};
    let s = Server::start();
    let token = s.register("sio-metrics").await;
    let host = s.base.trim_start_matches("http://");
    let ws = format!("ws://{host}/socket.io/?auth={token}&EIO=4&transport=websocket");
    let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.expect("websocket");
    // Engine.IO open, then join the user's namespace.
    let _open = socket.next().await;
    socket.send(tokio_tungstenite::tungstenite::Message::text("40/sio-metrics,")).await.unwrap();
    let _joined = socket.next().await;
    let mut n = 0.0;
    for _ in 0..100 {
        n = metric(&s.scrape().await, "herald_socketio_connections", &[]);
        if n == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 1.0);
    let _ = socket.close(None).await;
    drop(socket);
    for _ in 0..200 {
        n = metric(&s.scrape().await, "herald_socketio_connections", &[]);
        if n == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 0.0);
}

#[tokio::test]
async fn health_live_and_ready() {
    let s = Server::start();
    let (st, b) = s.req("GET", "/health/live", None, None).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("live")), "{b}");
    let (st, b) = s.req("GET", "/health/ready", None, None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["status"], "ready");
    assert_eq!(b["checks"], json!({"store": "ok", "bus": "ok", "dispatcher": "ok"}), "{b}");
    // The metrics port serves only /metrics.
    let r = s.client.get(format!("{}/health/live", s.metrics.as_ref().unwrap())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// The description is served, is OpenAPI 3.1, and documents the error envelope.
#[tokio::test]
async fn openapi_is_served() {
    let s = Server::start();
    let r = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/{username}/events"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Error"]["properties"]["error"].is_object());
}

/// Logs in JSON, one object per line, with the failed deliveries and the deactivation; no
/// password, token or webhook secret in any line, even at the most verbose level.
#[tokio::test]
async fn json_logs_never_show_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("herald.log");
    let log_path = log.to_str().unwrap().to_string();
    let s = Server::start_with(&[("HERALD_LOG", "trace"), ("HERALD_LOG_FORMAT", "json"), ("HERALD_TEST_LOG_FILE", &log_path)]);
    let failing = Receiver::start().await;
    failing.set_status(500);
    let password = "pw-Zq8vX2mK9";
    let (st, b) = s
        .req(
            "POST",
            "/users",
            None,
            Some(json!({"appId": "herald-tests", "username": "log-user", "password": password, "email": "log-user@example.com"})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let personal = s.login_as("log-user", password, "herald-tests").await;
    // A wrong password is logged as a failure, not echoed.
    let wrong = "wrong-Hk3jP0aL";
    let (st, _) = s
        .req("POST", "/log-user/auth/login", None, Some(json!({"username": "log-user", "password": wrong, "appId": "herald-tests"})))
        .await;
    assert_eq!(st, 401);
    let (_, app) =
        s.access("log-user", &personal, json!({"name": "l", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, b) = s.post("/log-user/webhooks", &app, json!({"url": failing.url, "maxRetries": 2, "minIntervalMs": 50})).await;
    assert_eq!(st, 201, "{b}");
    let (webhook_id, secret) = (b["webhook"]["id"].as_str().unwrap().to_string(), b["webhook"]["secret"].as_str().unwrap().to_string());
    let (st, _) = s.post("/log-user/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201);
    // Through the query string too, and to socket.io.
    let (st, _) = s.req("GET", &format!("/log-user/events?auth={app}"), None, None).await;
    assert_eq!(st, 200);
    {
        use futures::{SinkExt as _, StreamExt as _};
        let host = s.base.trim_start_matches("http://");
        let ws = format!("ws://{host}/socket.io/?auth={app}&EIO=4&transport=websocket");
        let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.expect("websocket");
        let _open = socket.next().await;
        socket.send(tokio_tungstenite::tungstenite::Message::text("40/log-user,")).await.unwrap();
        // The namespace's answer (pings may come first).
        loop {
            let frame = socket.next().await.unwrap().unwrap();
            let text = frame.to_text().unwrap();
            if text.starts_with("40/log-user,") {
                break;
            }
            assert!(text == "2" || text.starts_with("0{"), "{text}");
        }
        let call = format!("42/log-user,0[\"events.get\",{{\"limit\":1,\"auth\":\"{app}\"}}]");
        socket.send(tokio_tungstenite::tungstenite::Message::text(call)).await.unwrap();
        let _answer = socket.next().await;
        let _ = socket.close(None).await;
    }
    // Wait for the deactivation line.
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the deactivation log line", Duration::from_secs(20), || read().contains("now inactive")).await;
    let text = read();
    let mut failures = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        if v["webhook"] == json!(webhook_id) {
            failures += 1;
            assert_eq!(v["status"], 500, "{line}");
            assert!(v["user"].is_string(), "{line}");
        }
    }
    assert_eq!(failures, 3, "one line per failed delivery (the first and two retries):\n{text}");
    assert!(text.contains("retry_in_ms"), "the next retry is logged");
    let secret_key = secret.trim_start_matches("whsec_");
    for (what, needle) in
        [("password", password), ("wrong password", wrong), ("personal token", &personal), ("app token", &app), ("secret", secret_key)]
    {
        let leak = text.lines().find(|l| l.contains(needle));
        assert!(leak.is_none(), "the {what} appears in the logs: {}", leak.unwrap_or_default());
    }
}
