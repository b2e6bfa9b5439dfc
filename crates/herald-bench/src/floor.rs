//! What this machine allows an `events.create` before any of Herald's HTTP or API code runs:
//! the disk's sync, and the SQLite store's own commits of a create (its writer thread and group
//! commit, called through the `Store` trait, without HTTP). The `create` scenario prints these
//! beside its HTTP figures, so that a missed target can be told apart from a slow server: a
//! durable create cannot be answered faster than its commit reaches the disk.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_storage::sqlite::{Durability, SqliteStore};
use herald_storage::Store;
use serde_json::json;

use crate::harness::{ops_per_second, percentile, BenchResult};

/// Median time, in µs, to write `pages` 4 KiB pages to a file in `dir` and `fdatasync` it: what
/// SQLite's WAL does at a commit (one frame per page changed, then one sync).
pub fn disk_sync_us(dir: &Path, pages: usize, rounds: usize) -> BenchResult<f64> {
    let path = dir.join("floor-sync.bin");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).map_err(|e| e.to_string())?;
    // Laid out first, as a WAL is: the timed writes overwrite, they do not grow the file.
    f.write_all(&vec![0u8; 256 * 4096]).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    let page = vec![7u8; 4096];
    let mut us = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let t = Instant::now();
        for p in 0..pages {
            f.write_all_at(&page, (((r * pages + p) % 256) * 4096) as u64).map_err(|e| e.to_string())?;
        }
        f.sync_data().map_err(|e| e.to_string())?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    us.sort_by(f64::total_cmp);
    Ok(percentile(&us, 0.5))
}

/// `events.create` per second written straight to a fresh SQLite store (durability `full`, as
/// `herald serve` by default) by `tasks` concurrent writers for `dur`: each an event in one
/// stream with its change-log record, as the API writes it.
pub async fn store_creates_per_second(dir: &Path, tasks: usize, dur: Duration) -> BenchResult<f64> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir, Durability::Full).map_err(|e| e.to_string())?);
    let user = herald_model::user::User {
        id: "flooruser".into(),
        username: "floor-user".into(),
        email: "floor@bench.local".into(),
        password_hash: "-".into(),
        language: "en".into(),
        created: 1.7e9,
    };
    store.create_user(&user).await.map_err(|e| e.to_string())?;
    ops_per_second(tasks, dur, |_| {
        let store = store.clone();
        move || {
            let store = store.clone();
            async move {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(1.7e9);
                let params = json!({"streamIds": ["s"], "type": "count/steps", "content": 100});
                let e = herald_model::event::parse_create(&params, herald_model::id::new_event_id(), now, "flooraccess")
                    .map_err(|e| e.message.clone())?;
                let item = ChangedItem::Event { id: e.id.clone(), stream_ids: e.stream_ids.clone(), event_type: e.event_type.clone() };
                let log = vec![Change::new("flooruser", "floor-user", ChangeKind::Events, ChangeType::Create, vec![item])];
                store.insert_event("flooruser", &e, log).await.map_err(|e| e.to_string())?;
                Ok(true)
            }
        }
    })
    .await
}
