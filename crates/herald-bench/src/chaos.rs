//! Scenarios about what survives a crash, and about the change log's size.
//!
//! `chaos`: cycles of `kill -9` under load (writers on several users, each with a plain webhook
//! and one scoped by stream), then a restart on the same data directory. Half the cycles kill at
//! a random moment, the other half the instant a random write's 201 arrives (the worst one: the
//! change is committed and nothing after the commit has run yet). It counts the
//! acknowledged writes that are gone and the notifications that never came. During the writes
//! every receiver hangs (no POST is answered), so every message of a cycle is still owed at the
//! kill and must arrive after the restart: the count is exact, not a guess from timings.
//!
//! `log-size`: events.create at full load for a while with a short retention, sampling how many
//! records the change log holds: it must stay bounded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{self, BenchResult, Herald};
use crate::{Args, Figure};

/// (path, messages) of each POST received.
type Posts = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// A receiver that records every POST and hangs while `hang` is set.
#[derive(Clone)]
struct Receiver {
    base: String,
    hang: Arc<AtomicBool>,
    got: Posts,
}

async fn receiver() -> BenchResult<Receiver> {
    use axum::extract::State;
    use axum::http::Uri;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let r = Receiver { base: format!("http://{addr}"), hang: Arc::new(AtomicBool::new(false)), got: Arc::new(Mutex::new(vec![])) };
    let state = r.clone();
    let app = axum::Router::new()
        .fallback(|State(r): State<Receiver>, uri: Uri, body: axum::body::Bytes| async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let msgs =
                v["messages"].as_array().map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect()).unwrap_or_default();
            if let Ok(mut g) = r.got.lock() {
                g.push((uri.path().to_string(), msgs));
            }
            if r.hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            "ok"
        })
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(r)
}

struct User {
    seeded: harness::Seeded,
    /// Event ids acknowledged over all cycles.
    acked: Mutex<Vec<String>>,
}

/// Streams of each user (`s` comes with the seeded user).
const STREAMS: [&str; 6] = ["s", "t", "u", "v", "w", "x"];

fn scope_key(stream: &str) -> &'static str {
    match stream {
        "s" => "sChanged",
        "t" => "tChanged",
        "u" => "uChanged",
        "v" => "vChanged",
        "w" => "wChanged",
        _ => "xChanged",
    }
}

/// What one write changed, for the expected messages.
enum Wrote {
    Event { user: usize, stream: &'static str },
    Stream { user: usize },
}

/// A tiny xorshift: the bench needs reproducible randomness, not a crate for it.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn restart(bin: &Path, herald: &mut Herald, env: &[(&str, &str)]) -> BenchResult<()> {
    let dir = herald._dir.take().ok_or("no data dir")?;
    herald.kill9();
    *herald = harness::start(bin, Some(dir), env)?;
    Ok(())
}

pub async fn chaos(args: &Args) -> BenchResult<Vec<Figure>> {
    let (cycles, users_n, writers) = if args.tiny { (4, 2, 4) } else { (args.cycles, 16, 16) };
    let env = [("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"), ("HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS", "600000")];
    let bin = harness::herald_bin(&args.herald);
    let mut herald = harness::start(&bin, None, &env)?;
    let r = receiver().await?;
    let c = harness::client();
    let mut users = vec![];
    for i in 0..users_n {
        let base = herald.base.clone();
        let seeded = harness::seed_user(&c, &base, &format!("chaos{i}user")).await?;
        let name = seeded.username.clone();
        for id in &STREAMS[1..] {
            let url = format!("{base}/{name}/streams");
            harness::call(&c, reqwest::Method::POST, &url, Some(&seeded.app), Some(json!({"id": id, "name": id}))).await?;
        }
        harness::webhook(&c, &base, &seeded, &format!("{}/plain/{name}", r.base), Some(10)).await?;
        // One key per stream: a message is owed for each stream written in the cycle.
        let scopes: serde_json::Map<String, Value> =
            STREAMS.iter().map(|s| (scope_key(s).to_string(), json!({"kind": "events", "query": {"streams": [s]}}))).collect();
        harness::call(
            &c,
            reqwest::Method::POST,
            &format!("{base}/{name}/webhooks"),
            Some(&seeded.app),
            Some(json!({"url": format!("{}/scoped/{name}", r.base), "minIntervalMs": 10, "scopes": scopes})),
        )
        .await?;
        users.push(User { seeded, acked: Mutex::new(vec![]) });
    }
    let users = Arc::new(users);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut acked_total, mut notifications_lost, mut owed_total) = (0u64, 0u64, 0u64);
    let mut recoveries = vec![];
    let pb = harness::progress(cycles as u64, "kill -9 cycles");
    for cycle in 0..cycles {
        r.hang.store(true, Ordering::SeqCst);
        let stop = Arc::new(AtomicBool::new(false));
        let wrote = Arc::new(Mutex::new(Vec::<Wrote>::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(AtomicU64::new(0));
        // Odd cycles: kill the instant the `kill_after`-th write is acknowledged.
        let kill_after = if cycle % 2 == 1 { 1 + next(&mut seed) % 60 } else { u64::MAX };
        let kill = herald.kill_switch();
        let mut tasks = vec![];
        for w in 0..writers {
            let (users, stop, wrote, counter, acks, kill, base) =
                (users.clone(), stop.clone(), wrote.clone(), counter.clone(), acks.clone(), kill.clone(), herald.base.clone());
            tasks.push(tokio::spawn(async move {
                let client = harness::client();
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let u = (w + n) % users.len();
                    let user = &users[u];
                    let name = &user.seeded.username;
                    let k = counter.fetch_add(1, Ordering::Relaxed);
                    let (req, what, id) = if n.is_multiple_of(13) {
                        let req = client.put(format!("{base}/{name}/streams/t")).json(&json!({"name": format!("T{cycle}x{k}")}));
                        (req, Wrote::Stream { user: u }, None)
                    } else {
                        let stream = STREAMS[(k as usize / writers) % STREAMS.len()];
                        let id = format!("chaos{cycle}k{k}");
                        let req = client
                            .post(format!("{base}/{name}/events"))
                            .json(&json!({"id": id, "streamIds": [stream], "type": "count/steps", "content": n}));
                        (req, Wrote::Event { user: u, stream }, Some(id))
                    };
                    match req.header("Authorization", &user.seeded.app).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            if let Some(id) = id {
                                if let Ok(mut a) = user.acked.lock() {
                                    a.push(id);
                                }
                            }
                            if let Ok(mut v) = wrote.lock() {
                                v.push(what);
                            }
                            if acks.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                kill.fire();
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }));
        }
        // Even cycles: a random moment under load, from 5 to 300 ms in.
        let wait = Duration::from_millis(5 + next(&mut seed) % 295);
        let t0 = Instant::now();
        while !stop.load(Ordering::SeqCst) && (kill_after != u64::MAX || t0.elapsed() < wait) && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        herald.kill9();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let wrote = std::mem::take(&mut *wrote.lock().map_err(|_| "poisoned")?);
        acked_total += wrote.iter().filter(|w| matches!(w, Wrote::Event { .. })).count() as u64;
        let mut expected: HashMap<String, BTreeSet<&str>> = HashMap::new();
        for w in &wrote {
            match w {
                Wrote::Event { user, stream } => {
                    let name = &users[*user].seeded.username;
                    expected.entry(format!("/plain/{name}")).or_default().insert("eventsChanged");
                    expected.entry(format!("/scoped/{name}")).or_default().insert(scope_key(stream));
                }
                Wrote::Stream { user } => {
                    expected.entry(format!("/plain/{}", users[*user].seeded.username)).or_default().insert("streamsChanged");
                }
            }
        }
        owed_total += expected.values().map(|s| s.len() as u64).sum::<u64>();
        r.hang.store(false, Ordering::SeqCst);
        let mark = r.got.lock().map_err(|_| "poisoned")?.len();
        let t = Instant::now();
        restart(&bin, &mut herald, &env)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let missing = loop {
            let mut got: HashMap<String, HashSet<String>> = HashMap::new();
            for (path, msgs) in r.got.lock().map_err(|_| "poisoned")?.iter().skip(mark) {
                got.entry(path.clone()).or_default().extend(msgs.iter().cloned());
            }
            let missing: u64 = expected
                .iter()
                .map(|(path, msgs)| msgs.iter().filter(|m| !got.get(path).is_some_and(|g| g.contains(**m))).count() as u64)
                .sum();
            if missing == 0 || Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        recoveries.push(t.elapsed().as_secs_f64() * 1000.0);
        notifications_lost += missing;
        pb.inc(1);
    }
    pb.finish_and_clear();
    // Every acknowledged event is still there.
    let mut writes_lost = 0u64;
    for u in users.iter() {
        let stored = harness::call(
            &c,
            reqwest::Method::GET,
            &format!("{}/{}/events?limit=10000000&state=all", herald.base, u.seeded.username),
            Some(&u.seeded.app),
            None,
        )
        .await?;
        let ids: HashSet<&str> =
            stored["events"].as_array().map(|a| a.iter().filter_map(|e| e["id"].as_str()).collect()).unwrap_or_default();
        let acked = u.acked.lock().map_err(|_| "poisoned")?;
        writes_lost += acked.iter().filter(|id| !ids.contains(id.as_str())).count() as u64;
    }
    recoveries.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    println!(
        "chaos: {cycles} kill -9 cycles, {acked_total} acknowledged event writes, {owed_total} owed notifications; restart to last owed POST p50 {:.0} ms",
        harness::percentile(&recoveries, 0.5)
    );
    Ok(vec![
        Figure {
            name: "acknowledged writes lost over the kill -9 cycles",
            value: writes_lost as f64,
            unit: "",
            target: Some((0.0, false)),
        },
        Figure {
            name: "notifications lost over the kill -9 cycles",
            value: notifications_lost as f64,
            unit: "",
            target: Some((0.0, false)),
        },
        Figure { name: "acknowledged event writes", value: acked_total as f64, unit: "", target: None },
        Figure { name: "restart to every owed notification, p50", value: harness::percentile(&recoveries, 0.5), unit: "ms", target: None },
    ])
}

/// The change log stays bounded under constant load: records are trimmed once the dispatcher
/// has passed them and the retention is over.
pub async fn log_size(args: &Args) -> BenchResult<Vec<Figure>> {
    let (duration, retention) = if args.tiny { (Duration::from_secs(3), 1u64) } else { (Duration::from_secs(40), 10u64) };
    let retention_s = retention.to_string();
    let herald = harness::start(&harness::herald_bin(&args.herald), None, &[("HERALD_CHANGE_LOG_RETENTION_SECS", retention_s.as_str())])?;
    let dir = herald._dir.as_ref().ok_or("no data dir")?.path().to_path_buf();
    let c = harness::client();
    let user = Arc::new(harness::seed_user(&c, &herald.base, "logsizeuser").await?);
    // Read the log's size through the store, beside the running server (SQLite allows it).
    let store = herald_storage::sqlite::SqliteStore::open(&dir, herald_storage::sqlite::Durability::Normal).map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..8 {
        let (done, user, base) = (done.clone(), user.clone(), herald.base.clone());
        tasks.push(tokio::spawn(async move {
            let c = harness::client();
            while start.elapsed() < duration {
                if harness::create_event(&c, &base, &user).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut max_records = 0u64;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        use herald_storage::Store;
        let stats = store.change_log_stats().await.map_err(|e| e.to_string())?;
        max_records = max_records.max(stats.records);
    }
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    // What the retention alone keeps, plus a little for the trimmer's second and the cursor.
    let bound = rate * (retention as f64 + 3.0);
    println!(
        "log-size: {:.0} creates/s for {} s with a retention of {retention} s: at most {max_records} records ({:.0} expected from the retention)",
        rate,
        duration.as_secs(),
        rate * retention as f64
    );
    Ok(vec![
        Figure {
            name: "change-log records, most seen under constant load",
            value: max_records as f64,
            unit: "",
            target: Some((bound, false)),
        },
        Figure { name: "events.create/s during the log-size run", value: rate, unit: "/s", target: None },
    ])
}
