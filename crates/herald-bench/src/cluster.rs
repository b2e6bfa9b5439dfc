//! The `cluster` scenario: Herald on PostgreSQL and NATS (the cluster issue). `events.create`
//! per second on one PostgreSQL-backed node and on two nodes with the clients spread over them,
//! and deliveries per second with three nodes sharing the webhooks. Each run gets a database of
//! its own on the server of `HERALD_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped at the end; NATS at `HERALD_BENCH_NATS_URL`
//! (default `nats://127.0.0.1:4222`).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{self, BenchResult, Herald};
use crate::{Args, Figure};

/// A database made for one run and dropped with it.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create() -> BenchResult<Database> {
        let admin = std::env::var("HERALD_BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() % 1_000_000_000).unwrap_or(0);
        let name = format!("herald_bench_{}_{n}", std::process::id());
        psql(&admin, &format!("CREATE DATABASE {name}"))?;
        let url = format!("{}/{name}", admin.rsplit_once('/').map(|(a, _)| a).unwrap_or(&admin));
        Ok(Database { admin, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn psql(url: &str, sql: &str) -> BenchResult<()> {
    let out = Command::new("psql").arg(url).arg("-qc").arg(sql).output().map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn nodes(args: &Args, db: &Database, n: usize) -> BenchResult<Vec<Herald>> {
    let nats = std::env::var("HERALD_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bin = harness::herald_bin(&args.herald);
    (0..n)
        .map(|i| {
            let id = format!("bench{i}");
            harness::start(
                &bin,
                None,
                &[
                    ("HERALD_DATABASE_URL", &db.url),
                    ("HERALD_BUS_URL", &nats),
                    ("HERALD_NODE_ID", &id),
                    ("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"),
                ],
            )
        })
        .collect()
}

/// `events.create` per second from `clients` keep-alive clients spread over `bases`.
async fn creates(bases: &[String], clients: usize, dur: Duration) -> BenchResult<f64> {
    let c = harness::client();
    let user = Arc::new(harness::seed_user(&c, &bases[0], &format!("pgcreate{}", std::process::id() as u64 * 100 + clients as u64)).await?);
    harness::creates_per_second(bases, user, clients, dur).await
}

pub async fn cluster(args: &Args) -> BenchResult<Vec<Figure>> {
    let dur = if args.tiny { Duration::from_millis(300) } else { Duration::from_secs(5) };
    let mut figs = vec![];
    {
        let db = Database::create()?;
        let one = nodes(args, &db, 1)?;
        let bases = vec![one[0].base.clone()];
        figs.push(Figure {
            name: "PostgreSQL, 1 node: events.create/s, 8 clients",
            value: creates(&bases, 8, dur).await?,
            unit: "/s",
            target: Some((4000.0, true)),
        });
        figs.push(Figure {
            name: "PostgreSQL, 1 node: events.create/s, 1 client",
            value: creates(&bases, 1, dur).await?,
            unit: "/s",
            target: None,
        });
    }
    if args.cluster_one_node {
        return Ok(figs);
    }
    {
        let db = Database::create()?;
        let two = nodes(args, &db, 2)?;
        let bases: Vec<String> = two.iter().map(|h| h.base.clone()).collect();
        figs.push(Figure {
            name: "PostgreSQL, 2 nodes: events.create/s, 8 clients over both",
            value: creates(&bases, 8, dur).await?,
            unit: "/s",
            target: None,
        });
    }
    // Deliveries: one change for each of `users` webhooks, written through the three nodes at
    // once; counted from the first write to the last POST.
    let db = Database::create()?;
    let three = nodes(args, &db, 3)?;
    let bases: Vec<String> = three.iter().map(|h| h.base.clone()).collect();
    // Let the three share the partitions out before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let users = if args.tiny { 12 } else { 1500 };
    let mut r = harness::receiver().await?;
    let c = harness::client();
    let mut seeded = vec![];
    for i in 0..users {
        let base = &bases[i % 3];
        let u = harness::seed_user(&c, base, &format!("pgdeliver{i}")).await?;
        harness::webhook(&c, base, &u, &format!("{}/d/{i}", r.base), Some(10)).await?;
        seeded.push(u);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while r.rx.try_recv().is_ok() {}
    let start = Instant::now();
    let seeded = Arc::new(seeded);
    let mut tasks = vec![];
    for k in 0..8 {
        let (seeded, bases) = (seeded.clone(), bases.clone());
        tasks.push(tokio::spawn(async move {
            let c = harness::client();
            for (i, u) in seeded.iter().enumerate().skip(k).step_by(8) {
                let _ = harness::create_event(&c, &bases[i % 3], u).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut seen = std::collections::HashSet::new();
    let mut last = start;
    let deadline = start + Duration::from_secs(60);
    while seen.len() < users {
        let left =
            deadline.checked_duration_since(Instant::now()).ok_or_else(|| format!("{} of {users} webhooks delivered", seen.len()))?;
        match tokio::time::timeout(left, r.rx.recv()).await {
            Ok(Some((path, at))) if path.starts_with("/d/") => {
                if seen.insert(path) {
                    last = at;
                }
            }
            Ok(Some(_)) => {}
            _ => return Err(format!("{} of {users} webhooks delivered", seen.len())),
        }
    }
    figs.push(Figure {
        name: "PostgreSQL, 3 nodes: webhook deliveries/s",
        value: users as f64 / last.duration_since(start).as_secs_f64(),
        unit: "/s",
        target: None,
    });
    Ok(figs)
}
