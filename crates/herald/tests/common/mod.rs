//! Test harness: starts the real `herald` binary on a free port with a fresh data directory,
//! and talks to it over real HTTP. Also a real local receiver for webhook POSTs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Server {
    child: Arc<Mutex<Option<Child>>>,
    pub base: String,
    /// `http://HOST:PORT` of the metrics listener (each test server gets a free port).
    pub metrics: Option<String>,
    pub dir: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
    pub client: reqwest::Client,
}

impl Server {
    /// A server with webhooks allowed to call loopback and a short minimum interval.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut all: Vec<(String, String)> =
            vec![("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS".into(), "true".into()), ("HERALD_WEBHOOKS_MIN_INTERVAL_MS".into(), "50".into())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::spawn(dir, all)
    }

    /// A server on a data directory prepared by the test (e.g. a fixture copied in).
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let mut all: Vec<(String, String)> = vec![("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS".into(), "true".into())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::spawn(Arc::new(dir), all)
    }

    fn spawn(dir: Arc<tempfile::TempDir>, env: Vec<(String, String)>) -> Server {
        // `HERALD_TEST_BIN` runs the suite against another build (e.g. an older release, to see
        // a test fail without its fix).
        let bin = std::env::var("HERALD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_herald").to_string());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_METRICS_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATA_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // `HERALD_TEST_LOG_FILE` (a harness setting, ignored by Herald): stderr, where the
        // logs go, is appended to this file for the test to read.
        if let Some((_, path)) = env.iter().find(|(k, _)| k == "HERALD_TEST_LOG_FILE") {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file");
            cmd.stderr(Stdio::from(f));
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        // `HERALD_TEST_STORE=postgres` runs the suite on PostgreSQL: each server (and its
        // restarts) gets a database of its own.
        if std::env::var("HERALD_TEST_STORE").is_ok_and(|v| v == "postgres") && !env.iter().any(|(k, _)| k == "HERALD_DATABASE_URL") {
            cmd.env("HERALD_DATABASE_URL", postgres_database(&dir));
        }
        let mut child = cmd.spawn().expect("start herald");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read herald stdout");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        let metrics = line.split("metrics on http://").nth(1).and_then(|s| s.split('/').next()).map(|a| format!("http://{a}"));
        Server {
            child: Arc::new(Mutex::new(Some(child))),
            base: format!("http://{addr}"),
            metrics,
            dir,
            env,
            client: reqwest::Client::new(),
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether this server runs on PostgreSQL (`HERALD_TEST_STORE=postgres`).
    pub fn on_postgres(&self) -> bool {
        self.dir.path().join("postgres-database").exists()
    }

    /// A second handle on this server's store (SQLite in its data dir, or its PostgreSQL
    /// database), as another node would have.
    pub async fn open_store(&self) -> std::sync::Arc<dyn herald_storage::Store> {
        match std::fs::read_to_string(self.dir.path().join("postgres-database")) {
            Ok(url) => std::sync::Arc::new(herald_storage::postgres::PgStore::connect(&url).await.unwrap()),
            Err(_) => std::sync::Arc::new(
                herald_storage::sqlite::SqliteStore::open(self.dir.path(), herald_storage::sqlite::Durability::Full).unwrap(),
            ),
        }
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.kill_switch().fire();
    }

    /// What kills this server from any task, at the very instant it is fired.
    pub fn kill_switch(&self) -> KillSwitch {
        KillSwitch(self.child.clone())
    }

    /// SIGTERM, and wait for the process to end (graceful shutdown).
    pub fn terminate(&mut self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Start again on the same data directory (a new port).
    pub fn restart(&mut self) {
        self.kill9();
        let s = Self::spawn(self.dir.clone(), self.env.clone());
        *self = s;
    }

    /// The metrics in Prometheus' text format, as a scraper reads them.
    pub async fn scrape(&self) -> String {
        let base = self.metrics.as_ref().expect("this server serves metrics");
        let r = self.client.get(format!("{base}/metrics")).send().await.expect("scrape");
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Any request; returns (status, JSON body).
    pub async fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, self.url(path));
        if let Some(t) = token {
            r = r.header("Authorization", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.req("GET", path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.req("POST", path, Some(token), Some(body)).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.req("PUT", path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.req("DELETE", path, Some(token), None).await
    }

    /// Register `username` and return its personal token.
    pub async fn register(&self, username: &str) -> String {
        let (s, b) = self
            .req(
                "POST",
                "/users",
                None,
                Some(json!({"appId": "herald-tests", "username": username, "password": "secret-pw", "email": format!("{username}@example.com")})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        self.login(username).await
    }

    /// Log in with any password and app id: a personal token.
    pub async fn login_as(&self, username: &str, password: &str, app_id: &str) -> String {
        let (s, b) = self
            .req(
                "POST",
                &format!("/{username}/auth/login"),
                None,
                Some(json!({"username": username, "password": password, "appId": app_id})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["token"].as_str().unwrap().to_string()
    }

    /// Log `username` in (password and app of [`Server::register`]): a personal token.
    pub async fn login(&self, username: &str) -> String {
        let (s, b) = self
            .req(
                "POST",
                &format!("/{username}/auth/login"),
                None,
                Some(json!({"username": username, "password": "secret-pw", "appId": "herald-tests"})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["token"].as_str().unwrap().to_string()
    }

    /// Create an access with `token` (personal or app) and return (id, token).
    pub async fn access(&self, username: &str, token: &str, body: Value) -> (String, String) {
        let (s, b) = self.post(&format!("/{username}/accesses"), token, body).await;
        assert_eq!(s, 201, "{b}");
        (b["access"]["id"].as_str().unwrap().into(), b["access"]["token"].as_str().unwrap().into())
    }
}

/// Sends SIGKILL to a [`Server`]'s process (the signal itself, no helper process in between) and
/// reaps it. Firing it twice is harmless.
#[derive(Clone)]
pub struct KillSwitch(Arc<Mutex<Option<Child>>>);

impl KillSwitch {
    pub fn fire(&self) {
        let child = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Assert a Pryv error: status, id, and the `meta` every answer carries.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_id: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["id"], want_id, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["meta"]["serverTime"].is_number(), "{body}");
}

/// One POST received by a [`Receiver`].
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The request's path: which webhook (receivers told apart by path) it was for.
    pub path: String,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn messages(&self) -> Vec<String> {
        self.body["messages"].as_array().map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    }
}

/// A real HTTP server on 127.0.0.1 that records webhook POSTs and answers with a settable
/// status (and an optional delay, to play a slow or hanging endpoint).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
    retry_after: Arc<Mutex<Option<u64>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            url: format!("http://{addr}/notify"),
            received: Arc::new(Mutex::new(vec![])),
            status: Arc::new(Mutex::new(200)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            retry_after: Arc::new(Mutex::new(None)),
        };
        let state = r.clone();
        let app = axum::Router::new().fallback(
            |State(s): State<Receiver>, uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| async move {
                let at = Instant::now();
                let path = uri.path().to_string();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
                s.received.lock().unwrap().push(Received { at, path, body, headers });
                let delay = *s.delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let status = StatusCode::from_u16(*s.status.lock().unwrap()).unwrap();
                let mut headers = HeaderMap::new();
                if let Some(ra) = *s.retry_after.lock().unwrap() {
                    headers.insert("retry-after", ra.to_string().parse().unwrap());
                }
                (status, headers)
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.with_state(state)).await;
        });
        r
    }

    /// This receiver's URL for `path` (e.g. `/plain/alice`): receivers tell webhooks apart by path.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches("/notify"))
    }

    pub fn set_status(&self, s: u16) {
        *self.status.lock().unwrap() = s;
    }
    pub fn set_retry_after(&self, secs: Option<u64>) {
        *self.retry_after.lock().unwrap() = secs;
    }
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
    /// Wait until at least `n` POSTs arrived (or `timeout`), and return them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let end = Instant::now() + timeout;
        while self.count() < n && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.all()
    }
}

/// The PostgreSQL database of the server whose data dir is `dir`, created on first use.
fn postgres_database(dir: &tempfile::TempDir) -> String {
    let marker = dir.path().join("postgres-database");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    let url = new_postgres_database();
    std::fs::write(&marker, &url).unwrap();
    url
}

/// The PostgreSQL server and NATS server of the cluster tests, when both listen: a fresh
/// database's URL and the NATS URL. Without them the test is skipped with a line saying so,
/// except under CI (`CI` set), where they must be there.
pub fn cluster_services(test: &str) -> Option<(String, String)> {
    let nats = std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let admin = std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let listening = |url: &str, default_port: u16| {
        let rest = url.split("://").nth(1).unwrap_or("");
        let host_port = rest.rsplit('@').next().unwrap_or("").split('/').next().unwrap_or("");
        let addr = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:{default_port}") };
        std::net::TcpStream::connect(addr).is_ok()
    };
    let missing: Vec<&str> =
        [("PostgreSQL", listening(&admin, 5432)), ("NATS", listening(&nats, 4222))].iter().filter(|(_, up)| !up).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        assert!(std::env::var_os("CI").is_none(), "{test}: {} not reachable ({admin}, {nats})", missing.join(" and "));
        // Straight to stderr, past the test harness\'s capture: a skip must be seen.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("SKIPPED {test}: {} not reachable ({admin}, {nats})\n", missing.join(" and ")),
        );
        return None;
    }
    Some((new_postgres_database(), nats))
}

/// A new, empty PostgreSQL database (at `HERALD_TEST_DATABASE_URL`'s server): its URL.
pub fn new_postgres_database() -> String {
    let admin = std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| drop_databases_of_ended_runs(&admin));
    let name = format!("herald_it_{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let ok = Command::new("psql").arg(&admin).arg("-qc").arg(format!("CREATE DATABASE {name}")).status().is_ok_and(|s| s.success());
    assert!(ok, "cannot create database {name} at {admin}");
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

/// Databases are named `herald_it_<pid>_<n>` and outlive their test process (a test may restart
/// a server on its database, so none is dropped on the way). Before its first one, a process
/// drops those of processes that no longer run, and any left with its own pid by an earlier
/// process (whose `CREATE DATABASE` would otherwise fail): hundreds pile up otherwise, and slow
/// the server for everything else on the machine.
fn drop_databases_of_ended_runs(admin: &str) {
    // Which processes run is read from /proc; without it, nothing is dropped.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(out) =
        Command::new("psql").arg(admin).arg("-Atc").arg("SELECT datname FROM pg_database WHERE datname LIKE 'herald\\_it\\_%'").output()
    else {
        return;
    };
    let me = std::process::id();
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(pid) = name.strip_prefix("herald_it_").and_then(|r| r.split('_').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("psql").arg(admin).arg("-qc").arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).status();
        }
    }
}

pub fn path_buf(p: &Path) -> PathBuf {
    p.to_path_buf()
}

/// One part of a multipart body: field name, file name, content type, bytes.
pub type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Vec<u8>);

/// A multipart body: (field name, file name, content type, bytes) per part.
pub fn multipart_body(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "----heraldtestboundary7MA4YWxk";
    let mut out = Vec::new();
    for (name, file, ct, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n").as_bytes()),
            None => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes()),
        }
        if let Some(ct) = ct {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), out)
}
