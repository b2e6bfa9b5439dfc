//! `soak`: a long mixed load (issue 13) — event creations, reads, batch calls, socket.io clients
//! that come and go, webhooks whose receiver fails and recovers (and which are reactivated when
//! they gave up) — with the server's resident memory, open file descriptors and p99 latency
//! printed window by window. Resources must stay bounded: RSS growth after warm-up (the first
//! third of the run) is the figure with a target (under 5 %).
//!
//! Full: 30 minutes (`--soak-secs` to change), one-minute windows. `--tiny`: 6 seconds.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{self, percentile, BenchResult};
use crate::{Args, Figure};

/// A receiver whose answer the scenario flips between 200 and 503.
async fn flaky_receiver(status: Arc<AtomicU16>) -> BenchResult<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new().fallback(move |_body: axum::body::Bytes| {
        let status = status.clone();
        async move { axum::http::StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap_or(axum::http::StatusCode::OK) }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// One socket.io client on a user's namespace: connects, answers pings, counts notifications,
/// and reconnects every `churn` (connections come and go, as in production).
async fn socket_client(base: String, user: String, token: String, churn: Duration, stop: Arc<AtomicBool>, heard: Arc<AtomicU64>) {
    let host = base.trim_start_matches("http://").to_string();
    while !stop.load(Ordering::Relaxed) {
        let url = format!("ws://{host}/socket.io/?auth={token}&EIO=4&transport=websocket");
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let _ = ws.next().await; // Engine.IO open packet
        let _ = ws.send(Message::text(format!("40/{user},"))).await;
        let until = Instant::now() + churn;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    let _ = ws.send(Message::text("3")).await;
                }
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with("42") => {
                    heard.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(None) | Ok(Some(Err(_))) => break,
            }
        }
        let _ = ws.close(None).await;
    }
}

pub async fn soak(args: &Args) -> BenchResult<Vec<Figure>> {
    let total = Duration::from_secs(args.soak_secs.unwrap_or(if args.tiny { 6 } else { 30 * 60 }));
    let window = if args.tiny { Duration::from_secs(1) } else { Duration::from_secs(60) };
    let (users_n, workers, sockets, flip) =
        if args.tiny { (2, 2, 2, Duration::from_secs(2)) } else { (20, 8, 50, Duration::from_secs(30)) };
    let env = [("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "100"), ("HERALD_WEBHOOKS_MAX_RETRIES", "3")];
    let herald = harness::start(&harness::herald_bin(&args.herald), None, &env)?;
    let pid = herald.pid.ok_or("no pid")?;
    let base = herald.base.clone();
    let status = Arc::new(AtomicU16::new(200));
    let receiver = flaky_receiver(status.clone()).await?;
    let c = harness::client();
    let mut users = vec![];
    for i in 0..users_n {
        let u = harness::seed_user(&c, &base, &format!("soak{i}user")).await?;
        harness::webhook(&c, &base, &u, &format!("{receiver}/{}", u.username), Some(100)).await?;
        users.push(u);
    }
    let users = Arc::new(users);
    let stop = Arc::new(AtomicBool::new(false));
    let heard = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut tasks = vec![];
    for i in 0..sockets {
        let u = &users[i % users.len()];
        let churn = if args.tiny { Duration::from_secs(3) } else { Duration::from_secs(30 + (i as u64 % 30)) };
        tasks.push(tokio::spawn(socket_client(base.clone(), u.username.clone(), u.app.clone(), churn, stop.clone(), heard.clone())));
    }
    for w in 0..workers {
        let (users, stop, errors, requests, latencies, base) =
            (users.clone(), stop.clone(), errors.clone(), requests.clone(), latencies.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let c = harness::client();
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let u = &users[n % users.len()];
                let url = format!("{base}/{}", u.username);
                let t = Instant::now();
                let r = match n % 10 {
                    0..=4 => {
                        let body = json!({"streamIds": ["s"], "type": "count/steps", "content": n});
                        harness::call(&c, reqwest::Method::POST, &format!("{url}/events"), Some(&u.app), Some(body)).await
                    }
                    5..=7 => harness::call(&c, reqwest::Method::GET, &format!("{url}/events?limit=20"), Some(&u.app), None).await,
                    _ => {
                        let calls = json!([
                            {"method": "events.create", "params": {"streamIds": ["s"], "type": "note/txt", "content": "soak"}},
                            {"method": "events.get", "params": {"limit": 5}},
                            {"method": "streams.get", "params": {}},
                        ]);
                        harness::call(&c, reqwest::Method::POST, &format!("{url}/"), Some(&u.app), Some(calls)).await
                    }
                };
                latencies.lock().unwrap_or_else(|e| e.into_inner()).push(t.elapsed().as_secs_f64() * 1000.0);
                requests.fetch_add(1, Ordering::Relaxed);
                if r.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The receiver fails and recovers; webhooks that gave up meanwhile are reactivated.
    {
        let (users, stop, status, base) = (users.clone(), stop.clone(), status.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let c = harness::client();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(flip).await;
                let failing = status.load(Ordering::Relaxed) != 200;
                status.store(if failing { 200 } else { 503 }, Ordering::Relaxed);
                if failing {
                    for u in users.iter() {
                        let url = format!("{base}/{}/webhooks", u.username);
                        if let Ok(v) = harness::call(&c, reqwest::Method::GET, &url, Some(&u.app), None).await {
                            for w in v["webhooks"].as_array().into_iter().flatten().filter(|w| w["state"] == "inactive") {
                                let id = w["id"].as_str().unwrap_or_default();
                                let _ = harness::call(
                                    &c,
                                    reqwest::Method::PUT,
                                    &format!("{url}/{id}"),
                                    Some(&u.app),
                                    Some(json!({"state": "active"})),
                                )
                                .await;
                            }
                        }
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    // Warm-up: the first third. SQLite's page caches (8 MiB for the writer, 2 MiB per reader)
    // and the WAL index fill as the database grows, which takes minutes under this load; the
    // growth that counts is what comes after.
    let warm_up = total / 3;
    let mut rss_after_warm_up = None;
    let mut last_p99 = 0.0;
    let mut worst_p99: f64 = 0.0;
    let mut max_fds = 0;
    println!("soak: {:>7} {:>9} {:>6} {:>9} {:>9} {:>7}", "t (s)", "RSS MiB", "fds", "p99 ms", "requests", "errors");
    while start.elapsed() < total {
        tokio::time::sleep(window.min(total.saturating_sub(start.elapsed())).max(Duration::from_millis(10))).await;
        let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
        l.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let p99 = percentile(&l, 0.99);
        let rss = harness::rss_mib(pid);
        let fds = open_fds(pid);
        max_fds = max_fds.max(fds);
        last_p99 = p99;
        if start.elapsed() >= warm_up {
            worst_p99 = worst_p99.max(p99);
            rss_after_warm_up.get_or_insert(rss);
        }
        println!(
            "soak: {:>7.0} {:>9.1} {:>6} {:>9.1} {:>9} {:>7}",
            start.elapsed().as_secs_f64(),
            rss,
            fds,
            p99,
            requests.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let rss_end = harness::rss_mib(pid);
    let base_rss = rss_after_warm_up.unwrap_or(rss_end).max(1e-9);
    let growth = (rss_end - base_rss) / base_rss * 100.0;
    println!(
        "soak: RSS {base_rss:.1} MiB after warm-up, {rss_end:.1} MiB at the end ({growth:+.1} %); socket.io notifications heard: {}",
        heard.load(Ordering::Relaxed)
    );
    Ok(vec![
        Figure { name: "soak RSS growth after warm-up", value: growth, unit: "%", target: Some((5.0, false)) },
        Figure { name: "soak RSS at the end", value: rss_end, unit: "MiB", target: None },
        Figure { name: "soak open fds (max)", value: max_fds as f64, unit: "fds", target: None },
        Figure { name: "soak p99 (last window)", value: last_p99, unit: "ms", target: None },
        Figure { name: "soak p99 (worst window after warm-up)", value: worst_p99, unit: "ms", target: None },
        Figure { name: "soak requests", value: requests.load(Ordering::Relaxed) as f64, unit: "requests", target: None },
        Figure { name: "soak failed requests", value: errors.load(Ordering::Relaxed) as f64, unit: "requests", target: Some((0.0, false)) },
    ])
}
