//! The scenarios, one function each. Sizes shrink with `--tiny` (CI proves they run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use herald_model::webhook::Webhook;
use herald_storage::sqlite::{Durability, SqliteStore};
use herald_storage::Store;
use serde_json::json;

use crate::harness::{self, percentile, BenchResult, Herald, Receiver};
use crate::{Args, Figure};

pub async fn run(name: &str, args: &Args) -> BenchResult<Vec<Figure>> {
    match name {
        "create" => create(args).await,
        "read" => crate::read::read(args).await,
        "latency" => latency(args).await,
        "fanout" => fanout(args).await,
        "memory" => memory(args).await,
        "startup" => startup(args).await,
        "isolation" => isolation(args).await,
        "auth-flood" => auth_flood(args).await,
        "chaos" => crate::chaos::chaos(args).await,
        "log-size" => crate::chaos::log_size(args).await,
        "fuzz" => fuzz(args).await,
        "soak" => crate::soak::soak(args).await,
        "cluster" => crate::cluster::cluster(args).await,
        _ => Err(format!("unknown scenario {name}")),
    }
}

fn fig(name: &'static str, value: f64, unit: &'static str, target: Option<(f64, bool)>) -> Figure {
    Figure { name, value, unit, target }
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() % 1_000_000_000).unwrap_or(0);
    format!("{prefix}{n}")
}

/// A Herald for a scenario: the one at `--url`, or a fresh one.
fn server(args: &Args, env: &[(&str, &str)]) -> BenchResult<(Option<Herald>, String)> {
    match &args.url {
        Some(u) => Ok((None, u.trim_end_matches('/').to_string())),
        None => {
            let h = harness::start(&harness::herald_bin(&args.herald), None, env)?;
            let base = h.base.clone();
            Ok((Some(h), base))
        }
    }
}

/// `events.create` per second from 1 and from 8 keep-alive clients.
async fn create(args: &Args) -> BenchResult<Vec<Figure>> {
    let (_h, base) = server(args, &[])?;
    let c = harness::client();
    let user = Arc::new(harness::seed_user(&c, &base, &unique("create")).await?);
    let dur = if args.tiny { Duration::from_millis(300) } else { Duration::from_secs(5) };
    let mut figs = vec![];
    for (clients, name, target) in [(8usize, "events.create/s, 8 keep-alive clients", 16000.0), (1, "events.create/s, 1 client", 5000.0)] {
        let rate = harness::creates_per_second(std::slice::from_ref(&base), user.clone(), clients, dur).await?;
        figs.push(fig(name, rate, "/s", Some((target, true))));
    }
    // A batch call of 1,000 `events.create`: the median of a few.
    let calls: Vec<_> = (0..1000)
        .map(|k| json!({"method": "events.create", "params": {"streamIds": ["s"], "type": "count/steps", "content": k}}))
        .collect();
    let body = json!(calls);
    let mut ms = vec![];
    for _ in 0..if args.tiny { 1 } else { 5 } {
        let t = Instant::now();
        let v =
            harness::call(&c, reqwest::Method::POST, &format!("{base}/{}/", user.username), Some(&user.app), Some(body.clone())).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let ok = v["results"].as_array().map(|r| r.iter().filter(|x| x.get("event").is_some()).count()).unwrap_or(0);
        if ok != 1000 {
            return Err(format!("batch of 1,000 creates: {ok} created"));
        }
    }
    ms.sort_by(f64::total_cmp);
    figs.push(fig("batch of 1,000 events.create", ms[ms.len() / 2], "ms", Some((40.0, false))));
    // The floor under those figures on this machine: the disk's sync, and the store's own
    // commits without HTTP (`floor.rs`), in the temp dir where a fresh server keeps its data.
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rounds = if args.tiny { 50 } else { 1000 };
    figs.push(fig("floor: 4 KiB write + fdatasync, median", crate::floor::disk_sync_us(scratch.path(), 1, rounds)?, "µs", None));
    figs.push(fig("floor: 10 × 4 KiB writes + fdatasync, median", crate::floor::disk_sync_us(scratch.path(), 10, rounds)?, "µs", None));
    for (tasks, name) in
        [(8usize, "floor: store alone, no HTTP: events.create/s, 8 tasks"), (1, "floor: store alone, no HTTP: events.create/s, 1 task")]
    {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        figs.push(fig(name, crate::floor::store_creates_per_second(dir.path(), tasks, dur).await?, "/s", None));
    }
    Ok(figs)
}

/// Wait for the next arrival whose path starts with `prefix`.
async fn next_arrival(r: &mut Receiver, prefix: &str, timeout: Duration) -> Option<Instant> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, r.rx.recv()).await {
            Ok(Some((path, at))) if path.starts_with(prefix) => return Some(at),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

fn drain(r: &mut Receiver) {
    while r.rx.try_recv().is_ok() {}
}

/// Latencies (ms) from the `events.create` response to the POST's arrival, `rounds` times for
/// each user, one change at a time.
async fn measure_latency(
    c: &reqwest::Client,
    base: &str,
    r: &mut Receiver,
    users: &[(harness::Seeded, String)],
    rounds: usize,
) -> BenchResult<Vec<f64>> {
    Ok(measure_latencies(c, base, r, users, rounds).await?.0)
}

/// Latencies (ms, sorted) to the POST's arrival: from the `events.create` response, and from
/// the moment the request was sent.
async fn measure_latencies(
    c: &reqwest::Client,
    base: &str,
    r: &mut Receiver,
    users: &[(harness::Seeded, String)],
    rounds: usize,
) -> BenchResult<(Vec<f64>, Vec<f64>)> {
    let (mut after_response, mut after_request) = (vec![], vec![]);
    for _ in 0..rounds {
        for (u, prefix) in users {
            drain(r);
            let t0 = Instant::now();
            harness::create_event(c, base, u).await?;
            let t1 = Instant::now();
            let at = next_arrival(r, prefix, Duration::from_secs(5)).await.ok_or("a webhook POST did not arrive within 5 s")?;
            after_response.push(at.saturating_duration_since(t1).as_secs_f64() * 1000.0);
            after_request.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            // Past the webhook's minIntervalMs, so the next change is not bundled.
            tokio::time::sleep(Duration::from_millis(12)).await;
        }
    }
    for v in [&mut after_response, &mut after_request] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    }
    Ok((after_response, after_request))
}

/// Latency from an `events.create` response to the webhook POST arriving.
async fn latency(args: &Args) -> BenchResult<Vec<Figure>> {
    let (_h, base) = server(args, &[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")])?;
    let c = harness::client();
    let mut r = harness::receiver().await?;
    let u = harness::seed_user(&c, &base, &unique("latency")).await?;
    harness::webhook(&c, &base, &u, &format!("{}/lat", r.base), None).await?;
    let rounds = if args.tiny { 5 } else { 300 };
    let (lat, from_request) = measure_latencies(&c, &base, &mut r, &[(u, "/lat".to_string())], rounds).await?;
    Ok(vec![
        fig("webhook latency after events.create, p50", percentile(&lat, 0.5), "ms", Some((1.0, false))),
        fig("webhook latency after events.create, p99", percentile(&lat, 0.99), "ms", Some((5.0, false))),
        fig("webhook latency from sending events.create, p50", percentile(&from_request, 0.5), "ms", None),
        fig("webhook latency from sending events.create, p99", percentile(&from_request, 0.99), "ms", None),
    ])
}

/// 10,000 users with one webhook each, one change each: time until every POST arrived.
async fn fanout(args: &Args) -> BenchResult<Vec<Figure>> {
    let (_h, base) = server(args, &[])?;
    let mut r = harness::receiver().await?;
    let n = if args.tiny { 20 } else { args.users };
    let prefix = unique("fan");
    let pb = harness::progress(n as u64, "seeding users");
    let seeded: Vec<BenchResult<harness::Seeded>> = stream::iter(0..n)
        .map(|i| {
            let (base, prefix, recv, pb) = (base.clone(), prefix.clone(), r.base.clone(), pb.clone());
            async move {
                let c = harness::client();
                let u = harness::seed_user(&c, &base, &format!("{prefix}-{i}")).await?;
                harness::webhook(&c, &base, &u, &format!("{recv}/fan/{i}"), None).await?;
                pb.inc(1);
                Ok(u)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    pb.finish_and_clear();
    let users: Vec<Arc<harness::Seeded>> = seeded.into_iter().map(|u| u.map(Arc::new)).collect::<BenchResult<_>>()?;
    drain(&mut r);
    let t0 = Instant::now();
    // Eight keep-alive clients, each creating one event for its share of the users.
    let creates = tokio::spawn({
        let (base, users) = (base.clone(), users.clone());
        async move {
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    let (base, mine) = (base.clone(), users.iter().skip(w).step_by(8).cloned().collect::<Vec<_>>());
                    tokio::spawn(async move {
                        let c = harness::client();
                        let mut errors = 0;
                        for u in mine {
                            if harness::create_event(&c, &base, &u).await.is_err() {
                                errors += 1;
                            }
                        }
                        errors
                    })
                })
                .collect();
            let mut errors = 0;
            for w in workers {
                errors += w.await.unwrap_or(1);
            }
            (Instant::now(), errors)
        }
    });
    let pb = harness::progress(n as u64, "deliveries");
    let mut got = 0;
    let mut last = t0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), r.rx.recv()).await {
            Ok(Some((path, at))) if path.starts_with("/fan/") => {
                got += 1;
                last = at;
                pb.inc(1);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    pb.finish_and_clear();
    let (creates_done, errors) = creates.await.map_err(|e| e.to_string())?;
    if got < n || errors > 0 {
        return Err(format!("{got}/{n} deliveries, {errors} failed creates"));
    }
    let all = last.duration_since(t0).as_secs_f64();
    Ok(vec![
        fig("fan-out: all delivered, from the first change", all, "s", Some((2.0, false))),
        fig("fan-out: last POST after the last create response", last.saturating_duration_since(creates_done).as_secs_f64(), "s", None),
        fig("fan-out: deliveries per second", n as f64 / all, "/s", None),
    ])
}

/// Write `n` webhooks (100 per user, one app access each) straight into a data directory
/// through the Store trait: the documented bulk path for the million-webhook scenarios.
async fn seed_bulk(n: usize, url_base: &str) -> BenchResult<tempfile::TempDir> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), Durability::Normal).map_err(|e| e.to_string())?);
    let per_user = 100usize;
    let users = n.div_ceil(per_user).max(1);
    let pb = harness::progress(n as u64, "seeding webhooks");
    let now = 1.7e9;
    let results: Vec<BenchResult<()>> = stream::iter(0..users)
        .map(|u| {
            let (store, pb, url_base) = (store.clone(), pb.clone(), url_base.to_string());
            async move {
                let user_id = format!("bulkuser{u:07}");
                let user = herald_model::user::User {
                    id: user_id.clone(),
                    username: format!("bulk-{u:07}"),
                    email: format!("bulk{u}@bench.local"),
                    password_hash: "-".into(),
                    language: "en".into(),
                    created: now,
                };
                store.create_user(&user).await.map_err(|e| e.to_string())?;
                let access_id = format!("bulkaccess{u:07}");
                let access = herald_model::access::Access {
                    id: access_id.clone(),
                    token: format!("bulktoken{u:07}"),
                    access_type: herald_model::access::AccessType::App,
                    name: "bulk".into(),
                    device_name: None,
                    permissions: vec![],
                    expires: None,
                    client_data: None,
                    created: now,
                    created_by: "bulk".into(),
                    modified: now,
                    modified_by: "bulk".into(),
                    deleted: None,
                };
                store.insert_access(&user_id, &access, vec![]).await.map_err(|e| e.to_string())?;
                let count = per_user.min(n - u * per_user);
                let writes = (0..count).map(|k| {
                    let w = Webhook::new(
                        format!("bulkwh{u:07}x{k:03}"),
                        &access_id,
                        &format!("{url_base}/m/{u}/{k}"),
                        5000,
                        5,
                        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                        now,
                    );
                    let (store, user_id) = (store.clone(), user_id.clone());
                    async move { store.insert_webhook(&user_id, &w, vec![]).await.map(drop).map_err(|e| e.to_string()) }
                });
                for r in futures::future::join_all(writes).await {
                    r?;
                }
                pb.inc(count as u64);
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    pb.finish_and_clear();
    results.into_iter().collect::<BenchResult<Vec<()>>>()?;
    Ok(dir)
}

/// Count boot POSTs until `n` arrived or `timeout`; returns (first, last, count).
async fn boot_posts(r: &mut Receiver, n: usize, timeout: Duration) -> (Option<Instant>, Option<Instant>, usize) {
    let pb = harness::progress(n as u64, "boot POSTs");
    let (mut first, mut last, mut got) = (None, None, 0);
    let end = Instant::now() + timeout;
    while got < n {
        let Some(left) = end.checked_duration_since(Instant::now()) else { break };
        match tokio::time::timeout(left.min(Duration::from_secs(20)), r.rx.recv()).await {
            Ok(Some((path, at))) if path.starts_with("/m/") => {
                first = first.or(Some(at));
                last = Some(at);
                got += 1;
                pb.inc(1);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    pb.finish_and_clear();
    (first, last, got)
}

/// Memory idle on an empty store, and with the webhooks loaded.
async fn memory(args: &Args) -> BenchResult<Vec<Figure>> {
    let bin = harness::herald_bin(&args.herald);
    let idle = harness::start(&bin, None, &[])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = harness::rss_mib(idle.pid.unwrap_or(0));
    drop(idle);
    let n = if args.tiny { 1000 } else { args.webhooks };
    let mut r = harness::receiver().await?;
    let dir = seed_bulk(n, &r.base).await?;
    let h = harness::start(&bin, Some(dir), &[])?;
    let (_, _, got) = boot_posts(&mut r, n, Duration::from_secs(300)).await;
    // Steady state (lowest RSS over 30 s): the boot POSTs' runs are saved, the allocator has
    // returned what it can.
    let mut loaded = f64::MAX;
    for _ in 0..(if args.tiny { 1 } else { 30 }) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = harness::rss_mib(h.pid.unwrap_or(0));
        eprintln!("memory: RSS {rss:.1} MiB");
        loaded = loaded.min(rss);
    }
    eprintln!("memory: {got}/{n} boot POSTs received before measuring");
    Ok(vec![
        fig("memory idle, empty store", idle_rss, "MiB", Some((30.0, false))),
        fig("memory with the webhooks loaded (--webhooks, default 1,000,000)", loaded, "MiB", Some((600.0, false))),
        fig("memory per loaded webhook", (loaded - idle_rss).max(0.0) * 1024.0 * 1024.0 / n as f64, "bytes", None),
    ])
}

/// Start-up with the webhooks stored: to serving (HTTP answers; the dispatcher has loaded every
/// webhook before), and to the first boot POST (dispatching).
async fn startup(args: &Args) -> BenchResult<Vec<Figure>> {
    let bin = harness::herald_bin(&args.herald);
    let n = if args.tiny { 1000 } else { args.webhooks };
    let mut r = harness::receiver().await?;
    let dir = seed_bulk(n, &r.base).await?;
    let t0 = Instant::now();
    let h = harness::start(&bin, Some(dir), &[])?;
    let serving = h.startup.as_secs_f64();
    let (first, last, got) = boot_posts(&mut r, n, Duration::from_secs(300)).await;
    let first = first.map(|f| f.duration_since(t0).as_secs_f64()).unwrap_or(f64::NAN);
    let all = last.map(|l| l.duration_since(t0).as_secs_f64()).unwrap_or(f64::NAN);
    if got < n {
        return Err(format!("only {got}/{n} boot POSTs arrived"));
    }
    Ok(vec![
        fig("start-up: serving (all webhooks loaded)", serving, "s", Some((10.0, false))),
        fig("start-up: first boot POST (dispatching)", first, "s", Some((10.0, false))),
        fig("start-up: every webhook greeted", all, "s", None),
    ])
}

/// Ten healthy webhooks' p99 latency, alone and while 1,000 endpoints hang.
async fn isolation(args: &Args) -> BenchResult<Vec<Figure>> {
    let (_h, base) = server(args, &[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"), ("HERALD_WEBHOOKS_MAX_PER_ACCESS", "100000")])?;
    let c = harness::client();
    let mut r = harness::receiver().await?;
    let hanging = if args.tiny { 20 } else { 1000 };
    let hang_user = harness::seed_user(&c, &base, &unique("hang")).await?;
    let pb = harness::progress(hanging as u64, "hanging webhooks");
    for k in 0..hanging {
        harness::webhook(&c, &base, &hang_user, &format!("{}/hang/{k}", r.base), None).await?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut healthy = vec![];
    for i in 0..10 {
        let u = harness::seed_user(&c, &base, &unique(&format!("ok{i}x"))).await?;
        harness::webhook(&c, &base, &u, &format!("{}/ok/{i}", r.base), None).await?;
        healthy.push((u, format!("/ok/{i}")));
    }
    let rounds = if args.tiny { 2 } else { 20 };
    let alone = measure_latency(&c, &base, &mut r, &healthy, rounds).await?;
    // Every hanging endpoint now holds a POST open (the default 10 s timeout, then retries).
    drain(&mut r);
    harness::create_event(&c, &base, &hang_user).await?;
    let mut hung = 0;
    while hung < hanging {
        match tokio::time::timeout(Duration::from_secs(10), r.rx.recv()).await {
            Ok(Some((p, _))) if p.starts_with("/hang/") => hung += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    if hung < hanging {
        return Err(format!("only {hung}/{hanging} hanging POSTs started"));
    }
    let with = measure_latency(&c, &base, &mut r, &healthy, rounds).await?;
    let (p_alone, p_with) = (percentile(&alone, 0.99), percentile(&with, 0.99));
    Ok(vec![
        fig("isolation: healthy p99 alone", p_alone, "ms", None),
        fig("isolation: healthy p99 with 1,000 hanging endpoints", p_with, "ms", None),
        fig("isolation: ratio (with / alone)", p_with / p_alone.max(0.001), "x", Some((2.0, false))),
    ])
}

/// One login answer of the flood, by status.
#[derive(Default)]
struct FloodCounts {
    wrong: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

/// `GET /service/info` from `conns` keep-alive connections for `dur`: (requests/s, sorted
/// latencies in ms).
async fn service_info_load(base: &str, conns: usize, dur: Duration) -> (f64, Vec<f64>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let url = format!("{base}/service/info");
            tokio::spawn(async move {
                let c = harness::client();
                let mut lat = vec![];
                while start.elapsed() < dur {
                    let t = Instant::now();
                    let ok = match c.get(&url).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (rate, all)
}

/// Password guessing must neither starve the server nor go unthrottled (issue 15): 32
/// connections post wrong passwords to `/{username}/auth/login`, over many users, while 8
/// others measure an unrelated `GET /service/info`. Herald keeps its default Argon2 cost here.
///
/// Two variants: `throttled` runs Herald's default throttling (it soon answers 429 without
/// hashing); `pool` loosens the per-user and per-address login limits so that every guess
/// reaches the password-hashing pool, which is then what is measured.
async fn auth_flood(args: &Args) -> BenchResult<Vec<Figure>> {
    let users = if args.tiny { 4 } else { 64 };
    let dur = if args.tiny { Duration::from_millis(300) } else { Duration::from_secs(5) };
    let (flooders, measurers) = (32usize, 8usize);
    // Herald's default Argon2 cost; its throttling log (one line per block) stays out of the figures.
    let default_cost = [("HERALD_AUTH_ARGON2_MEMORY_KIB", "19456"), ("HERALD_AUTH_ARGON2_ITERATIONS", "2"), ("HERALD_LOG", "error")];
    let loose = [("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "1000000000"), ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "1000000000")];
    let mut figs = vec![];
    for variant in ["throttled", "pool"] {
        let mut env: Vec<(&str, &str)> = default_cost.to_vec();
        if variant == "pool" {
            env.extend(loose);
        }
        let h = harness::start(&harness::herald_bin(&args.herald), None, &env)?;
        let base = h.base.clone();
        let prefix = unique("flood");
        let names: Vec<String> = (0..users).map(|i| format!("{prefix}-{i}")).collect();
        let seeded: Vec<BenchResult<()>> = stream::iter(names.clone())
            .map(|u| {
                let base = base.clone();
                async move {
                    let c = harness::client();
                    let body =
                        json!({"appId": "herald-bench", "username": u, "password": "bench-pass", "email": format!("{u}@bench.local")});
                    harness::call(&c, reqwest::Method::POST, &format!("{base}/users"), None, Some(body)).await.map(|_| ())
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        seeded.into_iter().collect::<BenchResult<Vec<()>>>()?;

        let (alone, alone_lat) = service_info_load(&base, measurers, dur).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts = Arc::new(FloodCounts::default());
        let names = Arc::new(names);
        let flood: Vec<_> = (0..flooders)
            .map(|k| {
                let (stop, counts, names, base) = (stop.clone(), counts.clone(), names.clone(), base.clone());
                tokio::spawn(async move {
                    let c = harness::client();
                    let mut i = k;
                    while !stop.load(Ordering::Relaxed) {
                        let u = &names[i % names.len()];
                        i += flooders;
                        let body = json!({"username": u, "password": format!("guess-{i}"), "appId": "herald-bench"});
                        let status = match c.post(format!("{base}/{u}/auth/login")).json(&body).send().await {
                            Ok(r) => {
                                let s = r.status().as_u16();
                                let _ = r.bytes().await;
                                s
                            }
                            Err(_) => 0,
                        };
                        let slot = match status {
                            401 => &counts.wrong,
                            429 => &counts.throttled,
                            503 => &counts.busy,
                            _ => &counts.other,
                        };
                        slot.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Let the flood fill whatever queues it fills before measuring.
        tokio::time::sleep(if args.tiny { Duration::from_millis(100) } else { Duration::from_secs(1) }).await;
        let (c0, t0) = (counts.wrong.load(Ordering::Relaxed) + counts.throttled.load(Ordering::Relaxed), Instant::now());
        let (b0, o0) = (counts.busy.load(Ordering::Relaxed), counts.other.load(Ordering::Relaxed));
        let w0 = counts.wrong.load(Ordering::Relaxed);
        let (flooded, flooded_lat) = service_info_load(&base, measurers, dur).await;
        let secs = t0.elapsed().as_secs_f64();
        let wrong = (counts.wrong.load(Ordering::Relaxed) - w0) as f64 / secs;
        let answered = (counts.wrong.load(Ordering::Relaxed) + counts.throttled.load(Ordering::Relaxed) - c0) as f64 / secs;
        let busy = (counts.busy.load(Ordering::Relaxed) - b0) as f64 / secs;
        let other = (counts.other.load(Ordering::Relaxed) - o0) as f64 / secs;
        stop.store(true, Ordering::Relaxed);
        for t in flood {
            let _ = t.await;
        }
        drop(h);
        eprintln!(
            "auth-flood {variant}: /service/info {alone:.0}/s alone, {flooded:.0}/s flooded; logins/s: {wrong:.1} wrong (hashed), {:.1} throttled (429), {busy:.1} busy (503), {other:.1} other",
            answered - wrong
        );
        let kept = 100.0 * flooded / alone.max(0.001);
        let (p99_alone, p99_flooded) = (percentile(&alone_lat, 0.99), percentile(&flooded_lat, 0.99));
        let throttled = variant == "throttled";
        figs.extend([
            fig(if throttled { "throttled: /service/info alone" } else { "pool: /service/info alone" }, alone, "/s", None),
            fig(
                if throttled { "throttled: /service/info under the login flood" } else { "pool: /service/info under the login flood" },
                flooded,
                "/s",
                None,
            ),
            fig(
                if throttled { "throttled: throughput kept under the flood" } else { "pool: throughput kept under the flood" },
                kept,
                "%",
                Some((50.0, true)),
            ),
            fig(if throttled { "throttled: /service/info p99 alone" } else { "pool: /service/info p99 alone" }, p99_alone, "ms", None),
            fig(
                if throttled { "throttled: /service/info p99 under the flood" } else { "pool: /service/info p99 under the flood" },
                p99_flooded,
                "ms",
                Some((5.0, false)),
            ),
            fig(
                if throttled { "throttled: wrong passwords hashed per second" } else { "pool: wrong passwords hashed per second" },
                wrong,
                "/s",
                None,
            ),
            fig(
                if throttled { "throttled: logins refused 429 per second" } else { "pool: logins refused 429 per second" },
                answered - wrong,
                "/s",
                None,
            ),
            fig(
                if throttled { "throttled: logins refused 503 per second" } else { "pool: logins refused 503 per second" },
                busy,
                "/s",
                None,
            ),
        ]);
    }
    Ok(figs)
}

/// The long mode of the HTTP fuzz test (`crates/herald/tests/fuzz_http.rs`): generated bad
/// requests from a seed; any 5xx, any answer outside Pryv's JSON envelope, or any change to the
/// user's data fails the scenario. `--tiny`: 2,000 requests; otherwise 200,000.
async fn fuzz(args: &Args) -> BenchResult<Vec<Figure>> {
    let herald = harness::start(&harness::herald_bin(&args.herald), None, &[("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS", "false")])?;
    let c = harness::client();
    let base = herald.base.clone();
    let v = harness::call(
        &c,
        reqwest::Method::POST,
        &format!("{base}/users"),
        None,
        Some(json!({"appId": "herald-bench", "username": "fuzzed", "password": "bench-pass", "email": "fuzzed@bench.local"})),
    )
    .await?;
    let endpoint = v["apiEndpoint"].as_str().ok_or("no apiEndpoint")?;
    let personal = endpoint.split("://").nth(1).and_then(|s| s.split('@').next()).ok_or("no token")?.to_string();
    let mut ids = vec!["fuzzed".to_string(), "*".to_string()];
    for (id, parent) in [("diary", None), ("health", None), ("heart", Some("health"))] {
        harness::call(
            &c,
            reqwest::Method::POST,
            &format!("{base}/fuzzed/streams"),
            Some(&personal),
            Some(json!({"id": id, "name": id, "parentId": parent})),
        )
        .await?;
        ids.push(id.into());
    }
    for i in 0..5 {
        let v = harness::call(
            &c,
            reqwest::Method::POST,
            &format!("{base}/fuzzed/events"),
            Some(&personal),
            Some(json!({"streamIds": ["heart"], "type": "count/steps", "content": i})),
        )
        .await?;
        ids.push(v["event"]["id"].as_str().unwrap_or("x").into());
    }
    let v = harness::call(
        &c,
        reqwest::Method::POST,
        &format!("{base}/fuzzed/accesses"),
        Some(&personal),
        Some(json!({"name": "reader", "type": "shared", "permissions": [{"streamId": "*", "level": "read"}, {"feature": "selfRevoke", "setting": "forbidden"}]})),
    )
    .await?;
    let read_only = v["access"]["token"].as_str().ok_or("no token")?.to_string();
    ids.push(v["access"]["id"].as_str().unwrap_or("x").into());
    let target = crate::fuzz::Target { base, username: "fuzzed".into(), personal, read_only, ids };
    let before = crate::fuzz::snapshot(&c, &target).await?;
    let n = if args.tiny { 2_000 } else { 200_000 };
    // CI (`--tiny`) runs one fixed seed; the long mode a new one each time; HERALD_FUZZ_SEED wins.
    let seed = std::env::var("HERALD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        if args.tiny {
            13
        } else {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(13)
        }
    });
    println!("fuzz: seed {seed} (HERALD_FUZZ_SEED={seed} replays it in the test), {n} requests");
    let t = Instant::now();
    let stats = crate::fuzz::run(&target, seed, n, 8).await?;
    let secs = t.elapsed().as_secs_f64();
    let after = crate::fuzz::snapshot(&c, &target).await?;
    if before != after {
        return Err(format!("fuzz seed {seed}: the user's data changed"));
    }
    println!("fuzz: {stats:?}");
    Ok(vec![
        Figure { name: "fuzz requests", value: stats.sent as f64, unit: "requests", target: None },
        Figure { name: "fuzz requests/s", value: stats.sent as f64 / secs.max(1e-9), unit: "req/s", target: None },
        Figure { name: "fuzz 5xx or bad envelopes", value: 0.0, unit: "answers", target: Some((0.0, false)) },
    ])
}
