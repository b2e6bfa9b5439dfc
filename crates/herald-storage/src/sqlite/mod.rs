//! The embedded store: one SQLite file in the data directory (see `engine.rs` for how writes
//! are grouped and made durable, `schema.sql` for the tables).

mod backup;
mod engine;
mod files;

use std::path::Path;

use async_trait::async_trait;
use herald_model::access::{Access, AccessType, Permission};
use herald_model::access_request::{AccessRequest, Status as RequestStatus};
use herald_model::event::Event;
use herald_model::query::{EventFilter, StateFilter, TypeFilter};
use herald_model::stream::Stream;
use herald_model::user::User;
use herald_model::webhook::{Run, Webhook, WebhookState};
use herald_model::Timestamp;
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde_json::Value;

pub use backup::{backup, restore};
pub use engine::Durability;
use engine::{map_err, Engine};

use crate::{
    dedup, driving_stream, required_streams, Changes, DeliveryRecord, EventBatch, FileChunks, FileWriter, LogCursor, LogStats, StorageUsed,
    Store, StoreError, StoreResult, StreamDeletion,
};
use herald_model::change::{Change, ChangeKind, ChangeType};

pub struct SqliteStore {
    engine: Engine,
    files: files::Files,
}

/// SQLite's page size for Herald's databases (its default, never changed by the schema).
const PAGE_SIZE: usize = 4096;
/// The part of the memory budget kept for what SQLite allocates besides cached pages (prepared
/// statements, schemas, sorts), as a fraction: one quarter.
const NON_PAGE_SHARE: u64 = 4;
/// Size of one slot of the page-cache slab, once it is set up (0 before).
static SLOT_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bound what SQLite holds in memory across every connection of the process, and keep it in
/// one place. Three quarters of `bytes` become SQLite's page-cache slab
/// (`SQLITE_CONFIG_PAGECACHE`): one buffer, reserved once, from which every connection takes its
/// cached pages; when it runs short, each cache recycles its own oldest pages instead of
/// growing. The rest bounds SQLite's other allocations (its soft heap limit).
///
/// Why a slab rather than a limit alone: with page buffers coming from `malloc`, the caches
/// churned pages through the C library's per-thread arenas (reader connections move between
/// blocking threads), and a node's memory kept creeping up under steady load long after the
/// caches had reached their bound (the `soak` benchmark). Pages in one fixed buffer cannot
/// fragment anything, and the buffer's memory is counted from the start.
///
/// Process-wide and only possible before SQLite's first connection opens, so called once at
/// start, on nodes whose store is SQLite. `bytes == 0` keeps SQLite's defaults.
pub fn set_memory_budget(bytes: u64) -> StoreResult<()> {
    use rusqlite::ffi;
    use std::os::raw::{c_int, c_void};
    if bytes == 0 {
        return Ok(());
    }
    let mut header: c_int = 0;
    // SAFETY: SQLITE_CONFIG_PCACHE_HDRSZ takes exactly one argument, an `int*`, and writes one
    // int through it; `header` is a live, aligned c_int. This option is allowed at any time.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE_HDRSZ, &mut header as *mut c_int) };
    if rc != ffi::SQLITE_OK || header < 0 {
        return Err(StoreError::Failure(format!("SQLite refused SQLITE_CONFIG_PCACHE_HDRSZ ({rc})")));
    }
    // Slots are 8-byte aligned (SQLite rounds their size down to a multiple of 8).
    let slot = (PAGE_SIZE + header as usize + 7) & !7;
    let pages = bytes - bytes / NON_PAGE_SHARE;
    let slots = usize::try_from(pages / slot as u64).unwrap_or(usize::MAX).min(c_int::MAX as usize / 2);
    // A `u64` buffer is 8-byte aligned, as SQLite requires. Zeroed memory comes from the OS
    // untouched; SQLite writes its free list through every slot when it initialises, so the
    // whole slab is resident from the start and the process's memory does not grow later.
    let slab: &'static mut [u64] = Box::leak(vec![0u64; slots * slot / 8].into_boxed_slice());
    // SAFETY: SQLITE_CONFIG_PAGECACHE takes (void*, int, int): a pointer to 8-byte aligned
    // memory of at least sz * N bytes, sz and N; the arguments are passed as exactly those C
    // types. The buffer is leaked, so it stays valid and unaliased by Rust for the rest of the
    // process, which is as long as SQLite may use it. If SQLite is already initialised the
    // call changes nothing and returns SQLITE_MISUSE, handled below.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PAGECACHE, slab.as_mut_ptr() as *mut c_void, slot as c_int, slots as c_int) };
    if rc != ffi::SQLITE_OK {
        return Err(StoreError::Failure(format!(
            "SQLite's memory budget must be set before its first connection opens (sqlite3_config: {rc})"
        )));
    }
    SLOT_BYTES.store(slot, std::sync::atomic::Ordering::Relaxed);
    let rest = i64::try_from(bytes / NON_PAGE_SHARE).unwrap_or(i64::MAX);
    // SAFETY: takes one integer and only updates SQLite's limit under its own mutex; callable
    // from any thread at any time.
    unsafe { ffi::sqlite3_soft_heap_limit64(rest) };
    Ok(())
}

/// Bytes SQLite holds now across every connection of the process: what it allocated
/// (statements, schemas, pages beyond the slab) plus the slab's slots in use. Exported as a
/// gauge so operators see how much of the budget is used.
pub fn memory_used() -> u64 {
    use rusqlite::ffi;
    // SAFETY: `sqlite3_memory_used` takes no argument and reads SQLite's allocation counter
    // under its own mutex; callable from any thread at any time.
    let allocated = u64::try_from(unsafe { ffi::sqlite3_memory_used() }).unwrap_or(0);
    let (mut slots_used, mut high): (i64, i64) = (0, 0);
    // SAFETY: writes one i64 through each of the two pointers, both live and aligned; the
    // counter is read under SQLite's mutex. Callable at any time.
    let rc = unsafe { ffi::sqlite3_status64(ffi::SQLITE_STATUS_PAGECACHE_USED, &mut slots_used, &mut high, 0) };
    let slab = if rc == ffi::SQLITE_OK { u64::try_from(slots_used).unwrap_or(0) } else { 0 };
    allocated + slab * SLOT_BYTES.load(std::sync::atomic::Ordering::Relaxed) as u64
}

impl SqliteStore {
    /// Open (creating if needed) `herald.db` in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Failure(format!("cannot create {}: {e}", dir.display())))?;
        let files = files::Files { root: dir.join("attachments"), sync: durability == Durability::Full };
        Ok(SqliteStore { engine: Engine::open(&dir.join("herald.db"), durability)?, files })
    }
}

impl SqliteStore {
    /// SQLite's plan (`EXPLAIN QUERY PLAN`) for the events query of `filter`, one line per step:
    /// for docs/performance.md and the `read` benchmark.
    pub async fn explain_events(&self, user_id: &str, filter: &EventFilter) -> StoreResult<Vec<String>> {
        let (u, f) = (user_id.to_string(), filter.clone());
        self.engine
            .read(move |c| {
                let (sql, args) = events_sql(&u, &f, time_floor(c, &u, &f)?);
                all(c, &format!("EXPLAIN QUERY PLAN {sql}"), params_from_iter(args), |r| r.get::<_, String>(3))
            })
            .await
    }
}

fn json_text(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

fn parse_json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

const ACCESS_COLS: &str =
    "id, token, type, name, device_name, permissions, expires, client_data, created, created_by, modified, modified_by, deleted";

fn access_from_row(r: &Row) -> rusqlite::Result<Access> {
    let perms: String = r.get(5)?;
    let perms: Vec<Value> = serde_json::from_str(&perms).unwrap_or_default();
    Ok(Access {
        id: r.get(0)?,
        token: r.get(1)?,
        access_type: AccessType::parse(&r.get::<_, String>(2)?).unwrap_or(AccessType::Shared),
        name: r.get(3)?,
        device_name: r.get(4)?,
        permissions: perms.iter().filter_map(|p| Permission::from_json(p).ok()).collect(),
        expires: r.get(6)?,
        client_data: parse_json(r.get(7)?),
        created: r.get(8)?,
        created_by: r.get(9)?,
        modified: r.get(10)?,
        modified_by: r.get(11)?,
        deleted: r.get(12)?,
    })
}

fn user_from_row(r: &Row) -> rusqlite::Result<User> {
    Ok(User { id: r.get(0)?, username: r.get(1)?, email: r.get(2)?, password_hash: r.get(3)?, language: r.get(4)?, created: r.get(5)? })
}

const STREAM_COLS: &str = "id, parent_id, name, client_data, trashed, created, created_by, modified, modified_by";

fn stream_from_row(r: &Row) -> rusqlite::Result<Stream> {
    Ok(Stream {
        id: r.get(0)?,
        parent_id: r.get(1)?,
        name: r.get(2)?,
        client_data: parse_json(r.get(3)?),
        trashed: r.get::<_, i64>(4)? != 0,
        created: r.get(5)?,
        created_by: r.get(6)?,
        modified: r.get(7)?,
        modified_by: r.get(8)?,
    })
}

const EVENT_COLS: &str =
    "e.id, e.stream_ids, e.time, e.duration, e.type, e.content, e.description, e.client_data, e.trashed, e.created, e.created_by, e.modified, e.modified_by, e.attachments";

fn event_from_row(r: &Row) -> rusqlite::Result<Event> {
    let ids: String = r.get(1)?;
    Ok(Event {
        id: r.get(0)?,
        stream_ids: serde_json::from_str(&ids).unwrap_or_default(),
        time: r.get(2)?,
        duration: r.get(3)?,
        event_type: r.get(4)?,
        content: parse_json(r.get(5)?),
        description: r.get(6)?,
        client_data: parse_json(r.get(7)?),
        trashed: r.get::<_, i64>(8)? != 0,
        created: r.get(9)?,
        created_by: r.get(10)?,
        modified: r.get(11)?,
        modified_by: r.get(12)?,
        attachments: crate::attachments_from_text(r.get(13)?),
    })
}

const WEBHOOK_COLS: &str = "id, access_id, url, state, run_count, fail_count, last_run_status, last_run_time, runs, current_retries, \
     max_retries, min_interval_ms, scopes, secret, pending, created, created_by, modified, modified_by";

fn webhook_from_row(r: &Row) -> rusqlite::Result<Webhook> {
    webhook_from_row_offset(r, 0)
}

fn webhook_params(user_id: &str, w: &Webhook) -> Vec<Sql> {
    let runs: Vec<(u16, f64)> = w.runs.iter().map(|r| (r.status, r.timestamp)).collect();
    vec![
        Sql::Text(user_id.into()),
        Sql::Text(w.id.clone()),
        Sql::Text(w.access_id.clone()),
        Sql::Text(w.url.clone()),
        Sql::Text(w.state.as_str().into()),
        Sql::Integer(w.run_count as i64),
        Sql::Integer(w.fail_count as i64),
        Sql::Integer(w.last_run.status as i64),
        Sql::Real(w.last_run.timestamp),
        Sql::Text(serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into())),
        Sql::Integer(w.current_retries as i64),
        Sql::Integer(w.max_retries as i64),
        Sql::Integer(w.min_interval_ms as i64),
        json_text(&w.scopes).map(Sql::Text).unwrap_or(Sql::Null),
        Sql::Text(w.secret.clone()),
        Sql::Text(serde_json::to_string(&w.pending).unwrap_or_else(|_| "[]".into())),
        Sql::Real(w.created),
        Sql::Text(w.created_by.clone()),
        Sql::Real(w.modified),
        Sql::Text(w.modified_by.clone()),
    ]
}

fn write_event_streams(c: &Connection, user_id: &str, e: &Event) -> StoreResult<()> {
    c.prepare_cached("DELETE FROM event_streams WHERE user_id = ?1 AND event_id = ?2")
        .and_then(|mut s| s.execute(params![user_id, e.id]))
        .map_err(map_err)?;
    insert_event_streams(c, user_id, e)
}

fn insert_event_streams(c: &Connection, user_id: &str, e: &Event) -> StoreResult<()> {
    let mut ins =
        c.prepare_cached("INSERT INTO event_streams (user_id, event_id, stream_id, time) VALUES (?1, ?2, ?3, ?4)").map_err(map_err)?;
    for s in dedup(&e.stream_ids) {
        ins.execute(params![user_id, e.id, s, e.time]).map_err(map_err)?;
    }
    Ok(())
}

fn event_values(user_id: &str, e: &Event) -> Vec<Sql> {
    let opt_text = |v: Option<String>| v.map(Sql::Text).unwrap_or(Sql::Null);
    let opt_real = |v: Option<f64>| v.map(Sql::Real).unwrap_or(Sql::Null);
    vec![
        Sql::Text(user_id.into()),
        Sql::Text(e.id.clone()),
        Sql::Text(serde_json::to_string(&e.stream_ids).unwrap_or_else(|_| "[]".into())),
        Sql::Real(e.time),
        opt_real(e.duration),
        opt_real(e.end_time()),
        Sql::Text(e.event_type.clone()),
        opt_text(json_text(&e.content)),
        opt_text(e.description.clone()),
        opt_text(json_text(&e.client_data)),
        Sql::Integer(e.trashed as i64),
        Sql::Real(e.created),
        Sql::Text(e.created_by.clone()),
        Sql::Real(e.modified),
        Sql::Text(e.modified_by.clone()),
        opt_text(crate::attachments_text(&e.attachments)),
    ]
}

const EVENT_UPSERT: &str = "INSERT INTO events (user_id, id, stream_ids, time, duration, end_time, type, content, description, \
     client_data, trashed, created, created_by, modified, modified_by, attachments, deleted) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, NULL)";

/// [`EVENT_UPSERT`] that inserts nothing when a live event has the id (a tombstone with it is
/// deleted first): no row changed means a conflict.
const EVENT_INSERT_NEW: &str = "INSERT INTO events (user_id, id, stream_ids, time, duration, end_time, type, content, description, \
     client_data, trashed, created, created_by, modified, modified_by, attachments, deleted) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, NULL) ON CONFLICT (user_id, id) DO NOTHING";

/// A deleted event's tombstone gives way to a new event with its id.
const EVENT_TOMBSTONE_DELETE: &str = "DELETE FROM events WHERE user_id = ?1 AND id = ?2 AND deleted IS NOT NULL";

fn insert_event_in(
    c: &Connection,
    user_id: &str,
    e: &Event,
    tomb: &mut rusqlite::CachedStatement,
    ins: &mut rusqlite::CachedStatement,
) -> StoreResult<()> {
    let had_tombstone = tomb.execute(params![user_id, e.id]).map_err(map_err)? > 0;
    ins.execute(params_from_iter(event_values(user_id, e))).map_err(map_err)?;
    if had_tombstone {
        // The tombstone kept its streams (for `eventDeletions`): replace them.
        write_event_streams(c, user_id, e)
    } else {
        insert_event_streams(c, user_id, e)
    }
}

fn update_event_in(c: &Connection, user_id: &str, e: &Event) -> StoreResult<()> {
    let n = c
        .prepare_cached(
            "UPDATE events SET stream_ids = ?3, time = ?4, duration = ?5, end_time = ?6, type = ?7, content = ?8, description = ?9, \
             client_data = ?10, trashed = ?11, created = ?12, created_by = ?13, modified = ?14, modified_by = ?15, \
             attachments = ?16 WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL",
        )
        .and_then(|mut s| s.execute(params_from_iter(event_values(user_id, e))))
        .map_err(map_err)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    write_event_streams(c, user_id, e)
}

fn delete_event_in(c: &Connection, user_id: &str, id: &str, at: Timestamp) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE events SET deleted = ?3, modified = ?3, content = NULL, description = NULL, client_data = NULL, \
         attachments = NULL WHERE user_id = ?1 AND id = ?2",
    )
    .and_then(|mut s| s.execute(params![user_id, id, at]))
    .map_err(map_err)?;
    // The tombstone keeps its streams and type: `eventDeletions` are filtered like events.
    Ok(())
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Append `log` to the change log inside the write's transaction and give each change its
/// `seq`: the change commits if and only if its data does.
fn append_log(c: &Connection, mut log: Changes) -> StoreResult<Changes> {
    append_log_in_place(c, &mut log)?;
    Ok(log)
}

/// [`append_log`] on changes the caller keeps.
fn append_log_in_place(c: &Connection, log: &mut [herald_model::change::Change]) -> StoreResult<()> {
    if log.is_empty() {
        return Ok(());
    }
    let mut s = c
        .prepare_cached("INSERT INTO change_log (user_id, username, kind, change_type, items, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .map_err(map_err)?;
    let at = now_secs();
    for ch in log {
        let items = serde_json::to_string(&ch.items).map_err(|e| StoreError::Failure(e.to_string()))?;
        s.execute(params![ch.user_id, ch.username, ch.kind.as_str(), ch.change_type.as_str(), items, at]).map_err(map_err)?;
        ch.seq = c.last_insert_rowid() as u64;
    }
    Ok(())
}

fn change_from_row(r: &Row) -> rusqlite::Result<Change> {
    let bad = |i: usize, what: &str| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.to_string().into());
    let kind: String = r.get(3)?;
    let change_type: String = r.get(4)?;
    let items: String = r.get(5)?;
    Ok(Change {
        seq: r.get::<_, i64>(0)? as u64,
        user_id: r.get(1)?,
        username: r.get(2)?,
        kind: ChangeKind::parse_any(&kind).ok_or_else(|| bad(3, "change kind"))?,
        change_type: ChangeType::parse(&change_type).ok_or_else(|| bad(4, "change type"))?,
        items: serde_json::from_str(&items).map_err(|_| bad(5, "change items"))?,
    })
}

/// Every row of a cached statement, mapped.
fn all<T, P: rusqlite::Params>(c: &Connection, sql: &str, p: P, f: impl FnMut(&Row) -> rusqlite::Result<T>) -> StoreResult<Vec<T>> {
    let mut s = c.prepare_cached(sql).map_err(map_err)?;
    let rows = s.query_map(p, f).map_err(map_err)?;
    rows.collect::<Result<_, _>>().map_err(map_err)
}

/// The first row of a cached statement, mapped, if any.
fn one<T, P: rusqlite::Params>(c: &Connection, sql: &str, p: P, f: impl FnOnce(&Row) -> rusqlite::Result<T>) -> StoreResult<Option<T>> {
    c.prepare_cached(sql).and_then(|mut s| s.query_row(p, f).optional()).map_err(map_err)
}

/// A set of ids or strings as ONE bound parameter (a JSON array), read in SQL with
/// `json_each(?)`: a query has the same shape and the same number of variables whatever the
/// size of its input, so no input reaches SQLite's limits (variables, expression depth).
fn json_set<'a>(items: impl IntoIterator<Item = &'a String>) -> Sql {
    let v: Vec<&String> = items.into_iter().collect();
    Sql::Text(serde_json::to_string(&v).unwrap_or_else(|_| "[]".into()))
}

/// Translate an [`EventFilter`] into SQL. `time_floor`: events before it cannot overlap the
/// filter's time range (see [`time_floor`]). Plain SQL apart from `json_each`, which PostgreSQL
/// spells `jsonb_array_elements_text`.
fn events_sql(user_id: &str, f: &EventFilter, time_floor: Option<f64>) -> (String, Vec<Sql>) {
    let mut args: Vec<Sql> = vec![Sql::Text(user_id.into())];
    let dir = if f.sort_ascending { "ASC" } else { "DESC" };
    let required = required_streams(f);
    let merged = merged_streams(f);
    let (mut sql, order) = match driving_stream(f) {
        Some(_) if required.len() >= 2 => {
            // Several streams every event must be in. The events in both of two streams are
            // one range of `event_stream_pairs` (migration 6), in time order, so `all` of two
            // streams reads its matches and nothing else, however large the streams and however
            // few events they share. With more streams, the pairs of the first with each other
            // one are merged in time order (`INTERSECT` with an `ORDER BY` is SQLite's merge of
            // sorted co-routines; the `LIMIT -1` keeps SQLite from dropping that `ORDER BY`):
            // one sequential pass over ranges no larger than the pairs' shared events. (Merging
            // the streams' own `event_streams_time` ranges read both to the end: 2.6-2.7 ms for
            // two disjoint 1 % streams of 1,000,000 events; a membership probe per entry of one
            // stream, 45-82 ms.)
            // The outer query has no `ORDER BY`: SQLite 3.46 cannot see that the co-routine's
            // rows come in order and would sort them, reading every match's event first
            // (10 ms for 1,400 matches). The `CROSS JOIN` keeps the co-routine the outer loop,
            // so rows come out in its order; `tests/queries.rs` holds both directions, pages
            // and time ranges to the reference.
            args.clear();
            let mut arms = Vec::with_capacity(required.len() - 1);
            let first = required[0];
            for other in &required[1..] {
                let (a, b) = if first < *other { (first, *other) } else { (*other, first) };
                args.extend([Sql::Text(user_id.into()), Sql::Text(a.clone()), Sql::Text(b.clone())]);
                arms.push(time_range_arm(
                    "SELECT time, event_id FROM event_stream_pairs WHERE user_id = ? AND first_stream = ? AND second_stream = ?",
                    f,
                    time_floor,
                    &mut args,
                ));
            }
            (merged_ranges_query(user_id, &arms, "INTERSECT", dir, &mut args), String::new())
        }
        Some(stream) => {
            args.push(Sql::Text(stream.clone()));
            (
                format!(
                    "SELECT {EVENT_COLS} FROM event_streams es CROSS JOIN events e WHERE es.user_id = ? AND es.stream_id = ? \
                     AND e.user_id = es.user_id AND e.id = es.event_id AND e.deleted IS NULL"
                ),
                format!(" ORDER BY es.time {dir}, es.event_id {dir}"),
            )
        }
        None if merged.len() >= 2 => {
            // `any` of a few streams: their `event_streams_time` ranges merged in time order
            // (`UNION` with an `ORDER BY` is SQLite's merge of sorted co-routines, which also
            // drops an event met in two of them), so the latest matches are the first entries
            // of each range. Walking the user's events in time order and probing each one's
            // streams read ~30 events per match for three 1 % streams (2.2 ms for 20).
            // The outer query is shaped as in the `all` case above.
            args.clear();
            let mut arms = Vec::with_capacity(merged.len());
            for stream in &merged {
                args.extend([Sql::Text(user_id.into()), Sql::Text((*stream).clone())]);
                arms.push(time_range_arm(
                    "SELECT time, event_id FROM event_streams WHERE user_id = ? AND stream_id = ?",
                    f,
                    time_floor,
                    &mut args,
                ));
            }
            (merged_ranges_query(user_id, &arms, "UNION", dir, &mut args), String::new())
        }
        None => {
            // A sync reads the few events changed since: the `modified` index finds them.
            let hint = if f.modified_since.is_some() { " INDEXED BY events_modified" } else { "" };
            (
                format!("SELECT {EVENT_COLS} FROM events e{hint} WHERE e.user_id = ? AND e.deleted IS NULL"),
                format!(" ORDER BY e.time {dir}, e.id {dir}"),
            )
        }
    };
    let time_col = if driving_stream(f).is_some() { "es.time" } else { "e.time" };
    // The merged shapes bound time in each of their ranges.
    if required.len() < 2 && merged.len() < 2 {
        if let Some(floor) = time_floor {
            sql.push_str(&format!(" AND {time_col} >= ?"));
            args.push(Sql::Real(floor));
        }
        if let Some(to) = f.to_time {
            sql.push_str(&format!(" AND {time_col} <= ?"));
            args.push(Sql::Real(to));
        }
    }
    time_and_state_conditions(f, &mut sql, &mut args);
    let key = if driving_stream(f).is_some() && required.len() < 2 { ("es.user_id", "es.event_id") } else { ("e.user_id", "e.id") };
    streams_and_types_conditions(f, &mut sql, &mut args, key);
    sql.push_str(&order);
    sql.push_str(" LIMIT ? OFFSET ?");
    args.push(Sql::Integer(f.limit.map(|l| l.min(i64::MAX as u64) as i64).unwrap_or(-1)));
    args.push(Sql::Integer(f.skip.min(i64::MAX as u64) as i64));
    (sql, args)
}

/// The most streams an `any` set may have to be read as merged ranges (see [`merged_streams`]).
/// Each is a co-routine with its own cursor, and a large set (a stream with many children)
/// holds a fair share of the user's events, which the walk in time order finds quickly. Chosen,
/// not tuned: only three streams were measured.
const MAX_MERGED_STREAMS: usize = 8;

/// The streams of a one-group query's `any` set, when no single stream drives the query and
/// the set is small enough to read as merged ranges of `event_streams_time`.
fn merged_streams(f: &EventFilter) -> Vec<&String> {
    if driving_stream(f).is_some() || f.groups.len() != 1 || f.modified_since.is_some() {
        return vec![];
    }
    let Some(any) = f.groups[0].any.as_deref() else { return vec![] };
    let d = dedup(any);
    if (2..=MAX_MERGED_STREAMS).contains(&d.len()) {
        d
    } else {
        vec![]
    }
}

/// The events of `arms` (ranges of `(time, event_id)`, each in that order) combined by `op`
/// (`INTERSECT` or `UNION`) as SQLite's merge of sorted co-routines, read in `dir` order: the
/// shape `events_sql` gives its `all` and `any` cases (see there for why it has no outer
/// `ORDER BY`). The outer conditions follow.
fn merged_ranges_query(user_id: &str, arms: &[String], op: &str, dir: &str, args: &mut Vec<Sql>) -> String {
    args.push(Sql::Text(user_id.into()));
    format!(
        "SELECT {EVENT_COLS} FROM ({} ORDER BY 1 {dir}, 2 {dir} LIMIT -1) es CROSS JOIN events e \
         WHERE e.user_id = ? AND e.id = es.event_id AND e.deleted IS NULL",
        arms.join(&format!(" {op} "))
    )
}

/// `select` (one range of a `(…, time, event_id)` index, whose equality terms are already in
/// `args`) bounded by the filter's time range.
fn time_range_arm(select: &str, f: &EventFilter, time_floor: Option<f64>, args: &mut Vec<Sql>) -> String {
    let mut arm = select.to_string();
    if let Some(floor) = time_floor {
        arm.push_str(" AND time >= ?");
        args.push(Sql::Real(floor));
    }
    if let Some(to) = f.to_time {
        arm.push_str(" AND time <= ?");
        args.push(Sql::Real(to));
    }
    arm
}

/// A lower bound on `time` for events overlapping `[from, …]`: an event overlaps only if
/// `time + duration >= from`, so its time is at least `from` minus the user's longest duration,
/// or it is running (no duration) and started no earlier than the oldest running event. Two
/// lookups of `events_duration`, which holds only events with a positive duration or none (no
/// positive duration counts as 0); with it a time range is a bounded index range.
fn time_floor(c: &Connection, user_id: &str, f: &EventFilter) -> StoreResult<Option<f64>> {
    if f.from_time.is_none() {
        return Ok(None);
    }
    let (max_duration, oldest_running): (Option<f64>, Option<f64>) = c
        .prepare_cached(
            "SELECT (SELECT MAX(duration) FROM events WHERE user_id = ?1 AND duration > 0), \
             (SELECT MIN(time) FROM events WHERE user_id = ?1 AND duration IS NULL)",
        )
        .and_then(|mut s| s.query_row(params![user_id], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(map_err)?;
    Ok(crate::time_floor_from(f, max_duration, oldest_running))
}

/// Deleted events after `since` that the query's streams and types would have covered.
fn deletions_sql(user_id: &str, f: &EventFilter, since: Timestamp) -> (String, Vec<Sql>) {
    let mut sql = "SELECT e.id, e.deleted FROM events e WHERE e.user_id = ? AND e.deleted IS NOT NULL AND e.deleted > ?".to_string();
    let mut args: Vec<Sql> = vec![Sql::Text(user_id.into()), Sql::Real(since)];
    streams_and_types_conditions(f, &mut sql, &mut args, ("e.user_id", "e.id"));
    sql.push_str(" ORDER BY e.deleted");
    (sql, args)
}

fn time_and_state_conditions(f: &EventFilter, sql: &mut String, args: &mut Vec<Sql>) {
    match f.state {
        StateFilter::Default => sql.push_str(" AND e.trashed = 0"),
        StateFilter::Trashed => sql.push_str(" AND e.trashed = 1"),
        StateFilter::All => {}
    }
    if let Some(from) = f.from_time {
        sql.push_str(" AND (e.end_time IS NULL OR e.end_time >= ?)");
        args.push(Sql::Real(from));
    }
    match f.running {
        Some(true) => sql.push_str(" AND e.duration IS NULL"),
        Some(false) => sql.push_str(" AND e.duration IS NOT NULL"),
        None => {}
    }
    if let Some(since) = f.modified_since {
        sql.push_str(" AND e.modified > ?");
        args.push(Sql::Real(since));
    }
}

/// Streams and types conditions. Every set is one JSON parameter: the SQL's size does not
/// depend on how many ids or types the query names.
///
/// `key` names the event in membership checks: `e.user_id, e.id`, or, when the query is driven
/// by `event_streams es`, `es.user_id, es.event_id` — then SQLite checks the other streams from
/// the index alone, before it reads the event's row.
fn streams_and_types_conditions(f: &EventFilter, sql: &mut String, args: &mut Vec<Sql>, key: (&str, &str)) {
    let (kuser, kid) = key;
    if !f.types.is_empty() {
        let mut exact = Vec::new();
        let mut classes = Vec::new();
        for t in &f.types {
            match t {
                TypeFilter::Exact(x) => exact.push(x),
                TypeFilter::Class(c) => classes.push(c),
            }
        }
        let mut conds = Vec::new();
        if exact.len() == 1 && classes.is_empty() {
            // One type: an equality, so `events_type_time` gives the rows in order.
            args.push(Sql::Text(exact[0].clone()));
            conds.push("e.type = ?");
        } else if !exact.is_empty() {
            args.push(json_set(exact));
            conds.push("e.type IN (SELECT value FROM json_each(?))");
        }
        if !classes.is_empty() {
            args.push(json_set(classes));
            conds.push("substr(e.type, 1, instr(e.type, '/') - 1) IN (SELECT value FROM json_each(?))");
        }
        sql.push_str(&format!(" AND ({})", conds.join(" OR ")));
    }
    let has = |set: &[String], args: &mut Vec<Sql>| -> String {
        let set = dedup(set);
        match set.len() {
            0 => "0 = 1".into(),
            1 => {
                args.push(Sql::Text(set[0].clone()));
                format!(
                    "EXISTS (SELECT 1 FROM event_streams es2 WHERE es2.user_id = {kuser} AND es2.event_id = {kid} AND es2.stream_id = ?)"
                )
            }
            _ => {
                args.push(json_set(set));
                format!(
                    "EXISTS (SELECT 1 FROM event_streams es2 WHERE es2.user_id = {kuser} AND es2.event_id = {kid} \
                     AND es2.stream_id IN (SELECT value FROM json_each(?)))"
                )
            }
        }
    };
    if f.groups.len() > MAX_INLINE_GROUPS {
        groups_as_json(f, sql, args, key);
        return;
    }
    if let Some(c) = crate::groups_condition(&f.groups, |set| has(set, args), "1 = 1") {
        sql.push_str(&format!(" AND {c}"));
    }
}

/// Up to this many groups, each is its own condition; beyond, [`groups_as_json`].
const MAX_INLINE_GROUPS: usize = 8;

/// Any number of groups in one JSON parameter, `[{"any": [..] | null, "all": [[..], ..],
/// "not": [..]}, ..]`, tested per event by a condition of fixed size.
fn groups_as_json(f: &EventFilter, sql: &mut String, args: &mut Vec<Sql>, (kuser, kid): (&str, &str)) {
    let groups: Vec<Value> = f
        .groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "any": g.any.as_ref().map(|a| dedup(a)),
                "all": g.all.iter().map(|s| dedup(s)).collect::<Vec<_>>(),
                "not": dedup(&g.not),
            })
        })
        .collect();
    args.push(Sql::Text(Value::Array(groups).to_string()));
    let member = |set: &str| {
        format!(
            "EXISTS (SELECT 1 FROM event_streams es2 WHERE es2.user_id = {kuser} AND es2.event_id = {kid} \
             AND es2.stream_id IN (SELECT value FROM json_each({set})))"
        )
    };
    sql.push_str(&format!(
        " AND EXISTS (SELECT 1 FROM json_each(?) g WHERE (json_type(g.value, '$.any') = 'null' OR {}) \
         AND NOT EXISTS (SELECT 1 FROM json_each(g.value, '$.all') s WHERE NOT {}) AND NOT {})",
        member("g.value, '$.any'"),
        member("s.value"),
        member("g.value, '$.not'")
    ));
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: &User) -> StoreResult<()> {
        let u = user.clone();
        self.engine
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO users (id, username, email, password_hash, language, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| s.execute(params![u.id, u.username, u.email, u.password_hash, u.language, u.created]))
                .map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let name = username.to_string();
        self.engine
            .read(move |c| {
                c.prepare_cached("SELECT id, username, email, password_hash, language, created FROM users WHERE username = ?1")
                    .and_then(|mut s| {
                        s.query_row(params![name], |r| {
                            Ok(User {
                                id: r.get(0)?,
                                username: r.get(1)?,
                                email: r.get(2)?,
                                password_hash: r.get(3)?,
                                language: r.get(4)?,
                                created: r.get(5)?,
                            })
                        })
                        .optional()
                    })
                    .map_err(map_err)
            })
            .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_string();
        self.engine
            .read(move |c| {
                one(
                    c,
                    "SELECT id, username, email, password_hash, language, created FROM users WHERE email = ?1",
                    params![email],
                    user_from_row,
                )
            })
            .await
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let u = user.clone();
        self.engine
            .write(move |c| {
                let n = c
                    .prepare_cached("UPDATE users SET email = ?2, language = ?3, password_hash = ?4 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![u.id, u.email, u.language, u.password_hash]))
                    .map_err(map_err)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn storage_used(&self, user_id: &str) -> StoreResult<StorageUsed> {
        let u = user_id.to_string();
        self.engine
            .read(move |c| {
                let (docs, bytes): (i64, i64) = c
                    .prepare_cached(
                        "SELECT (SELECT COUNT(*) FROM streams WHERE user_id = ?1 AND deleted IS NULL) \
                         + (SELECT COUNT(*) FROM events WHERE user_id = ?1 AND deleted IS NULL), \
                         (SELECT COALESCE(SUM(json_extract(a.value, '$.size')), 0) FROM events e, json_each(e.attachments) a \
                          WHERE e.user_id = ?1 AND e.deleted IS NULL AND e.attachments IS NOT NULL)",
                    )
                    .and_then(|mut s| s.query_row(params![u], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(map_err)?;
                Ok(StorageUsed { db_documents: docs.max(0) as u64, attached_files: bytes.max(0) as u64 })
            })
            .await
    }

    async fn profile(&self, user_id: &str, id: &str) -> StoreResult<Option<Value>> {
        let (u, i) = (user_id.to_string(), id.to_string());
        let text = self
            .engine
            .read(move |c| one(c, "SELECT data FROM profiles WHERE user_id = ?1 AND id = ?2", params![u, i], |r| r.get::<_, String>(0)))
            .await?;
        Ok(parse_json(text))
    }

    async fn put_profile(&self, user_id: &str, id: &str, profile: &Value) -> StoreResult<()> {
        let (u, i, d) = (user_id.to_string(), id.to_string(), profile.to_string());
        self.engine
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO profiles (user_id, id, data) VALUES (?1, ?2, ?3) ON CONFLICT (user_id, id) DO UPDATE SET data = excluded.data",
                )
                .and_then(|mut s| s.execute(params![u, i, d]))
                .map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn insert_password_reset(&self, user_id: &str, token: &str, expires: Timestamp) -> StoreResult<()> {
        let (u, t) = (user_id.to_string(), token.to_string());
        self.engine
            .write(move |c| {
                c.prepare_cached("INSERT INTO password_resets (token, user_id, expires) VALUES (?1, ?2, ?3)")
                    .and_then(|mut s| s.execute(params![t, u, expires]))
                    .map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn take_password_reset(&self, token: &str, now: Timestamp) -> StoreResult<Option<String>> {
        let t = token.to_string();
        self.engine
            .write(move |c| {
                let found = one(c, "SELECT user_id, expires FROM password_resets WHERE token = ?1", params![t], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
                })?;
                c.prepare_cached("DELETE FROM password_resets WHERE token = ?1 OR expires < ?2")
                    .and_then(|mut s| s.execute(params![t, now]))
                    .map_err(map_err)?;
                Ok(found.filter(|(_, expires)| *expires >= now).map(|(u, _)| u))
            })
            .await
    }

    async fn secret(&self, name: &str, fresh: &str) -> StoreResult<String> {
        let (n, f) = (name.to_string(), fresh.to_string());
        self.engine
            .write(move |c| {
                c.prepare_cached("INSERT INTO server_secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
                    .and_then(|mut s| s.execute(params![n, f]))
                    .map_err(map_err)?;
                one(c, "SELECT value FROM server_secrets WHERE name = ?1", params![n], |r| r.get(0))?.ok_or(StoreError::NotFound)
            })
            .await
    }

    async fn create_file(&self, user_id: &str, file_id: &str) -> StoreResult<Box<dyn FileWriter>> {
        self.files.create(user_id, file_id).await
    }

    async fn read_file(&self, user_id: &str, file_id: &str) -> StoreResult<Option<FileChunks>> {
        self.files.read(user_id, file_id).await
    }

    async fn delete_files(&self, user_id: &str, file_ids: &[String]) -> StoreResult<()> {
        self.files.delete(user_id, file_ids).await
    }

    async fn insert_event_version(
        &self,
        user_id: &str,
        head_id: &str,
        version_id: &str,
        modified: Timestamp,
        version: &Value,
    ) -> StoreResult<()> {
        let (u, h, i, d) = (user_id.to_string(), head_id.to_string(), version_id.to_string(), version.to_string());
        self.engine
            .write(move |c| {
                c.prepare_cached("INSERT INTO event_versions (user_id, head_id, id, modified, data) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .and_then(|mut s| s.execute(params![u, h, i, modified, d]))
                    .map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn event_history(&self, user_id: &str, head_id: &str) -> StoreResult<Vec<Value>> {
        let (u, h) = (user_id.to_string(), head_id.to_string());
        let rows = self
            .engine
            .read(move |c| {
                all(c, "SELECT data FROM event_versions WHERE user_id = ?1 AND head_id = ?2 ORDER BY modified, id", params![u, h], |r| {
                    r.get::<_, String>(0)
                })
            })
            .await?;
        Ok(rows.into_iter().filter_map(|t| serde_json::from_str(&t).ok()).collect())
    }

    async fn delete_event_history(&self, user_id: &str, head_id: &str, keep_authors: bool) -> StoreResult<()> {
        let (u, h) = (user_id.to_string(), head_id.to_string());
        let sql = if keep_authors {
            "UPDATE event_versions SET data = json_object('id', json_extract(data, '$.id'), 'modified', json_extract(data, '$.modified'), \
             'modifiedBy', json_extract(data, '$.modifiedBy')) WHERE user_id = ?1 AND head_id = ?2"
        } else {
            "DELETE FROM event_versions WHERE user_id = ?1 AND head_id = ?2"
        };
        self.engine
            .write(move |c| {
                c.prepare_cached(sql).and_then(|mut s| s.execute(params![u, h])).map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn access_by_token(&self, user_id: &str, token: &str) -> StoreResult<Option<Access>> {
        let (u, t) = (user_id.to_string(), token.to_string());
        self.engine
            .read(move |c| {
                one(
                    c,
                    &format!("SELECT {ACCESS_COLS} FROM accesses WHERE user_id = ?1 AND token = ?2 AND deleted IS NULL"),
                    params![u, t],
                    access_from_row,
                )
            })
            .await
    }

    async fn access_by_id(&self, user_id: &str, id: &str) -> StoreResult<Option<Access>> {
        let (u, i) = (user_id.to_string(), id.to_string());
        self.engine
            .read(move |c| {
                one(c, &format!("SELECT {ACCESS_COLS} FROM accesses WHERE user_id = ?1 AND id = ?2"), params![u, i], access_from_row)
            })
            .await
    }

    async fn accesses(&self, user_id: &str, include_deleted: bool) -> StoreResult<Vec<Access>> {
        let u = user_id.to_string();
        self.engine
            .read(move |c| {
                let filter = if include_deleted { "" } else { " AND deleted IS NULL" };
                all(
                    c,
                    &format!("SELECT {ACCESS_COLS} FROM accesses WHERE user_id = ?1{filter} ORDER BY created"),
                    params![u],
                    access_from_row,
                )
            })
            .await
    }

    async fn insert_access(&self, user_id: &str, access: &Access, log: Changes) -> StoreResult<Changes> {
        let (u, a) = (user_id.to_string(), access.clone());
        self.engine
            .write(move |c| {
                let perms = Value::Array(a.permissions.iter().map(Permission::to_json).collect()).to_string();
                c.prepare_cached(&format!(
                    "INSERT INTO accesses (user_id, {ACCESS_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL)"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        u,
                        a.id,
                        a.token,
                        a.access_type.as_str(),
                        a.name,
                        a.device_name,
                        perms,
                        a.expires,
                        json_text(&a.client_data),
                        a.created,
                        a.created_by,
                        a.modified,
                        a.modified_by
                    ])
                })
                .map_err(map_err)?;
                append_log(c, log)
            })
            .await
    }

    async fn delete_accesses(&self, user_id: &str, ids: &[String], at: Timestamp, log: Changes) -> StoreResult<Changes> {
        let (u, ids) = (user_id.to_string(), ids.to_vec());
        self.engine
            .write(move |c| {
                let mut s = c
                    .prepare_cached("UPDATE accesses SET deleted = ?3 WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL")
                    .map_err(map_err)?;
                for id in &ids {
                    s.execute(params![u, id, at]).map_err(map_err)?;
                }
                append_log(c, log)
            })
            .await
    }

    async fn streams(&self, user_id: &str) -> StoreResult<Vec<Stream>> {
        let u = user_id.to_string();
        self.engine
            .read(move |c| {
                all(
                    c,
                    &format!("SELECT {STREAM_COLS} FROM streams WHERE user_id = ?1 AND deleted IS NULL ORDER BY name"),
                    params![u],
                    stream_from_row,
                )
            })
            .await
    }

    async fn stream_deletions(&self, user_id: &str, since: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        let u = user_id.to_string();
        self.engine
            .read(move |c| {
                all(
                    c,
                    "SELECT id, deleted FROM streams WHERE user_id = ?1 AND deleted IS NOT NULL AND deleted > ?2",
                    params![u, since],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
    }

    async fn insert_stream(&self, user_id: &str, stream: &Stream, log: Changes) -> StoreResult<Changes> {
        let (u, st) = (user_id.to_string(), stream.clone());
        self.engine
            .write(move |c| {
                // A deleted stream's id may be reused: drop its tombstone first.
                c.prepare_cached("DELETE FROM streams WHERE user_id = ?1 AND id = ?2 AND deleted IS NOT NULL")
                    .and_then(|mut s| s.execute(params![u, st.id]))
                    .map_err(map_err)?;
                c.prepare_cached(&format!(
                    "INSERT INTO streams (user_id, {STREAM_COLS}, deleted) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL)"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        u,
                        st.id,
                        st.parent_id,
                        st.name,
                        json_text(&st.client_data),
                        st.trashed as i64,
                        st.created,
                        st.created_by,
                        st.modified,
                        st.modified_by
                    ])
                })
                .map_err(|e| match map_err(e) {
                    // The primary key says "streams.user_id, streams.id": report it as the id.
                    StoreError::Conflict { field } if field == "name" => StoreError::Conflict { field: "name".into() },
                    other => other,
                })?;
                append_log(c, log)
            })
            .await
    }

    async fn update_stream(&self, user_id: &str, stream: &Stream, log: Changes) -> StoreResult<Changes> {
        let (u, st) = (user_id.to_string(), stream.clone());
        self.engine
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE streams SET parent_id = ?3, name = ?4, client_data = ?5, trashed = ?6, modified = ?7, modified_by = ?8 \
                         WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            u,
                            st.id,
                            st.parent_id,
                            st.name,
                            json_text(&st.client_data),
                            st.trashed as i64,
                            st.modified,
                            st.modified_by
                        ])
                    })
                    .map_err(map_err)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                append_log(c, log)
            })
            .await
    }

    async fn delete_streams(&self, user_id: &str, deletion: &StreamDeletion, at: Timestamp, log: Changes) -> StoreResult<Changes> {
        let (u, d) = (user_id.to_string(), deletion.clone());
        self.engine
            .write(move |c| {
                for e in &d.events_to_update {
                    update_event_in(c, &u, e)?;
                }
                for id in &d.events_to_delete {
                    delete_event_in(c, &u, id, at)?;
                }
                let mut s = c
                    .prepare_cached(
                        "UPDATE streams SET deleted = ?3, modified = ?3, client_data = NULL WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL",
                    )
                    .map_err(map_err)?;
                for id in &d.stream_ids {
                    s.execute(params![u, id, at]).map_err(map_err)?;
                }
                append_log(c, log)
            })
            .await
    }

    async fn insert_event(&self, user_id: &str, event: &Event, log: Changes) -> StoreResult<Changes> {
        let (u, e) = (user_id.to_string(), event.clone());
        self.engine
            .write(move |c| {
                let mut tomb = c.prepare_cached(EVENT_TOMBSTONE_DELETE).map_err(map_err)?;
                let mut ins = c.prepare_cached(EVENT_UPSERT).map_err(map_err)?;
                insert_event_in(c, &u, &e, &mut tomb, &mut ins)?;
                append_log(c, log)
            })
            .await
    }

    async fn insert_events(&self, user_id: &str, events: Vec<Event>, log: Changes) -> StoreResult<Changes> {
        let u = user_id.to_string();
        self.engine
            .write(move |c| {
                let mut tomb = c.prepare_cached(EVENT_TOMBSTONE_DELETE).map_err(map_err)?;
                let mut ins = c.prepare_cached(EVENT_UPSERT).map_err(map_err)?;
                for e in &events {
                    insert_event_in(c, &u, e, &mut tomb, &mut ins)?;
                }
                append_log(c, log)
            })
            .await
    }

    async fn insert_events_each(&self, user_id: &str, events: Vec<(Event, Changes)>) -> StoreResult<Vec<StoreResult<Changes>>> {
        let u = user_id.to_string();
        self.engine
            .write(move |c| {
                // No savepoint: an id that exists is the one failure that must leave the other
                // events written, and `ON CONFLICT DO NOTHING` finds it without undoing
                // anything (the event is simply not inserted, nor its streams and change). A
                // savepoint, per event or for the run, copied every page it touched first to a
                // sub-journal. Any other failure fails the whole write, which the writer rolls
                // back as one.
                let mut tomb = c.prepare_cached(EVENT_TOMBSTONE_DELETE).map_err(map_err)?;
                let mut ins = c.prepare_cached(EVENT_INSERT_NEW).map_err(map_err)?;
                let mut out = Vec::with_capacity(events.len());
                for (e, mut log) in events {
                    let had_tombstone = tomb.execute(params![u, e.id]).map_err(map_err)? > 0;
                    if ins.execute(params_from_iter(event_values(&u, &e))).map_err(map_err)? == 0 {
                        out.push(Err(StoreError::Conflict { field: "id".into() }));
                        continue;
                    }
                    if had_tombstone {
                        write_event_streams(c, &u, &e)?;
                    } else {
                        insert_event_streams(c, &u, &e)?;
                    }
                    append_log_in_place(c, &mut log)?;
                    out.push(Ok(log));
                }
                Ok(out)
            })
            .await
    }

    async fn event(&self, user_id: &str, id: &str) -> StoreResult<Option<Event>> {
        let (u, i) = (user_id.to_string(), id.to_string());
        self.engine
            .read(move |c| {
                one(
                    c,
                    &format!("SELECT {EVENT_COLS} FROM events e WHERE e.user_id = ?1 AND e.id = ?2 AND e.deleted IS NULL"),
                    params![u, i],
                    event_from_row,
                )
            })
            .await
    }

    async fn update_event(&self, user_id: &str, event: &Event, log: Changes) -> StoreResult<Changes> {
        let (u, e) = (user_id.to_string(), event.clone());
        self.engine
            .write(move |c| {
                update_event_in(c, &u, &e)?;
                append_log(c, log)
            })
            .await
    }

    async fn delete_event(&self, user_id: &str, id: &str, at: Timestamp, log: Changes) -> StoreResult<Changes> {
        let (u, i) = (user_id.to_string(), id.to_string());
        self.engine
            .write(move |c| {
                delete_event_in(c, &u, &i, at)?;
                append_log(c, log)
            })
            .await
    }

    async fn find_events(&self, user_id: &str, filter: &EventFilter) -> StoreResult<Vec<Event>> {
        let (u, f) = (user_id.to_string(), filter.clone());
        self.engine
            .read(move |c| {
                let (sql, args) = events_sql(&u, &f, time_floor(c, &u, &f)?);
                all(c, &sql, params_from_iter(args), event_from_row)
            })
            .await
    }

    async fn stream_events(
        &self,
        user_id: &str,
        filter: &EventFilter,
        deletions_since: Option<Timestamp>,
        batch: usize,
    ) -> StoreResult<tokio::sync::mpsc::Receiver<StoreResult<EventBatch>>> {
        // Two batches in flight at most: the reader waits for the client.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (u, f, batch) = (user_id.to_string(), filter.clone(), batch.max(1));
        self.engine.spawn_read(move |c| {
            // One snapshot for the events and the deletions.
            if let Err(e) = c.execute_batch("BEGIN") {
                let _ = tx.blocking_send(Err(map_err(e)));
                return;
            }
            let run = || -> Result<(), Option<StoreError>> {
                let (sql, args) = events_sql(&u, &f, time_floor(c, &u, &f)?);
                let mut s = c.prepare_cached(&sql).map_err(map_err)?;
                let mut rows = s.query(params_from_iter(args)).map_err(map_err)?;
                let mut part = Vec::with_capacity(batch);
                while let Some(r) = rows.next().map_err(map_err)? {
                    part.push(event_from_row(r).map_err(map_err)?);
                    if part.len() == batch {
                        let full = std::mem::replace(&mut part, Vec::with_capacity(batch));
                        tx.blocking_send(Ok(EventBatch::Events(full))).map_err(|_| None)?;
                    }
                }
                if !part.is_empty() {
                    tx.blocking_send(Ok(EventBatch::Events(part))).map_err(|_| None)?;
                }
                if let Some(since) = deletions_since {
                    let (sql, args) = deletions_sql(&u, &f, since);
                    let mut s = c.prepare_cached(&sql).map_err(map_err)?;
                    let mut rows = s.query(params_from_iter(args)).map_err(map_err)?;
                    let mut part = Vec::new();
                    while let Some(r) = rows.next().map_err(map_err)? {
                        part.push((r.get(0).map_err(map_err)?, r.get(1).map_err(map_err)?));
                        if part.len() == batch {
                            tx.blocking_send(Ok(EventBatch::Deletions(std::mem::take(&mut part)))).map_err(|_| None)?;
                        }
                    }
                    if !part.is_empty() {
                        tx.blocking_send(Ok(EventBatch::Deletions(part))).map_err(|_| None)?;
                    }
                }
                Ok(())
            };
            if let Err(Some(e)) = run() {
                let _ = tx.blocking_send(Err(e));
            }
            let _ = c.execute_batch("COMMIT");
        });
        Ok(rx)
    }

    async fn event_deletions(&self, user_id: &str, filter: &EventFilter, since: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        let (sql, args) = deletions_sql(user_id, filter, since);
        self.engine.read(move |c| all(c, &sql, params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))).await
    }

    async fn events_in_streams(&self, user_id: &str, stream_ids: &[String]) -> StoreResult<Vec<Event>> {
        if stream_ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events e WHERE e.user_id = ?1 AND e.deleted IS NULL AND EXISTS (SELECT 1 FROM event_streams es \
             WHERE es.user_id = e.user_id AND es.event_id = e.id AND es.stream_id IN (SELECT value FROM json_each(?2)))"
        );
        let args = vec![Sql::Text(user_id.into()), json_set(dedup(stream_ids))];
        self.engine.read(move |c| all(c, &sql, params_from_iter(args), event_from_row)).await
    }

    async fn insert_webhook(&self, user_id: &str, webhook: &Webhook, log: Changes) -> StoreResult<Changes> {
        let values = webhook_params(user_id, webhook);
        self.engine
            .write(move |c| {
                c.prepare_cached(&format!(
                    "INSERT INTO webhooks (user_id, {WEBHOOK_COLS}, deleted) VALUES ({}, NULL)",
                    (1..=20).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
                ))
                .and_then(|mut s| s.execute(params_from_iter(values)))
                .map_err(map_err)?;
                append_log(c, log)
            })
            .await
    }

    async fn webhook(&self, user_id: &str, id: &str) -> StoreResult<Option<Webhook>> {
        let (u, i) = (user_id.to_string(), id.to_string());
        self.engine
            .read(move |c| {
                one(
                    c,
                    &format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL"),
                    params![u, i],
                    webhook_from_row,
                )
            })
            .await
    }

    async fn webhooks(&self, user_id: &str, access_id: Option<&str>) -> StoreResult<Vec<Webhook>> {
        let (u, a) = (user_id.to_string(), access_id.map(str::to_owned));
        self.engine
            .read(move |c| {
                all(
                    c,
                    &format!(
                        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE user_id = ?1 AND deleted IS NULL AND (?2 IS NULL OR access_id = ?2) \
                         ORDER BY modified DESC"
                    ),
                    params![u, a],
                    webhook_from_row,
                )
            })
            .await
    }

    async fn webhooks_page(&self, after: Option<(String, String)>, limit: usize) -> StoreResult<Vec<(String, Webhook)>> {
        self.engine
            .read(move |c| {
                // A row-value comparison on the primary key: each page is an index range, so
                // loading a million webhooks stays linear.
                let (sql, args) = match after {
                    None => (
                        format!("SELECT user_id, {WEBHOOK_COLS} FROM webhooks WHERE deleted IS NULL ORDER BY user_id, id LIMIT ?1"),
                        vec![Sql::Integer(limit as i64)],
                    ),
                    Some((u, i)) => (
                        format!(
                            "SELECT user_id, {WEBHOOK_COLS} FROM webhooks WHERE (user_id, id) > (?1, ?2) AND deleted IS NULL \
                             ORDER BY user_id, id LIMIT ?3"
                        ),
                        vec![Sql::Text(u), Sql::Text(i), Sql::Integer(limit as i64)],
                    ),
                };
                all(c, &sql, params_from_iter(args), |r| Ok((r.get::<_, String>(0)?, webhook_from_row_offset(r, 1)?)))
            })
            .await
    }

    async fn update_webhook(&self, user_id: &str, webhook: &Webhook, log: Changes) -> StoreResult<Changes> {
        let (u, w) = (user_id.to_string(), webhook.clone());
        self.engine
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE webhooks SET state = ?3, current_retries = ?4, scopes = ?5, modified = ?6, modified_by = ?7 \
                         WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL",
                    )
                    .and_then(|mut s| {
                        s.execute(params![u, w.id, w.state.as_str(), w.current_retries, json_text(&w.scopes), w.modified, w.modified_by])
                    })
                    .map_err(map_err)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                append_log(c, log)
            })
            .await
    }

    async fn record_deliveries(&self, records: Vec<DeliveryRecord>, cursor: Option<LogCursor>) -> StoreResult<()> {
        self.engine
            .write(move |c| {
                let mut read_runs =
                    c.prepare_cached("SELECT runs FROM webhooks WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL").map_err(map_err)?;
                let mut with_run = c
                    .prepare_cached(
                        "UPDATE webhooks SET state = CASE WHEN ?3 = 'inactive' THEN 'inactive' ELSE state END, run_count = ?4, fail_count = ?5, current_retries = ?6, last_run_status = ?7, \
                         last_run_time = ?8, runs = ?9, pending = ?10 WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL",
                    )
                    .map_err(map_err)?;
                let mut pending_only = c
                    .prepare_cached("UPDATE webhooks SET pending = ?3 WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL")
                    .map_err(map_err)?;
                for r in records {
                    let pending = serde_json::to_string(&r.pending).unwrap_or_else(|_| "[]".into());
                    let Some(run) = r.run else {
                        pending_only.execute(params![&*r.user_id, &*r.webhook_id, pending]).map_err(map_err)?;
                        continue;
                    };
                    let Some(runs) =
                        read_runs.query_row(params![&*r.user_id, &*r.webhook_id], |row| row.get::<_, String>(0)).optional().map_err(map_err)?
                    else {
                        continue;
                    };
                    let mut runs: Vec<Run> = serde_json::from_str::<Vec<(u16, f64)>>(&runs)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(status, timestamp)| Run { status, timestamp })
                        .collect();
                    herald_model::webhook_machine::push_run(&mut runs, run, r.runs_size);
                    let runs: Vec<(u16, f64)> = runs.iter().map(|r| (r.status, r.timestamp)).collect();
                    with_run
                        .execute(params![
                            &*r.user_id,
                            &*r.webhook_id,
                            r.state.as_str(),
                            r.run_count as i64,
                            r.fail_count as i64,
                            r.current_retries,
                            run.status,
                            run.timestamp,
                            serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into()),
                            pending
                        ])
                        .map_err(map_err)?;
                }
                if let Some(cur) = cursor {
                    // Never moves back: a late writer cannot undo a later save.
                    c.prepare_cached(
                        "INSERT INTO change_log_consumers (name, seq, updated) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq), updated = excluded.updated",
                    )
                    .and_then(|mut s| s.execute(params![cur.consumer, cur.seq as i64, now_secs()]))
                    .map_err(map_err)?;
                }
                Ok(())
            })
            .await
    }

    async fn delete_webhook(&self, user_id: &str, id: &str, at: Timestamp, log: Changes) -> StoreResult<Changes> {
        let (u, i) = (user_id.to_string(), id.to_string());
        self.engine
            .write(move |c| {
                c.prepare_cached("UPDATE webhooks SET deleted = ?3, pending = '[]' WHERE user_id = ?1 AND id = ?2 AND deleted IS NULL")
                    .and_then(|mut s| s.execute(params![u, i, at]))
                    .map_err(map_err)?;
                append_log(c, log)
            })
            .await
    }

    async fn count_webhooks(&self, user_id: &str, access_id: &str) -> StoreResult<u64> {
        let (u, a) = (user_id.to_string(), access_id.to_string());
        self.engine
            .read(move |c| {
                c.prepare_cached("SELECT COUNT(*) FROM webhooks WHERE user_id = ?1 AND access_id = ?2 AND deleted IS NULL")
                    .and_then(|mut s| s.query_row(params![u, a], |r| r.get::<_, i64>(0)))
                    .map(|n| n as u64)
                    .map_err(map_err)
            })
            .await
    }

    async fn changes_after(&self, after: u64, limit: usize) -> StoreResult<Vec<Change>> {
        self.engine
            .read(move |c| {
                all(
                    c,
                    "SELECT seq, user_id, username, kind, change_type, items FROM change_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    params![after.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64],
                    change_from_row,
                )
            })
            .await
    }

    async fn last_seq(&self) -> StoreResult<u64> {
        self.engine
            .read(|c| {
                // Trimming keeps the newest record, so this is the highest number ever given.
                Ok(one(c, "SELECT MAX(seq) FROM change_log", [], |r| r.get::<_, Option<i64>>(0))?.flatten().unwrap_or(0) as u64)
            })
            .await
    }

    async fn log_cursor(&self, consumer: &str) -> StoreResult<u64> {
        let name = consumer.to_string();
        self.engine
            .read(move |c| {
                Ok(one(c, "SELECT seq FROM change_log_consumers WHERE name = ?1", params![name], |r| r.get::<_, i64>(0))?.unwrap_or(0)
                    as u64)
            })
            .await
    }

    async fn trim_change_log(&self, before: Timestamp, limit: usize) -> StoreResult<u64> {
        self.engine
            .write(move |c| {
                // With no consumer registered, nothing waits for the records: time alone decides.
                let passed: i64 = c
                    .prepare_cached("SELECT COALESCE(MIN(seq), 9223372036854775807) FROM change_log_consumers")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(map_err)?;
                let (first, last): (i64, i64) = c
                    // Two subqueries: SQLite reads MIN and MAX off the primary key only when each
                    // stands alone (together they scan the table: 72 ms at a million records).
                    .prepare_cached("SELECT COALESCE((SELECT MIN(seq) FROM change_log), 0), COALESCE((SELECT MAX(seq) FROM change_log), 0)")
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(map_err)?;
                if first == 0 {
                    return Ok(0);
                }
                // `at` grows with `seq` (one writer), so the last record written before `before`
                // is found by bisection on the primary key: a few lookups, never a scan of the
                // records still kept.
                let mut probe = c.prepare_cached("SELECT seq, at FROM change_log WHERE seq >= ?1 ORDER BY seq LIMIT 1").map_err(map_err)?;
                // The newest record always stays: `seq` is max + 1, so it must never go down.
                let (mut old, mut young) = (first - 1, (last - 1).min(passed).saturating_add(1));
                while young - old > 1 {
                    let mid = old + (young - old) / 2;
                    match probe.query_row(params![mid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))).optional().map_err(map_err)? {
                        Some((s, at)) if s < young && at < before => old = s,
                        _ => young = mid,
                    }
                }
                let upto = old.min(first.saturating_add(limit.min(i64::MAX as usize) as i64 - 1));
                if upto < first {
                    return Ok(0);
                }
                let n = c
                    .prepare_cached("DELETE FROM change_log WHERE seq <= ?1")
                    .and_then(|mut s| s.execute(params![upto]))
                    .map_err(map_err)?;
                Ok(n as u64)
            })
            .await
    }

    async fn change_log_stats(&self) -> StoreResult<LogStats> {
        self.engine
            .read(|c| {
                one(c, "SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM change_log", [], |r| {
                    Ok(LogStats {
                        records: r.get::<_, i64>(0)? as u64,
                        first: r.get::<_, i64>(1)? as u64,
                        last: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map(Option::unwrap_or_default)
            })
            .await
    }

    async fn users_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        let after = after.unwrap_or("").to_string();
        self.engine
            .read(move |c| {
                all(
                    c,
                    "SELECT id, username, email, password_hash, language, created FROM users WHERE username > ?1 ORDER BY username LIMIT ?2",
                    params![after, limit.min(i64::MAX as usize) as i64],
                    |r| {
                        Ok(User {
                            id: r.get(0)?,
                            username: r.get(1)?,
                            email: r.get(2)?,
                            password_hash: r.get(3)?,
                            language: r.get(4)?,
                            created: r.get(5)?,
                        })
                    },
                )
            })
            .await
    }

    async fn delete_user(&self, user_id: &str, log: Changes) -> StoreResult<Changes> {
        let u = user_id.to_string();
        let log = self
            .engine
            .write(move |c| {
                for table in [
                    "event_stream_pairs",
                    "event_streams",
                    "event_versions",
                    "events",
                    "streams",
                    "webhooks",
                    "accesses",
                    "profiles",
                    "password_resets",
                    "users",
                ] {
                    let column = if table == "users" { "id" } else { "user_id" };
                    c.execute(&format!("DELETE FROM {table} WHERE {column} = ?1"), params![u]).map_err(map_err)?;
                }
                append_log(c, log)
            })
            .await?;
        // The files go once no row points at them: a failure here leaves files nothing reads,
        // never rows whose files are gone.
        self.files.delete_user(user_id).await?;
        Ok(log)
    }

    async fn insert_access_request(&self, request: &AccessRequest, now: Timestamp, max_live: u64) -> StoreResult<bool> {
        let r = request.clone();
        self.engine
            .write(move |c| {
                c.prepare_cached("DELETE FROM access_requests WHERE expires <= ?1")
                    .and_then(|mut s| s.execute(params![now]))
                    .map_err(map_err)?;
                let live = one(c, "SELECT COUNT(*) FROM access_requests", [], |row| row.get::<_, i64>(0))?.unwrap_or(0);
                if live as u64 >= max_live {
                    return Ok(false);
                }
                c.prepare_cached("INSERT INTO access_requests (key, status, state, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .and_then(|mut s| {
                        s.execute(params![r.key, r.status.as_str(), Value::Object(r.state.clone()).to_string(), r.created, r.expires])
                    })
                    .map_err(map_err)?;
                Ok(true)
            })
            .await
    }

    async fn access_request(&self, key: &str) -> StoreResult<Option<AccessRequest>> {
        let k = key.to_string();
        self.engine
            .read(move |c| {
                one(c, "SELECT key, status, state, created, expires FROM access_requests WHERE key = ?1", params![k], |r| {
                    let state: String = r.get(2)?;
                    Ok(AccessRequest {
                        key: r.get(0)?,
                        status: RequestStatus::parse(&r.get::<_, String>(1)?).unwrap_or(RequestStatus::Error),
                        state: serde_json::from_str(&state).unwrap_or_default(),
                        created: r.get(3)?,
                        expires: r.get(4)?,
                    })
                })
            })
            .await
    }

    async fn decide_access_request(&self, request: &AccessRequest) -> StoreResult<bool> {
        let r = request.clone();
        self.engine
            .write(move |c| {
                let n = c
                    .prepare_cached("UPDATE access_requests SET status = ?2, state = ?3 WHERE key = ?1 AND status = 'NEED_SIGNIN'")
                    .and_then(|mut s| s.execute(params![r.key, r.status.as_str(), Value::Object(r.state.clone()).to_string()]))
                    .map_err(map_err)?;
                Ok(n == 1)
            })
            .await
    }

    async fn shorten_access_request(&self, key: &str, expires: Timestamp) -> StoreResult<()> {
        let k = key.to_string();
        self.engine
            .write(move |c| {
                c.prepare_cached("UPDATE access_requests SET expires = ?2 WHERE key = ?1 AND expires > ?2")
                    .and_then(|mut s| s.execute(params![k, expires]))
                    .map_err(map_err)?;
                Ok(())
            })
            .await
    }

    async fn delete_access_request(&self, key: &str) -> StoreResult<()> {
        let k = key.to_string();
        self.engine
            .write(move |c| {
                c.prepare_cached("DELETE FROM access_requests WHERE key = ?1").and_then(|mut s| s.execute(params![k])).map_err(map_err)?;
                Ok(())
            })
            .await
    }
}

/// [`webhook_from_row`] for a row whose webhook columns start at `off`.
fn webhook_from_row_offset(r: &Row, off: usize) -> rusqlite::Result<Webhook> {
    let g = |i: usize| off + i;
    let runs: String = r.get(g(8))?;
    let runs: Vec<(u16, f64)> = serde_json::from_str(&runs).unwrap_or_default();
    let pending: String = r.get(g(14))?;
    Ok(Webhook {
        id: r.get(g(0))?,
        access_id: r.get(g(1))?,
        url: r.get(g(2))?,
        state: WebhookState::parse(&r.get::<_, String>(g(3))?).unwrap_or(WebhookState::Active),
        run_count: r.get::<_, i64>(g(4))? as u64,
        fail_count: r.get::<_, i64>(g(5))? as u64,
        last_run: Run { status: r.get::<_, i64>(g(6))? as u16, timestamp: r.get(g(7))? },
        runs: runs.into_iter().map(|(status, timestamp)| Run { status, timestamp }).collect(),
        current_retries: r.get::<_, i64>(g(9))? as u32,
        max_retries: r.get::<_, i64>(g(10))? as u32,
        min_interval_ms: r.get::<_, i64>(g(11))? as u64,
        scopes: parse_json(r.get(g(12))?),
        secret: r.get(g(13))?,
        pending: serde_json::from_str(&pending).unwrap_or_default(),
        created: r.get(g(15))?,
        created_by: r.get(g(16))?,
        modified: r.get(g(17))?,
        modified_by: r.get(g(18))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, streams: &[&str], time: f64) -> Event {
        Event {
            id: id.into(),
            stream_ids: streams.iter().map(|s| s.to_string()).collect(),
            time,
            duration: Some(0.0),
            event_type: "note/txt".into(),
            content: None,
            description: None,
            client_data: None,
            trashed: false,
            created: time,
            created_by: "a".into(),
            modified: time,
            modified_by: "a".into(),
            attachments: vec![],
        }
    }

    /// A row of `event_stream_pairs`: user, first and second stream, time, event.
    type Pair = (String, String, String, f64, String);

    /// `event_stream_pairs` as it is, and as the memberships say it should be.
    fn pairs(db: &Path) -> (Vec<Pair>, Vec<Pair>) {
        let c = Connection::open(db).unwrap();
        let rows = |sql: &str| -> Vec<Pair> {
            let mut s = c.prepare(sql).unwrap();
            let v = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).unwrap();
            v.collect::<Result<_, _>>().unwrap()
        };
        (
            rows("SELECT user_id, first_stream, second_stream, time, event_id FROM event_stream_pairs ORDER BY 1, 2, 3, 4, 5"),
            rows(
                "SELECT a.user_id, a.stream_id, b.stream_id, a.time, a.event_id FROM event_streams a JOIN event_streams b \
                 ON b.user_id = a.user_id AND b.event_id = a.event_id AND b.stream_id > a.stream_id ORDER BY 1, 2, 3, 4, 5",
            ),
        )
    }

    /// The pairs follow every write of memberships: creates (one by one and in a batch), moves
    /// between streams and in time, deletions (the tombstone keeps its streams), a create over
    /// a tombstone, and a user's deletion. `events.get` re-checks each event's streams, so a
    /// stale pair would only cost time; this test is what sees one.
    #[tokio::test]
    async fn the_pairs_of_streams_follow_every_change_of_membership() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let db = dir.path().join("herald.db");
        store.insert_event("u", &event("e1", &["a", "b", "c"], 10.0), vec![]).await.unwrap();
        store.insert_event("u", &event("e2", &["a"], 11.0), vec![]).await.unwrap();
        store.insert_events("u", vec![event("e3", &["b", "a"], 12.0), event("e4", &["c", "a"], 13.0)], vec![]).await.unwrap();
        store.insert_event("v", &event("e1", &["a", "b"], 10.0), vec![]).await.unwrap();
        let (got, want) = pairs(&db);
        assert_eq!(got.len(), 3 + 1 + 1 + 1, "{got:?}");
        assert_eq!(got, want);
        store.update_event("u", &event("e1", &["c", "d"], 20.0), vec![]).await.unwrap();
        store.update_event("u", &event("e2", &["a", "b"], 11.0), vec![]).await.unwrap();
        store.delete_event("u", "e3", 30.0, vec![]).await.unwrap();
        store.delete_event("u", "e4", 30.0, vec![]).await.unwrap();
        store.insert_event("u", &event("e4", &["d", "b"], 40.0), vec![]).await.unwrap();
        let (got, want) = pairs(&db);
        assert!(got.iter().any(|p| p.1 == "b" && p.2 == "d" && p.4 == "e4"), "{got:?}");
        assert!(!got.iter().any(|p| p.1 == "a" && p.2 == "b" && p.4 == "e1" && p.0 == "u"), "{got:?}");
        assert_eq!(got, want);
        store.delete_user("u", vec![]).await.unwrap();
        let (got, want) = pairs(&db);
        assert_eq!(got, vec![("v".to_string(), "a".to_string(), "b".to_string(), 10.0, "e1".to_string())]);
        assert_eq!(got, want);
        // A path that updated a membership in place would leave its pairs wrong: refused.
        let c = Connection::open(&db).unwrap();
        assert!(c.execute("UPDATE event_streams SET time = 1 WHERE user_id = 'v'", []).is_err());
    }
}
