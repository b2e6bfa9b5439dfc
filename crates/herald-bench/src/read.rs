//! The `read` scenario (issue 14): one user holding a million events over 100 streams, built
//! once straight into a data directory through the `Store` trait (kept between runs with
//! `--keep-data DIR`), then `events.get` measured over HTTP for each shape of the issue.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_model::access::{Access, AccessType, Permission};
use herald_model::event::Event;
use herald_model::query::EventsQuery;
use herald_model::stream::{Stream, StreamTree};
use herald_model::user::User;
use herald_storage::sqlite::{Durability, SqliteStore};
use herald_storage::Store;
use serde_json::{json, Value};

use crate::harness::{self, BenchResult};
use crate::{Args, Figure};

pub const USER_ID: &str = "readuser0000000000000001";
pub const USERNAME: &str = "reader";
pub const PERSONAL: &str = "read-personal-token";
pub const APP: &str = "read-app-token-star";
pub const STREAMS: usize = 100;
/// Seconds between two events: event `i` is at `T0 + i`.
pub const T0: f64 = 1.6e9;

pub fn stream_id(k: usize) -> String {
    format!("s{k:03}")
}

/// Event `i`: in stream `i % 100`; every 7th also in `(i / 7) % 100`; type `note/txt` for 1 in
/// 97, else `count/steps`; one in 1,000 lasts an hour.
pub fn event(i: usize) -> Event {
    let mut streams = vec![stream_id(i % STREAMS)];
    let second = stream_id((i / 7) % STREAMS);
    if i.is_multiple_of(7) && second != streams[0] {
        streams.push(second);
    }
    let time = T0 + i as f64;
    Event {
        id: format!("ev{i:08}"),
        stream_ids: streams,
        time,
        duration: Some(if i.is_multiple_of(1000) { 3600.0 } else { 0.0 }),
        event_type: if i.is_multiple_of(97) { "note/txt".into() } else { "count/steps".into() },
        content: Some(json!(i % 1000)),
        description: None,
        client_data: None,
        trashed: false,
        created: time,
        created_by: "seed".into(),
        modified: time,
        modified_by: "seed".into(),
        attachments: vec![],
    }
}

fn access(id: &str, token: &str, t: AccessType, perms: Vec<Permission>) -> Access {
    Access {
        id: id.into(),
        token: token.into(),
        access_type: t,
        name: id.into(),
        device_name: None,
        permissions: perms,
        expires: None,
        client_data: None,
        created: T0,
        created_by: "seed".into(),
        modified: T0,
        modified_by: "seed".into(),
        deleted: None,
    }
}

/// Build the user in `dir` (which must not hold one yet): user, a personal token, an app token
/// reading `*`, 100 streams, `n` events in batches of 10,000.
pub async fn seed(dir: &Path, n: usize) -> BenchResult<()> {
    let store = SqliteStore::open(dir, Durability::Normal).map_err(|e| e.to_string())?;
    let user = User {
        id: USER_ID.into(),
        username: USERNAME.into(),
        email: "reader@bench.local".into(),
        password_hash: "-".into(),
        language: "en".into(),
        created: T0,
    };
    store.create_user(&user).await.map_err(|e| e.to_string())?;
    store.insert_access(USER_ID, &access("personal", PERSONAL, AccessType::Personal, vec![]), vec![]).await.map_err(|e| e.to_string())?;
    let star = Permission::from_json(&json!({"streamId": "*", "level": "read"})).map_err(|e| e.message)?;
    store.insert_access(USER_ID, &access("app", APP, AccessType::App, vec![star]), vec![]).await.map_err(|e| e.to_string())?;
    for k in 0..STREAMS {
        let s = Stream {
            id: stream_id(k),
            parent_id: None,
            name: format!("Stream {k}"),
            client_data: None,
            trashed: false,
            created: T0,
            created_by: "seed".into(),
            modified: T0,
            modified_by: "seed".into(),
        };
        store.insert_stream(USER_ID, &s, vec![]).await.map_err(|e| e.to_string())?;
    }
    let pb = harness::progress(n as u64, "seeding events");
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        store.insert_events(USER_ID, (i..end).map(event).collect(), vec![]).await.map_err(|e| e.to_string())?;
        pb.inc((end - i) as u64);
        i = end;
    }
    pb.finish_and_clear();
    Ok(())
}

/// The queries measured, by figure name: (name, query string, token, target in ms).
fn queries(n: usize) -> Vec<(&'static str, String, &'static str)> {
    let mid = T0 + (n / 2) as f64;
    let s = |k: usize| stream_id(k % STREAMS);
    let enc = |v: Value| form_urlencoded::byte_serialize(v.to_string().as_bytes()).collect::<String>();
    vec![
        ("latest 20 in a 1 % stream", format!("streams={}&limit=20", s(42)), PERSONAL),
        ("types=note/txt, limit 20", "types=note/txt&limit=20".to_string(), PERSONAL),
        ("1 h time range in a 1 % stream", format!("streams={}&fromTime={}&toTime={}", s(42), mid, mid + 3600.0), PERSONAL),
        ("streams any [1 stream] not [1 stream]", format!("streams={}&limit=20", enc(json!([{"any": [s(42)], "not": [s(6)]}]))), PERSONAL),
        ("streams any [3 streams]", format!("streams={}&limit=20", enc(json!([{"any": [s(42), s(43), s(44)]}]))), PERSONAL),
        // Events of s014 that are also in s002: 0.14 % of all (see `event`).
        ("streams all [2 streams]", format!("streams={}&limit=20", enc(json!([{"all": [s(14), s(2)]}]))), PERSONAL),
        ("streams all [2 streams], no event in both", format!("streams={}&limit=20", enc(json!([{"all": [s(1), s(2)]}]))), PERSONAL),
        ("limit 20, personal token", "limit=20".to_string(), PERSONAL),
        ("limit 20, app token *", "limit=20".to_string(), APP),
    ]
}

async fn get(c: &reqwest::Client, base: &str, q: &str, token: &str) -> BenchResult<Value> {
    harness::call(c, reqwest::Method::GET, &format!("{base}/{USERNAME}/events?{q}"), Some(token), None).await
}

/// Median latency in ms of `rounds` sequential calls.
async fn latency(c: &reqwest::Client, base: &str, q: &str, token: &str, rounds: usize) -> BenchResult<(f64, usize)> {
    let mut ms = Vec::with_capacity(rounds);
    let mut count = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let v = get(c, base, q, token).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        count = v["events"].as_array().map(Vec::len).unwrap_or(0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], count))
}

/// Calls per second from `conns` keep-alive clients during `dur`.
async fn throughput(base: &str, q: &str, token: &'static str, conns: usize, dur: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..conns {
        let (done, base, q) = (done.clone(), base.to_string(), q.to_string());
        tasks.push(tokio::spawn(async move {
            let c = harness::client();
            while start.elapsed() < dur {
                if get(&c, &base, &q, token).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Print SQLite's plan of each measured query (the figures of docs/performance.md).
async fn print_plans(dir: &Path, n: usize) -> BenchResult<()> {
    let store = SqliteStore::open(dir, Durability::Normal).map_err(|e| e.to_string())?;
    let streams = store.streams(USER_ID).await.map_err(|e| e.to_string())?;
    let tree = StreamTree::new(&streams);
    let mut cases = queries(n);
    cases.push(("modifiedSince sync", format!("modifiedSince={}", T0 + n as f64 + 1.0), PERSONAL));
    for (name, q, token) in cases {
        let a = store.access_by_token(USER_ID, token).await.map_err(|e| e.to_string())?.ok_or("no access")?;
        let params = Value::Object(query_map(&q));
        let mut parsed = EventsQuery::parse(&params).map_err(|e| e.message)?;
        parsed.apply_defaults(T0 + n as f64 + 10.0);
        let f = parsed.resolve(&a, &tree).map_err(|e| e.message)?;
        let plan = store.explain_events(USER_ID, &f).await.map_err(|e| e.to_string())?;
        println!("    plan of {name}: {}", plan.join(" / "));
    }
    Ok(())
}

/// A query string as `events.get` params (repeated keys are not used here).
fn query_map(q: &str) -> serde_json::Map<String, Value> {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect()
}

pub async fn read(args: &Args) -> BenchResult<Vec<Figure>> {
    let n = if args.tiny { 20_000 } else { args.events };
    let (dir, _tmp): (PathBuf, Option<tempfile::TempDir>) = match &args.keep_data {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::tempdir().map_err(|e| e.to_string())?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let marker = dir.join(format!("read-seed-{n}"));
    if !marker.exists() {
        if dir.join("herald.db").exists() {
            return Err(format!("{} holds another data set; give an empty directory", dir.display()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let t = Instant::now();
        seed(&dir, n).await?;
        std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
        println!("    seeded {n} events in {:.1} s", t.elapsed().as_secs_f64());
    }
    print_plans(&dir, n).await?;
    let h = harness::start_in(&harness::herald_bin(&args.herald), &dir, &[])?;
    let base = h.base.clone();
    let c = harness::client();
    let rounds = if args.tiny { 5 } else { 200 };
    let mut figs = vec![];
    for (name, q, token) in queries(n) {
        let (ms, count) = latency(&c, &base, &q, token, rounds).await?;
        println!("    {name}: {count} events");
        figs.push(Figure { name, value: ms, unit: "ms", target: Some((2.0, false)) });
    }
    // A sync: 10 events changed after the client's last serverTime.
    let since = get(&c, &base, "limit=1", PERSONAL).await?["meta"]["serverTime"].as_f64().ok_or("no serverTime")?;
    for k in 0..10 {
        let id = event(k * 1000 + 5).id;
        harness::call(&c, reqwest::Method::PUT, &format!("{base}/{USERNAME}/events/{id}"), Some(PERSONAL), Some(json!({"content": k})))
            .await?;
    }
    let (ms, count) = latency(&c, &base, &format!("modifiedSince={since}"), PERSONAL, rounds).await?;
    if count != 10 {
        return Err(format!("modifiedSince answered {count} events, not 10"));
    }
    figs.push(Figure { name: "modifiedSince sync, 10 changes", value: ms, unit: "ms", target: Some((2.0, false)) });
    let dur = if args.tiny { Duration::from_millis(300) } else { Duration::from_secs(5) };
    figs.push(Figure {
        name: "events.get?limit=20/s, 8 clients, personal",
        value: throughput(&base, "limit=20", PERSONAL, 8, dur).await,
        unit: "/s",
        target: Some((5000.0, true)),
    });
    figs.push(Figure {
        name: "events.get?limit=20/s, 8 clients, app *",
        value: throughput(&base, "limit=20", APP, 8, dur).await,
        unit: "/s",
        target: Some((5000.0, true)),
    });
    // Everything in one call, counted as it streams in; RSS sampled meanwhile.
    let pid = h.pid.unwrap_or(0);
    let rss_before = harness::rss_mib(pid);
    let peak = Arc::new(std::sync::Mutex::new(rss_before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let r = harness::rss_mib(pid);
                if let Ok(mut p) = peak.lock() {
                    *p = p.max(r);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t = Instant::now();
    let url = format!("{base}/{USERNAME}/events?fromTime=0&toTime={}&state=all", T0 + n as f64 + 1e6);
    let mut resp = c.get(&url).header("Authorization", PERSONAL).send().await.map_err(|e| e.to_string())?;
    let mut bytes = 0usize;
    let mut tail = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        bytes += chunk.len();
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let tail = String::from_utf8_lossy(&tail);
    if !tail.contains("\"serverTime\"") {
        return Err(format!("the full read did not end with meta: …{tail}"));
    }
    let peak = peak.lock().map(|p| *p).unwrap_or(0.0);
    println!(
        "    full read: {n} events, {:.0} MB in {secs:.2} s; server RSS {rss_before:.0} MiB before, {peak:.0} MiB peak",
        bytes as f64 / 1e6
    );
    figs.push(Figure { name: "full read, events/s", value: n as f64 / secs, unit: "/s", target: Some((200_000.0, true)) });
    figs.push(Figure { name: "full read, server RSS growth", value: peak - rss_before, unit: "MiB", target: None });
    Ok(figs)
}
