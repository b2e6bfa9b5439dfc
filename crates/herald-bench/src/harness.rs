//! What the scenarios share: starting Herald, a fast local receiver, API helpers, RSS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

pub type BenchResult<T> = Result<T, String>;

pub struct Herald {
    child: std::sync::Arc<std::sync::Mutex<Option<Child>>>,
    pub base: String,
    pub pid: Option<u32>,
    /// Kept so the data directory lives as long as the server.
    pub _dir: Option<tempfile::TempDir>,
    /// From spawn to the "listening" line (which Herald prints once its dispatcher has loaded).
    pub startup: Duration,
}

impl Herald {
    /// `kill -9`, and reap the process.
    pub fn kill9(&mut self) {
        self.kill_switch().fire();
    }

    /// Kills this server from any task, at the instant it is fired.
    pub fn kill_switch(&self) -> KillSwitch {
        KillSwitch(self.child.clone())
    }
}

/// Sends SIGKILL (the signal itself, no helper process) and reaps the process; firing twice is
/// harmless.
#[derive(Clone)]
pub struct KillSwitch(std::sync::Arc<std::sync::Mutex<Option<Child>>>);

impl KillSwitch {
    pub fn fire(&self) {
        let child = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn herald_bin(explicit: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p.clone();
    }
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name("herald")
}

/// Settings every benchmark server gets: loopback receivers allowed, cheap password hashes and
/// no limit on registrations from one address (thousands of users are registered from
/// 127.0.0.1), and the platform's defaults otherwise (login throttling included).
pub const BASE_ENV: &[(&str, &str)] = &[
    ("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS", "true"),
    ("HERALD_AUTH_ARGON2_MEMORY_KIB", "256"),
    ("HERALD_AUTH_ARGON2_ITERATIONS", "1"),
    ("HERALD_AUTH_REGISTRATIONS_PER_ADDRESS", "1000000000"),
];

pub fn start(bin: &Path, dir: Option<tempfile::TempDir>, env: &[(&str, &str)]) -> BenchResult<Herald> {
    let dir = match dir {
        Some(d) => d,
        None => tempfile::tempdir().map_err(|e| e.to_string())?,
    };
    let mut h = start_in(bin, dir.path(), env)?;
    h._dir = Some(dir);
    Ok(h)
}

/// A Herald on a data directory that outlives it.
pub fn start_in(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> BenchResult<Herald> {
    let mut cmd = Command::new(bin);
    // Metrics on a free port too: several nodes may run at once (the default port is fixed).
    cmd.arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_METRICS_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in BASE_ENV.iter().chain(env.iter()) {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    let startup = t.elapsed();
    let addr = line.split("http://").nth(1).and_then(|s| s.split('/').next()).ok_or_else(|| format!("herald said: {line}"))?.to_string();
    Ok(Herald {
        pid: Some(child.id()),
        child: std::sync::Arc::new(std::sync::Mutex::new(Some(child))),
        base: format!("http://{addr}"),
        _dir: None,
        startup,
    })
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A receiver of webhook POSTs on 127.0.0.1: reports (path, arrival) on a channel. Paths under
/// `/hang/` are never answered (until the request is dropped).
pub struct Receiver {
    pub base: String,
    pub rx: mpsc::UnboundedReceiver<(String, Instant)>,
}

pub async fn receiver() -> BenchResult<Receiver> {
    use axum::extract::State;
    use axum::http::Uri;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let app = axum::Router::new()
        .fallback(|State(tx): State<mpsc::UnboundedSender<(String, Instant)>>, uri: Uri, _body: axum::body::Bytes| async move {
            let at = Instant::now();
            let path = uri.path().to_string();
            let hang = path.starts_with("/hang/");
            let _ = tx.send((path, at));
            if hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            "ok"
        })
        .with_state(tx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Receiver { base: format!("http://{addr}"), rx })
}

/// A keep-alive client for one load worker.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(4).tcp_nodelay(true).build().expect("client")
}

pub async fn call(c: &reqwest::Client, method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> BenchResult<Value> {
    let mut r = c.request(method, url);
    if let Some(t) = token {
        r = r.header("Authorization", t);
    }
    if let Some(b) = body {
        r = r.header("Content-Type", "application/json").body(b.to_string());
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {v}"));
    }
    Ok(v)
}

/// A user ready for benchmarks: (app token with manage on `*`, stream `s` created).
pub struct Seeded {
    pub username: String,
    pub app: String,
}

pub async fn seed_user(c: &reqwest::Client, base: &str, username: &str) -> BenchResult<Seeded> {
    let v = call(
        c,
        reqwest::Method::POST,
        &format!("{base}/users"),
        None,
        Some(json!({"appId": "herald-bench", "username": username, "password": "bench-pass", "email": format!("{username}@bench.local")})),
    )
    .await?;
    let endpoint = v["apiEndpoint"].as_str().ok_or("no apiEndpoint")?;
    let personal = endpoint.split("://").nth(1).and_then(|s| s.split('@').next()).ok_or("no token in apiEndpoint")?.to_string();
    let v = call(
        c,
        reqwest::Method::POST,
        &format!("{base}/{username}/accesses"),
        Some(&personal),
        Some(json!({"name": "bench", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})),
    )
    .await?;
    let app = v["access"]["token"].as_str().ok_or("no token")?.to_string();
    call(c, reqwest::Method::POST, &format!("{base}/{username}/streams"), Some(&app), Some(json!({"id": "s", "name": "S"}))).await?;
    Ok(Seeded { username: username.into(), app })
}

pub async fn webhook(c: &reqwest::Client, base: &str, u: &Seeded, url: &str, min_interval_ms: Option<u64>) -> BenchResult<()> {
    let mut body = json!({ "url": url });
    if let Some(m) = min_interval_ms {
        body["minIntervalMs"] = json!(m);
    }
    call(c, reqwest::Method::POST, &format!("{base}/{}/webhooks", u.username), Some(&u.app), Some(body)).await.map(|_| ())
}

pub async fn create_event(c: &reqwest::Client, base: &str, u: &Seeded) -> BenchResult<()> {
    call(
        c,
        reqwest::Method::POST,
        &format!("{base}/{}/events", u.username),
        Some(&u.app),
        Some(json!({"streamIds": ["s"], "type": "count/steps", "content": 100})),
    )
    .await
    .map(|_| ())
}

/// `events.create` per second for `dur` from `clients` keep-alive clients, spread over `bases`.
/// A create that fails is not counted, and the client goes on; if none succeeds, the measure is
/// an error rather than 0/s.
pub async fn creates_per_second(bases: &[String], user: std::sync::Arc<Seeded>, clients: usize, dur: Duration) -> BenchResult<f64> {
    let bases: Vec<std::sync::Arc<str>> = bases.iter().map(|b| b.as_str().into()).collect();
    ops_per_second(clients, dur, |i| {
        let (c, base, user) = (client(), bases[i % bases.len()].clone(), user.clone());
        move || {
            let (c, base, user) = (c.clone(), base.clone(), user.clone());
            async move { Ok(create_event(&c, &base, &user).await.is_ok()) }
        }
    })
    .await
}

/// Operations per second for `dur` from `workers` concurrent tasks, each calling the operation
/// that `worker(i)` makes for it in a loop. An operation answers whether it counts
/// (`Ok(false)`: failed, go on); an `Err` stops the measure and is returned. None counted is an
/// error too: a server that fails every call must not pass for a slow one.
pub async fn ops_per_second<W, Op, Fut>(workers: usize, dur: Duration, worker: W) -> BenchResult<f64>
where
    W: Fn(usize) -> Op,
    Op: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = BenchResult<bool>> + Send + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let done = std::sync::Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for i in 0..workers {
        let (done, mut op) = (done.clone(), worker(i));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < dur {
                if op().await? {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    match done.load(Ordering::Relaxed) {
        0 => Err(format!("no operation succeeded in {dur:?} from {workers} workers")),
        n => Ok(n as f64 / start.elapsed().as_secs_f64()),
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
