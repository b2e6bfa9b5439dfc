//! The PostgreSQL store, for several Herald nodes sharing one database (the cluster issue).
//! Same rows and the same behaviour as the SQLite store, change log included.
//!
//! Driver: `tokio-postgres` with a `deadpool-postgres` pool. It is async from the ground up (no
//! blocking thread per query, unlike the SQLite engine), its statements are prepared and cached
//! per connection, and it adds no compile-time database checks that would make the build need a
//! running server. Migrations: `refinery` (embedded, versioned), run under a session advisory
//! lock so that nodes starting at once migrate one after the other.
//!
//! Each write is one transaction; a write that logs changes takes a transaction-level advisory
//! lock before numbering them and holds it until its commit, so `seq` follows commit order (see
//! `migrations/V2__change_log.sql`). The lock and the numbered insert are one function,
//! `herald_append_log` (migration 8), the transaction's last statement, so the lock is held for
//! little more than the commit's flush.
//! `events.create` is group-committed (`group`): many creates, one transaction, one flush.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use herald_model::access::{Access, AccessType, Permission};
use herald_model::access_request::{AccessRequest, Status as RequestStatus};
use herald_model::change::{Change, ChangeKind, ChangeType};
use herald_model::event::Event;
use herald_model::query::{EventFilter, StateFilter, TypeFilter};
use herald_model::stream::Stream;
use herald_model::user::User;
use herald_model::webhook::{Run, Webhook, WebhookState};
use herald_model::Timestamp;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::{
    Changes, DeliveryRecord, FileChunks, FileWriter, LogCursor, LogStats, StorageUsed, Store, StoreError, StoreResult, StreamDeletion,
};

mod files;
mod group;

pub mod leases;

mod embedded {
    refinery::embed_migrations!("src/postgres/migrations");
}

/// Advisory lock keys (arbitrary, fixed): migrations, and numbering the change log.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0001;
const LOG_LOCK: i64 = 0x6865_7261_6c64_0002;
/// Counting and inserting access requests (their cap).
const ACCESS_REQUESTS_LOCK: i64 = 0x6865_7261_6c64_0004;

/// Writer tasks of the group commit of `events.create` (each holds a connection while writing).
/// One: the creates waiting while a group commits all go in the next, and PostgreSQL's CPU per
/// create falls with the group's size. Two let a group's statements run during the previous
/// group's flush, but made the groups smaller (2.5 creates against 3.9 from 8 clients) and, the
/// machine's two cores being busy, took fewer creates/s in all eight alternating pairs of runs
/// (the median pair: 19 % fewer; `performance.md`, issue 9).
const EVENT_WRITERS: usize = 1;

pub struct PgStore {
    pool: Pool,
    /// `insert_event`s are group-committed (see `group`).
    events: group::EventWriter,
}

/// The SQLSTATE of `herald_require_fresh` (migration 7): the write relied on stale caches.
const STALE: &str = "HR001";

fn pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if db.code().code() == STALE {
            return StoreError::Stale;
        }
        if *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            let field = crate::conflict_field(db.constraint().unwrap_or(""));
            return StoreError::Conflict { field: field.into() };
        }
    }
    StoreError::Failure(e.to_string())
}

fn pool_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failure(format!("database connection: {e}"))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn json_text(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

fn parse_json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

type Param = Box<dyn ToSql + Sync + Send>;

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

impl PgStore {
    /// Connect to `url` (`postgres://user@host:port/db`) and bring the schema up to date.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Failure(format!("database URL: {e}")))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(16).build().map_err(pool_err)?;
        let events = group::EventWriter::start(pool.clone(), EVENT_WRITERS);
        let store = PgStore { pool, events };
        store.migrate().await?;
        Ok(store)
    }

    /// This database's identity (made by the schema's third migration): the cluster's name.
    pub async fn cluster_id(&self) -> StoreResult<String> {
        let row = self.row("SELECT id FROM herald_cluster LIMIT 1", &[]).await?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::Failure("the database has no cluster identity".into()))
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        // Several nodes may start at once: one migrates while the others wait for it.
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
        let result = embedded::migrations::runner().run_async(&mut **client).await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
        result.map(|_| ()).map_err(|e| StoreError::Failure(format!("schema migration failed: {e}")))
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(pg)?;
        c.query(&st, params).await.map_err(pg)
    }

    async fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Option<Row>> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(pg)?;
        c.query_opt(&st, params).await.map_err(pg)
    }

    /// One statement in its own transaction, with its changes logged; `NotFound` when it
    /// touched no row and `must_touch` says it should have.
    async fn write_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)], must_touch: bool, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let n = tx.execute(sql, params).await.map_err(pg)?;
        if must_touch && n == 0 {
            return Err(StoreError::NotFound);
        }
        let log = append_log(&tx, log).await?;
        commit(tx).await?;
        Ok(log)
    }
}

/// The operators' commit metrics: how long a commit took and how many writes it carried.
fn record_commit(started: std::time::Instant, writes: usize) {
    metrics::histogram!("herald_store_commit_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("herald_store_commit_group_size").record(writes as f64);
}

/// Commit, timed for the operators' metrics: a group of one (event creates are grouped, see
/// `group`).
async fn commit(tx: deadpool_postgres::Transaction<'_>) -> StoreResult<()> {
    let started = std::time::Instant::now();
    tx.commit().await.map_err(pg)?;
    record_commit(started, 1);
    Ok(())
}

/// Append `log` to the change log inside the transaction `tx`, numbered in commit order
/// (`herald_append_log`: the lock and the numbered insert in one statement), right before the
/// commit, so the lock is held for little more than the commit.
async fn append_log(tx: &deadpool_postgres::Transaction<'_>, log: Changes) -> StoreResult<Changes> {
    if log.is_empty() {
        return Ok(log);
    }
    let mut rows = group::LogRows::default();
    rows.push(&log)?;
    let append = tx.prepare_cached(group::APPEND_LOG).await.map_err(pg)?;
    let row = tx
        .query_one(&append, &[&LOG_LOCK, &rows.users, &rows.names, &rows.kinds, &rows.types, &rows.items, &now_secs()])
        .await
        .map_err(pg)?;
    Ok(group::number(log, row.get::<_, i64>(0) as u64 + 1))
}

const ACCESS_COLS: &str =
    "id, token, type, name, device_name, permissions, expires, client_data, created, created_by, modified, modified_by, deleted";

fn access_from_row(r: &Row) -> Access {
    let perms: Vec<Value> = serde_json::from_str(&r.get::<_, String>(5)).unwrap_or_default();
    Access {
        id: r.get(0),
        token: r.get(1),
        access_type: AccessType::parse(&r.get::<_, String>(2)).unwrap_or(AccessType::Shared),
        name: r.get(3),
        device_name: r.get(4),
        permissions: perms.iter().filter_map(|p| Permission::from_json(p).ok()).collect(),
        expires: r.get(6),
        client_data: parse_json(r.get(7)),
        created: r.get(8),
        created_by: r.get(9),
        modified: r.get(10),
        modified_by: r.get(11),
        deleted: r.get(12),
    }
}

fn user_from_row(r: &Row) -> User {
    User { id: r.get(0), username: r.get(1), email: r.get(2), password_hash: r.get(3), language: r.get(4), created: r.get(5) }
}

const STREAM_COLS: &str = "id, parent_id, name, client_data, trashed, created, created_by, modified, modified_by";

fn stream_from_row(r: &Row) -> Stream {
    Stream {
        id: r.get(0),
        parent_id: r.get(1),
        name: r.get(2),
        client_data: parse_json(r.get(3)),
        trashed: r.get::<_, i32>(4) != 0,
        created: r.get(5),
        created_by: r.get(6),
        modified: r.get(7),
        modified_by: r.get(8),
    }
}

const EVENT_COLS: &str =
    "e.id, e.stream_ids, e.time, e.duration, e.type, e.content, e.description, e.client_data, e.trashed, e.created, e.created_by, e.modified, e.modified_by, e.attachments";

fn event_from_row(r: &Row) -> Event {
    Event {
        id: r.get(0),
        stream_ids: serde_json::from_str(&r.get::<_, String>(1)).unwrap_or_default(),
        time: r.get(2),
        duration: r.get(3),
        event_type: r.get(4),
        content: parse_json(r.get(5)),
        description: r.get(6),
        client_data: parse_json(r.get(7)),
        trashed: r.get::<_, i32>(8) != 0,
        created: r.get(9),
        created_by: r.get(10),
        modified: r.get(11),
        modified_by: r.get(12),
        attachments: crate::attachments_from_text(r.get(13)),
    }
}

const WEBHOOK_COLS: &str = "id, access_id, url, state, run_count, fail_count, last_run_status, last_run_time, runs, current_retries, \
     max_retries, min_interval_ms, scopes, secret, pending, created, created_by, modified, modified_by";

fn webhook_from_row(r: &Row, off: usize) -> Webhook {
    let g = |i: usize| off + i;
    let runs: Vec<(u16, f64)> = serde_json::from_str(&r.get::<_, String>(g(8))).unwrap_or_default();
    Webhook {
        id: r.get(g(0)),
        access_id: r.get(g(1)),
        url: r.get(g(2)),
        state: WebhookState::parse(&r.get::<_, String>(g(3))).unwrap_or(WebhookState::Active),
        run_count: r.get::<_, i64>(g(4)) as u64,
        fail_count: r.get::<_, i64>(g(5)) as u64,
        last_run: Run { status: r.get::<_, i32>(g(6)) as u16, timestamp: r.get(g(7)) },
        runs: runs.into_iter().map(|(status, timestamp)| Run { status, timestamp }).collect(),
        current_retries: r.get::<_, i64>(g(9)) as u32,
        max_retries: r.get::<_, i64>(g(10)) as u32,
        min_interval_ms: r.get::<_, i64>(g(11)) as u64,
        scopes: parse_json(r.get(g(12))),
        secret: r.get(g(13)),
        pending: serde_json::from_str(&r.get::<_, String>(g(14))).unwrap_or_default(),
        created: r.get(g(15)),
        created_by: r.get(g(16)),
        modified: r.get(g(17)),
        modified_by: r.get(g(18)),
    }
}

fn change_from_row(r: &Row) -> StoreResult<Change> {
    let bad = |what: &str| StoreError::Failure(format!("change log: bad {what}"));
    Ok(Change {
        seq: r.get::<_, i64>(0) as u64,
        user_id: r.get(1),
        username: r.get(2),
        kind: ChangeKind::parse_any(&r.get::<_, String>(3)).ok_or_else(|| bad("kind"))?,
        change_type: ChangeType::parse(&r.get::<_, String>(4)).ok_or_else(|| bad("change type"))?,
        items: serde_json::from_str(&r.get::<_, String>(5)).map_err(|_| bad("items"))?,
    })
}

/// The values of an event row, in the order of `EVENT_INSERT`'s parameters $1..$16.
fn event_values(user_id: &str, e: &Event) -> Vec<Param> {
    vec![
        Box::new(user_id.to_string()),
        Box::new(e.id.clone()),
        Box::new(serde_json::to_string(&e.stream_ids).unwrap_or_else(|_| "[]".into())),
        Box::new(e.time),
        Box::new(e.duration),
        Box::new(e.end_time()),
        Box::new(e.event_type.clone()),
        Box::new(json_text(&e.content)),
        Box::new(e.description.clone()),
        Box::new(json_text(&e.client_data)),
        Box::new(e.trashed as i32),
        Box::new(e.created),
        Box::new(e.created_by.clone()),
        Box::new(e.modified),
        Box::new(e.modified_by.clone()),
        Box::new(crate::attachments_text(&e.attachments)),
    ]
}

const EVENT_INSERT: &str = "INSERT INTO events (user_id, id, stream_ids, time, duration, end_time, type, content, description, \
     client_data, trashed, created, created_by, modified, modified_by, attachments, deleted) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL)";

const EVENT_UPDATE: &str = "UPDATE events SET stream_ids = $3, time = $4, duration = $5, end_time = $6, type = $7, content = $8, \
     description = $9, client_data = $10, trashed = $11, created = $12, created_by = $13, modified = $14, modified_by = $15, \
     attachments = $16 WHERE user_id = $1 AND id = $2 AND deleted IS NULL";

/// An event's pairs of streams (`event_stream_pairs`, V9), first stream < second, if it is in
/// two or more: the events two streams share are then one range of that table's key.
fn stream_pairs(e: &Event) -> Option<(Vec<&String>, Vec<&String>)> {
    let mut streams = crate::dedup(&e.stream_ids);
    if streams.len() < 2 {
        return None;
    }
    streams.sort();
    let (mut first, mut second) = (vec![], vec![]);
    for (k, a) in streams.iter().enumerate() {
        for b in &streams[k + 1..] {
            first.push(*a);
            second.push(*b);
        }
    }
    Some((first, second))
}

/// Write an event's pairs of streams ([`stream_pairs`]): `$1` user, `$2` event, `$3` time, `$4`
/// and `$5` the pairs' first and second streams.
const PAIRS_INSERT: &str = "INSERT INTO event_stream_pairs (user_id, event_id, time, first_stream, second_stream) \
     SELECT $1, $2, $3, a, b FROM unnest($4::text[], $5::text[]) AS p(a, b) ON CONFLICT DO NOTHING";

/// Rewrite an event's memberships and their pairs.
async fn write_event_streams(tx: &deadpool_postgres::Transaction<'_>, user_id: &str, e: &Event) -> StoreResult<()> {
    tx.execute("DELETE FROM event_stream_pairs WHERE user_id = $1 AND event_id = $2", &[&user_id, &e.id]).await.map_err(pg)?;
    tx.execute("DELETE FROM event_streams WHERE user_id = $1 AND event_id = $2", &[&user_id, &e.id]).await.map_err(pg)?;
    // One statement for all of the event's streams: one array parameter, whatever their number.
    tx.execute(
        "INSERT INTO event_streams (user_id, event_id, stream_id, time) SELECT $1, $2, s, $4 FROM unnest($3::text[]) AS s ON CONFLICT DO NOTHING",
        &[&user_id, &e.id, &e.stream_ids, &e.time],
    )
    .await
    .map_err(pg)?;
    if let Some((first, second)) = stream_pairs(e) {
        tx.execute(PAIRS_INSERT, &[&user_id, &e.id, &e.time, &first, &second]).await.map_err(pg)?;
    }
    Ok(())
}

async fn update_event_in(tx: &deadpool_postgres::Transaction<'_>, user_id: &str, e: &Event) -> StoreResult<()> {
    let values = event_values(user_id, e);
    if tx.execute(EVENT_UPDATE, &refs(&values)).await.map_err(pg)? == 0 {
        return Err(StoreError::NotFound);
    }
    write_event_streams(tx, user_id, e).await
}

async fn delete_event_in(tx: &deadpool_postgres::Transaction<'_>, user_id: &str, id: &str, at: Timestamp) -> StoreResult<()> {
    // The tombstone keeps its streams and type: `eventDeletions` are filtered like events.
    tx.execute(
        "UPDATE events SET deleted = $3, modified = $3, content = NULL, description = NULL, client_data = NULL, attachments = NULL \
         WHERE user_id = $1 AND id = $2",
        &[&user_id, &id, &at],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Builds a statement's text and parameters together, numbering `$n` as it goes.
#[derive(Default)]
struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    /// Add a parameter and return its placeholder.
    fn bind(&mut self, p: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(p));
        format!("${}", self.params.len())
    }
}

/// Read `q` through a portal `batch` rows at a time and hand each batch on; `false` once the
/// receiver is gone (the client left: the read stops).
async fn send_portal(
    t: &deadpool_postgres::Transaction<'_>,
    q: &Sql,
    batch: usize,
    tx: &tokio::sync::mpsc::Sender<StoreResult<crate::EventBatch>>,
    wrap: impl Fn(Vec<Row>) -> crate::EventBatch,
) -> StoreResult<bool> {
    let portal = t.bind(q.text.as_str(), &refs(&q.params)).await.map_err(pg)?;
    loop {
        let rows = t.query_portal(&portal, batch as i32).await.map_err(pg)?;
        let last = rows.len() < batch;
        if !rows.is_empty() && tx.send(Ok(wrap(rows))).await.is_err() {
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
    }
}

/// `events.get`'s events, in Pryv's order. The query shape is SQLite's (`events_sql` there):
/// one stream's membership range drives the read when one fits ([`crate::driving_stream`]),
/// else the events' own `(user_id, time, id)` order. `time_floor`: events before it cannot
/// overlap the time range ([`time_floor_from`]).
fn events_query(user_id: &str, f: &EventFilter, time_floor: Option<f64>) -> Sql {
    let mut q = Sql::default();
    let u = q.bind(user_id.to_string());
    let dir = if f.sort_ascending { "ASC" } else { "DESC" };
    let driving = crate::driving_stream(f);
    let required = crate::required_streams(f);
    let order = match driving {
        Some(_) if required.len() >= 2 => {
            // Several streams every event must be in: the events the first two share are one
            // range of `event_stream_pairs` (V9), in time order; any others are checked per
            // event below. The two streams' own ranges were hash-joined: 18 ms for two disjoint
            // 1 % streams of a million events.
            let (a, b) = if required[0] < required[1] { (required[0], required[1]) } else { (required[1], required[0]) };
            let (a, b) = (q.bind(a.clone()), q.bind(b.clone()));
            q.push(&format!(
                "SELECT {EVENT_COLS} FROM event_stream_pairs es JOIN events e ON e.user_id = es.user_id AND e.id = es.event_id \
                 WHERE es.user_id = {u} AND es.first_stream = {a} AND es.second_stream = {b} AND e.deleted IS NULL"
            ));
            format!(" ORDER BY es.time {dir}, es.event_id {dir}")
        }
        Some(stream) => {
            let s = q.bind(stream.clone());
            q.push(&format!(
                "SELECT {EVENT_COLS} FROM event_streams es JOIN events e ON e.user_id = es.user_id AND e.id = es.event_id \
                 WHERE es.user_id = {u} AND es.stream_id = {s} AND e.deleted IS NULL"
            ));
            format!(" ORDER BY es.time {dir}, es.event_id {dir}")
        }
        None => {
            q.push(&format!("SELECT {EVENT_COLS} FROM events e WHERE e.user_id = {u} AND e.deleted IS NULL"));
            format!(" ORDER BY e.time {dir}, e.id {dir}")
        }
    };
    let time_col = if driving.is_some() { "es.time" } else { "e.time" };
    if let Some(floor) = time_floor {
        let p = q.bind(floor);
        q.push(&format!(" AND {time_col} >= {p}"));
    }
    if let Some(to) = f.to_time {
        let p = q.bind(to);
        q.push(&format!(" AND {time_col} <= {p}"));
    }
    time_and_state_conditions(f, &mut q);
    streams_and_types_conditions(f, &mut q);
    let limit = q.bind(f.limit.map(|l| l.min(i64::MAX as u64) as i64));
    let skip = q.bind(f.skip.min(i64::MAX as u64) as i64);
    q.push(&format!("{order} LIMIT {limit} OFFSET {skip}"));
    q
}

/// The longest duration and the oldest running event of a user (two lookups of
/// `events_duration`, which holds only those two kinds), from which a time range gets a lower
/// bound on `time`: no positive duration counts as 0.
const TIME_FLOOR_SQL: &str = "SELECT (SELECT MAX(duration) FROM events WHERE user_id = $1 AND duration > 0), \
     (SELECT MIN(time) FROM events WHERE user_id = $1 AND duration IS NULL)";

/// Deleted events after `since` that the query's streams and types would have covered.
fn deletions_query(user_id: &str, f: &EventFilter, since: Timestamp) -> Sql {
    let mut q = Sql::default();
    let (u, s) = (q.bind(user_id.to_string()), q.bind(since));
    q.push(&format!("SELECT e.id, e.deleted FROM events e WHERE e.user_id = {u} AND e.deleted IS NOT NULL AND e.deleted > {s}"));
    streams_and_types_conditions(f, &mut q);
    q.push(" ORDER BY e.deleted");
    q
}

fn time_and_state_conditions(f: &EventFilter, q: &mut Sql) {
    match f.state {
        StateFilter::Default => q.push(" AND e.trashed = 0"),
        StateFilter::Trashed => q.push(" AND e.trashed = 1"),
        StateFilter::All => {}
    }
    if let Some(from) = f.from_time {
        let p = q.bind(from);
        q.push(&format!(" AND (e.end_time IS NULL OR e.end_time >= {p})"));
    }
    match f.running {
        Some(true) => q.push(" AND e.duration IS NULL"),
        Some(false) => q.push(" AND e.duration IS NOT NULL"),
        None => {}
    }
    if let Some(since) = f.modified_since {
        let p = q.bind(since);
        q.push(&format!(" AND e.modified > {p}"));
    }
}

/// Types and streams queries. Each set of stream ids, and the exact types, are one array
/// parameter each: no input size reaches PostgreSQL's limits.
fn streams_and_types_conditions(f: &EventFilter, q: &mut Sql) {
    if !f.types.is_empty() {
        let exact: Vec<String> = f.types.iter().filter_map(|t| if let TypeFilter::Exact(x) = t { Some(x.clone()) } else { None }).collect();
        let classes: Vec<String> =
            f.types.iter().filter_map(|t| if let TypeFilter::Class(c) = t { Some(format!("{c}/%")) } else { None }).collect();
        // Only the parts that are there: an empty `OR … LIKE ANY('{}')` would keep the planner
        // from reading `events_type_time`.
        let mut parts = vec![];
        // One type is an equality, which reads that type's range of `events_type_time` in time
        // order; a set of them is one array parameter.
        if exact.len() == 1 {
            parts.push(format!("e.type = {}", q.bind(exact[0].clone())));
        } else if !exact.is_empty() {
            parts.push(format!("e.type = ANY({})", q.bind(exact)));
        }
        if !classes.is_empty() {
            parts.push(format!("e.type LIKE ANY({})", q.bind(classes)));
        }
        q.push(&format!(" AND ({})", parts.join(" OR ")));
    }
    let has = |set: &[String], q: &mut Sql| -> String {
        if set.is_empty() {
            return "FALSE".into();
        }
        let p = q.bind(set.to_vec());
        format!("EXISTS (SELECT 1 FROM event_streams es WHERE es.user_id = e.user_id AND es.event_id = e.id AND es.stream_id = ANY({p}))")
    };
    if let Some(c) = crate::groups_condition(&f.groups, |set| has(set, q), "TRUE") {
        q.push(&format!(" AND {c}"));
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, u: &User) -> StoreResult<()> {
        self.write_one(
            "INSERT INTO users (id, username, email, password_hash, language, created) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&u.id, &u.username, &u.email, &u.password_hash, &u.language, &u.created],
            false,
            vec![],
        )
        .await
        .map(drop)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let row =
            self.row("SELECT id, username, email, password_hash, language, created FROM users WHERE username = $1", &[&username]).await?;
        Ok(row.as_ref().map(user_from_row))
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let row = self.row("SELECT id, username, email, password_hash, language, created FROM users WHERE email = $1", &[&email]).await?;
        Ok(row.as_ref().map(user_from_row))
    }

    async fn update_user(&self, u: &User) -> StoreResult<()> {
        self.write_one(
            "UPDATE users SET email = $2, language = $3, password_hash = $4 WHERE id = $1",
            &[&u.id, &u.email, &u.language, &u.password_hash],
            true,
            vec![],
        )
        .await
        .map(drop)
    }

    async fn storage_used(&self, user_id: &str) -> StoreResult<StorageUsed> {
        let r = self
            .row(
                "SELECT (SELECT COUNT(*) FROM streams WHERE user_id = $1 AND deleted IS NULL) \
                 + (SELECT COUNT(*) FROM events WHERE user_id = $1 AND deleted IS NULL), \
                 (SELECT COALESCE(SUM((a->>'size')::BIGINT), 0)::BIGINT FROM events e, jsonb_array_elements(e.attachments::jsonb) a \
                  WHERE e.user_id = $1 AND e.deleted IS NULL AND e.attachments IS NOT NULL)",
                &[&user_id],
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(StorageUsed { db_documents: r.get::<_, i64>(0).max(0) as u64, attached_files: r.get::<_, i64>(1).max(0) as u64 })
    }

    async fn profile(&self, user_id: &str, id: &str) -> StoreResult<Option<Value>> {
        let row = self.row("SELECT data FROM profiles WHERE user_id = $1 AND id = $2", &[&user_id, &id]).await?;
        Ok(parse_json(row.map(|r| r.get(0))))
    }

    async fn put_profile(&self, user_id: &str, id: &str, profile: &Value) -> StoreResult<()> {
        let data = profile.to_string();
        self.write_one(
            "INSERT INTO profiles (user_id, id, data) VALUES ($1, $2, $3) ON CONFLICT (user_id, id) DO UPDATE SET data = excluded.data",
            &[&user_id, &id, &data],
            false,
            vec![],
        )
        .await
        .map(drop)
    }

    async fn insert_password_reset(&self, user_id: &str, token: &str, expires: Timestamp) -> StoreResult<()> {
        self.write_one(
            "INSERT INTO password_resets (token, user_id, expires) VALUES ($1, $2, $3)",
            &[&token, &user_id, &expires],
            false,
            vec![],
        )
        .await
        .map(drop)
    }

    async fn take_password_reset(&self, token: &str, now: Timestamp) -> StoreResult<Option<String>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let found = tx.query_opt("DELETE FROM password_resets WHERE token = $1 RETURNING user_id, expires", &[&token]).await.map_err(pg)?;
        tx.execute("DELETE FROM password_resets WHERE expires < $1", &[&now]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(found.filter(|r| r.get::<_, f64>(1) >= now).map(|r| r.get(0)))
    }

    async fn secret(&self, name: &str, fresh: &str) -> StoreResult<String> {
        let c = self.client().await?;
        c.execute("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&name, &fresh])
            .await
            .map_err(pg)?;
        let r = c.query_one("SELECT value FROM server_secrets WHERE name = $1", &[&name]).await.map_err(pg)?;
        Ok(r.get(0))
    }

    async fn create_file(&self, user_id: &str, file_id: &str) -> StoreResult<Box<dyn FileWriter>> {
        files::create(&self.pool, user_id, file_id).await
    }

    async fn read_file(&self, user_id: &str, file_id: &str) -> StoreResult<Option<FileChunks>> {
        files::read(&self.pool, user_id, file_id).await
    }

    async fn delete_files(&self, user_id: &str, file_ids: &[String]) -> StoreResult<()> {
        files::delete(&self.pool, user_id, file_ids).await
    }

    async fn insert_event_version(
        &self,
        user_id: &str,
        head_id: &str,
        version_id: &str,
        modified: Timestamp,
        version: &Value,
    ) -> StoreResult<()> {
        let data = version.to_string();
        self.write_one(
            "INSERT INTO event_versions (user_id, head_id, id, modified, data) VALUES ($1, $2, $3, $4, $5)",
            &[&user_id, &head_id, &version_id, &modified, &data],
            false,
            vec![],
        )
        .await
        .map(drop)
    }

    async fn event_history(&self, user_id: &str, head_id: &str) -> StoreResult<Vec<Value>> {
        let rows = self
            .rows("SELECT data FROM event_versions WHERE user_id = $1 AND head_id = $2 ORDER BY modified, id", &[&user_id, &head_id])
            .await?;
        Ok(rows.iter().filter_map(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()).collect())
    }

    async fn delete_event_history(&self, user_id: &str, head_id: &str, keep_authors: bool) -> StoreResult<()> {
        let sql = if keep_authors {
            "UPDATE event_versions SET data = json_build_object('id', data::json->'id', 'modified', data::json->'modified', \
             'modifiedBy', data::json->'modifiedBy')::text WHERE user_id = $1 AND head_id = $2"
        } else {
            "DELETE FROM event_versions WHERE user_id = $1 AND head_id = $2"
        };
        self.write_one(sql, &[&user_id, &head_id], false, vec![]).await.map(drop)
    }

    async fn access_by_token(&self, user_id: &str, token: &str) -> StoreResult<Option<Access>> {
        let sql = format!("SELECT {ACCESS_COLS} FROM accesses WHERE user_id = $1 AND token = $2 AND deleted IS NULL");
        Ok(self.row(&sql, &[&user_id, &token]).await?.as_ref().map(access_from_row))
    }

    async fn access_by_id(&self, user_id: &str, id: &str) -> StoreResult<Option<Access>> {
        let sql = format!("SELECT {ACCESS_COLS} FROM accesses WHERE user_id = $1 AND id = $2");
        Ok(self.row(&sql, &[&user_id, &id]).await?.as_ref().map(access_from_row))
    }

    async fn accesses(&self, user_id: &str, include_deleted: bool) -> StoreResult<Vec<Access>> {
        let filter = if include_deleted { "" } else { " AND deleted IS NULL" };
        let sql = format!("SELECT {ACCESS_COLS} FROM accesses WHERE user_id = $1{filter} ORDER BY created");
        Ok(self.rows(&sql, &[&user_id]).await?.iter().map(access_from_row).collect())
    }

    async fn insert_access(&self, user_id: &str, a: &Access, log: Changes) -> StoreResult<Changes> {
        let perms = Value::Array(a.permissions.iter().map(Permission::to_json).collect()).to_string();
        let sql =
            format!("INSERT INTO accesses (user_id, {ACCESS_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL)");
        let client_data = json_text(&a.client_data);
        self.write_one(
            &sql,
            &[
                &user_id,
                &a.id,
                &a.token,
                &a.access_type.as_str(),
                &a.name,
                &a.device_name,
                &perms,
                &a.expires,
                &client_data,
                &a.created,
                &a.created_by,
                &a.modified,
                &a.modified_by,
            ],
            false,
            log,
        )
        .await
    }

    async fn delete_accesses(&self, user_id: &str, ids: &[String], at: Timestamp, log: Changes) -> StoreResult<Changes> {
        self.write_one(
            "UPDATE accesses SET deleted = $3 WHERE user_id = $1 AND id = ANY($2) AND deleted IS NULL",
            &[&user_id, &ids, &at],
            false,
            log,
        )
        .await
    }

    async fn streams(&self, user_id: &str) -> StoreResult<Vec<Stream>> {
        let sql = format!("SELECT {STREAM_COLS} FROM streams WHERE user_id = $1 AND deleted IS NULL ORDER BY name");
        Ok(self.rows(&sql, &[&user_id]).await?.iter().map(stream_from_row).collect())
    }

    async fn stream_deletions(&self, user_id: &str, since: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        let rows = self
            .rows("SELECT id, deleted FROM streams WHERE user_id = $1 AND deleted IS NOT NULL AND deleted > $2", &[&user_id, &since])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn insert_stream(&self, user_id: &str, st: &Stream, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // A deleted stream's id may be reused: drop its tombstone first.
        tx.execute("DELETE FROM streams WHERE user_id = $1 AND id = $2 AND deleted IS NOT NULL", &[&user_id, &st.id]).await.map_err(pg)?;
        let client_data = json_text(&st.client_data);
        tx.execute(
            &format!("INSERT INTO streams (user_id, {STREAM_COLS}, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)"),
            &[
                &user_id,
                &st.id,
                &st.parent_id,
                &st.name,
                &client_data,
                &(st.trashed as i32),
                &st.created,
                &st.created_by,
                &st.modified,
                &st.modified_by,
            ],
        )
        .await
        .map_err(pg)?;
        let log = append_log(&tx, log).await?;
        commit(tx).await?;
        Ok(log)
    }

    async fn update_stream(&self, user_id: &str, st: &Stream, log: Changes) -> StoreResult<Changes> {
        let client_data = json_text(&st.client_data);
        self.write_one(
            "UPDATE streams SET parent_id = $3, name = $4, client_data = $5, trashed = $6, modified = $7, modified_by = $8 \
             WHERE user_id = $1 AND id = $2 AND deleted IS NULL",
            &[&user_id, &st.id, &st.parent_id, &st.name, &client_data, &(st.trashed as i32), &st.modified, &st.modified_by],
            true,
            log,
        )
        .await
    }

    async fn delete_streams(&self, user_id: &str, d: &StreamDeletion, at: Timestamp, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        for e in &d.events_to_update {
            update_event_in(&tx, user_id, e).await?;
        }
        for id in &d.events_to_delete {
            delete_event_in(&tx, user_id, id, at).await?;
        }
        tx.execute(
            "UPDATE streams SET deleted = $3, modified = $3, client_data = NULL WHERE user_id = $1 AND id = ANY($2) AND deleted IS NULL",
            &[&user_id, &d.stream_ids, &at],
        )
        .await
        .map_err(pg)?;
        let log = append_log(&tx, log).await?;
        commit(tx).await?;
        Ok(log)
    }

    async fn insert_event(&self, user_id: &str, e: &Event, log: Changes) -> StoreResult<Changes> {
        self.events.insert(user_id, e, log, None).await
    }

    async fn insert_event_fresh(&self, user_id: &str, e: &Event, log: Changes, seen: u64) -> StoreResult<Changes> {
        self.events.insert(user_id, e, log, Some(seen)).await
    }

    /// Queued together, they are written in one group (one transaction, one commit) unless a
    /// writer happens to be taking the queue as they arrive; each answered on its own.
    async fn insert_events_each(&self, user_id: &str, events: Vec<(Event, Changes)>) -> StoreResult<Vec<StoreResult<Changes>>> {
        Ok(self.events.insert_all(user_id, events).await)
    }

    /// All the events in one transaction (one commit), their statements pipelined on one
    /// connection a few hundred at a time rather than one round trip each.
    async fn insert_events(&self, user_id: &str, events: Vec<Event>, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let insert = tx.prepare(EVENT_INSERT).await.map_err(pg)?;
        let streams = tx
            .prepare("INSERT INTO event_streams (user_id, event_id, stream_id, time) SELECT $1, $2, s, $4 FROM unnest($3::text[]) AS s ON CONFLICT DO NOTHING")
            .await
            .map_err(pg)?;
        let pairs_insert = match events.iter().any(|e| stream_pairs(e).is_some()) {
            true => Some(tx.prepare(PAIRS_INSERT).await.map_err(pg)?),
            false => None,
        };
        for chunk in events.chunks(256) {
            let values: Vec<Vec<Param>> = chunk.iter().map(|e| event_values(user_id, e)).collect();
            futures::future::try_join_all(
                values.iter().map(|v| tx.execute_raw(&insert, v.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)))),
            )
            .await
            .map_err(pg)?;
            futures::future::try_join_all(chunk.iter().map(|e| {
                let params: [&(dyn ToSql + Sync); 4] = [&user_id, &e.id, &e.stream_ids, &e.time];
                tx.execute_raw(&streams, params)
            }))
            .await
            .map_err(pg)?;
            if let Some(pairs_insert) = &pairs_insert {
                let pairs: Vec<_> = chunk.iter().filter_map(|e| stream_pairs(e).map(|p| (e, p))).collect();
                futures::future::try_join_all(pairs.iter().map(|(e, (first, second))| {
                    let params: [&(dyn ToSql + Sync); 5] = [&user_id, &e.id, &e.time, first, second];
                    tx.execute_raw(pairs_insert, params)
                }))
                .await
                .map_err(pg)?;
            }
        }
        let log = append_log(&tx, log).await?;
        tx.commit().await.map_err(pg)?;
        Ok(log)
    }

    async fn event(&self, user_id: &str, id: &str) -> StoreResult<Option<Event>> {
        let sql = format!("SELECT {EVENT_COLS} FROM events e WHERE e.user_id = $1 AND e.id = $2 AND e.deleted IS NULL");
        Ok(self.row(&sql, &[&user_id, &id]).await?.as_ref().map(event_from_row))
    }

    async fn update_event(&self, user_id: &str, e: &Event, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        update_event_in(&tx, user_id, e).await?;
        let log = append_log(&tx, log).await?;
        commit(tx).await?;
        Ok(log)
    }

    async fn delete_event(&self, user_id: &str, id: &str, at: Timestamp, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        delete_event_in(&tx, user_id, id, at).await?;
        let log = append_log(&tx, log).await?;
        commit(tx).await?;
        Ok(log)
    }

    async fn find_events(&self, user_id: &str, f: &EventFilter) -> StoreResult<Vec<Event>> {
        let c = self.client().await?;
        let floor = match f.from_time {
            Some(_) => {
                let r = c.query_one(TIME_FLOOR_SQL, &[&user_id]).await.map_err(pg)?;
                crate::time_floor_from(f, r.get(0), r.get(1))
            }
            None => None,
        };
        let q = events_query(user_id, f, floor);
        let rows = c.query(&q.text, &refs(&q.params)).await.map_err(pg)?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    async fn event_deletions(&self, user_id: &str, f: &EventFilter, since: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        let q = deletions_query(user_id, f, since);
        let c = self.client().await?;
        let rows = c.query(&q.text, &refs(&q.params)).await.map_err(pg)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn stream_events(
        &self,
        user_id: &str,
        filter: &EventFilter,
        deletions_since: Option<Timestamp>,
        batch: usize,
    ) -> StoreResult<tokio::sync::mpsc::Receiver<StoreResult<crate::EventBatch>>> {
        // Two batches in flight at most: the reader waits for the client. The rows come through
        // a portal, `batch` at a time, so neither this process nor the driver holds more.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut client = self.client().await?;
        let (user, filter) = (user_id.to_string(), filter.clone());
        let deletions = deletions_since.map(|since| deletions_query(user_id, &filter, since));
        let batch = batch.clamp(1, i32::MAX as usize);
        tokio::spawn(async move {
            let run = async {
                // One snapshot for the events and the deletions.
                let t = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg)?;
                let floor = match filter.from_time {
                    Some(_) => {
                        let r = t.query_one(TIME_FLOOR_SQL, &[&user]).await.map_err(pg)?;
                        crate::time_floor_from(&filter, r.get(0), r.get(1))
                    }
                    None => None,
                };
                let events_q = events_query(&user, &filter, floor);
                let events = |rows: Vec<Row>| crate::EventBatch::Events(rows.iter().map(event_from_row).collect());
                if !send_portal(&t, &events_q, batch, &tx, events).await? {
                    return Ok(());
                }
                if let Some(q) = deletions {
                    let deleted = |rows: Vec<Row>| crate::EventBatch::Deletions(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
                    if !send_portal(&t, &q, batch, &tx, deleted).await? {
                        return Ok(());
                    }
                }
                t.commit().await.map_err(pg)
            };
            let result: StoreResult<()> = run.await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn events_in_streams(&self, user_id: &str, stream_ids: &[String]) -> StoreResult<Vec<Event>> {
        if stream_ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events e WHERE e.user_id = $1 AND e.deleted IS NULL AND EXISTS (SELECT 1 FROM event_streams es \
             WHERE es.user_id = e.user_id AND es.event_id = e.id AND es.stream_id = ANY($2))"
        );
        Ok(self.rows(&sql, &[&user_id, &stream_ids]).await?.iter().map(event_from_row).collect())
    }

    async fn insert_webhook(&self, user_id: &str, w: &Webhook, log: Changes) -> StoreResult<Changes> {
        let runs: Vec<(u16, f64)> = w.runs.iter().map(|r| (r.status, r.timestamp)).collect();
        let runs = serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into());
        let pending = serde_json::to_string(&w.pending).unwrap_or_else(|_| "[]".into());
        let scopes = json_text(&w.scopes);
        let sql = format!(
            "INSERT INTO webhooks (user_id, {WEBHOOK_COLS}, deleted) VALUES ({}, NULL)",
            (1..=20).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        self.write_one(
            &sql,
            &[
                &user_id,
                &w.id,
                &w.access_id,
                &w.url,
                &w.state.as_str(),
                &(w.run_count as i64),
                &(w.fail_count as i64),
                &(w.last_run.status as i32),
                &w.last_run.timestamp,
                &runs,
                &(w.current_retries as i64),
                &(w.max_retries as i64),
                &(w.min_interval_ms as i64),
                &scopes,
                &w.secret,
                &pending,
                &w.created,
                &w.created_by,
                &w.modified,
                &w.modified_by,
            ],
            false,
            log,
        )
        .await
    }

    async fn webhook(&self, user_id: &str, id: &str) -> StoreResult<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE user_id = $1 AND id = $2 AND deleted IS NULL");
        Ok(self.row(&sql, &[&user_id, &id]).await?.map(|r| webhook_from_row(&r, 0)))
    }

    async fn webhooks(&self, user_id: &str, access_id: Option<&str>) -> StoreResult<Vec<Webhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE user_id = $1 AND deleted IS NULL AND ($2::text IS NULL OR access_id = $2) ORDER BY modified DESC"
        );
        Ok(self.rows(&sql, &[&user_id, &access_id]).await?.iter().map(|r| webhook_from_row(r, 0)).collect())
    }

    async fn webhooks_page(&self, after: Option<(String, String)>, limit: usize) -> StoreResult<Vec<(String, Webhook)>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = match after {
            None => {
                let sql = format!("SELECT user_id, {WEBHOOK_COLS} FROM webhooks WHERE deleted IS NULL ORDER BY user_id, id LIMIT $1");
                self.rows(&sql, &[&limit]).await?
            }
            Some((u, i)) => {
                let sql = format!(
                    "SELECT user_id, {WEBHOOK_COLS} FROM webhooks WHERE (user_id, id) > ($1, $2) AND deleted IS NULL ORDER BY user_id, id LIMIT $3"
                );
                self.rows(&sql, &[&u, &i, &limit]).await?
            }
        };
        Ok(rows.iter().map(|r| (r.get(0), webhook_from_row(r, 1))).collect())
    }

    async fn update_webhook(&self, user_id: &str, w: &Webhook, log: Changes) -> StoreResult<Changes> {
        let scopes = json_text(&w.scopes);
        self.write_one(
            "UPDATE webhooks SET state = $3, current_retries = $4, scopes = $5, modified = $6, modified_by = $7 \
             WHERE user_id = $1 AND id = $2 AND deleted IS NULL",
            &[&user_id, &w.id, &w.state.as_str(), &(w.current_retries as i64), &scopes, &w.modified, &w.modified_by],
            true,
            log,
        )
        .await
    }

    async fn record_deliveries(&self, records: Vec<DeliveryRecord>, cursor: Option<LogCursor>) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        for r in records {
            let pending = serde_json::to_string(&r.pending).unwrap_or_else(|_| "[]".into());
            let Some(run) = r.run else {
                tx.execute(
                    "UPDATE webhooks SET pending = $3 WHERE user_id = $1 AND id = $2 AND deleted IS NULL",
                    &[&&*r.user_id, &&*r.webhook_id, &pending],
                )
                .await
                .map_err(pg)?;
                continue;
            };
            // The row is locked for the read-modify-write of `runs`.
            let Some(row) = tx
                .query_opt(
                    "SELECT runs FROM webhooks WHERE user_id = $1 AND id = $2 AND deleted IS NULL FOR UPDATE",
                    &[&&*r.user_id, &&*r.webhook_id],
                )
                .await
                .map_err(pg)?
            else {
                continue;
            };
            let mut runs: Vec<Run> = serde_json::from_str::<Vec<(u16, f64)>>(&row.get::<_, String>(0))
                .unwrap_or_default()
                .into_iter()
                .map(|(status, timestamp)| Run { status, timestamp })
                .collect();
            herald_model::webhook_machine::push_run(&mut runs, run, r.runs_size);
            let runs: Vec<(u16, f64)> = runs.iter().map(|r| (r.status, r.timestamp)).collect();
            let runs = serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into());
            tx.execute(
                "UPDATE webhooks SET state = CASE WHEN $3 = 'inactive' THEN 'inactive' ELSE state END, run_count = $4, fail_count = $5, \
                 current_retries = $6, last_run_status = $7, last_run_time = $8, runs = $9, pending = $10 \
                 WHERE user_id = $1 AND id = $2 AND deleted IS NULL",
                &[
                    &&*r.user_id,
                    &&*r.webhook_id,
                    &r.state.as_str(),
                    &(r.run_count as i64),
                    &(r.fail_count as i64),
                    &(r.current_retries as i64),
                    &(run.status as i32),
                    &run.timestamp,
                    &runs,
                    &pending,
                ],
            )
            .await
            .map_err(pg)?;
        }
        if let Some(cur) = cursor {
            // Never moves back: a late writer cannot undo a later save.
            tx.execute(
                "INSERT INTO change_log_consumers (name, seq, updated) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET seq = GREATEST(change_log_consumers.seq, excluded.seq), updated = excluded.updated",
                &[&cur.consumer, &(cur.seq as i64), &now_secs()],
            )
            .await
            .map_err(pg)?;
        }
        commit(tx).await
    }

    async fn delete_webhook(&self, user_id: &str, id: &str, at: Timestamp, log: Changes) -> StoreResult<Changes> {
        self.write_one(
            "UPDATE webhooks SET deleted = $3, pending = '[]' WHERE user_id = $1 AND id = $2 AND deleted IS NULL",
            &[&user_id, &id, &at],
            false,
            log,
        )
        .await
    }

    async fn count_webhooks(&self, user_id: &str, access_id: &str) -> StoreResult<u64> {
        let row = self
            .row("SELECT COUNT(*) FROM webhooks WHERE user_id = $1 AND access_id = $2 AND deleted IS NULL", &[&user_id, &access_id])
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0))
    }

    async fn changes_after(&self, after: u64, limit: usize) -> StoreResult<Vec<Change>> {
        let (after, limit) = (after.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64);
        let rows = self
            .rows(
                "SELECT seq, user_id, username, kind, change_type, items FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn last_seq(&self) -> StoreResult<u64> {
        // Trimming keeps the newest record, so this is the highest number ever given.
        let row = self.row("SELECT COALESCE(MAX(seq), 0) FROM change_log", &[]).await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0))
    }

    async fn log_cursor(&self, consumer: &str) -> StoreResult<u64> {
        let row = self.row("SELECT seq FROM change_log_consumers WHERE name = $1", &[&consumer]).await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0))
    }

    async fn trim_change_log(&self, before: Timestamp, limit: usize) -> StoreResult<u64> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let row = tx
            .query_one(
                "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0), \
                 (SELECT COALESCE(MIN(seq), 9223372036854775807) FROM change_log_consumers) FROM change_log",
                &[],
            )
            .await
            .map_err(pg)?;
        let (first, last, passed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if first == 0 {
            return Ok(0);
        }
        // `at` grows with `seq` (numbered under one lock): the first record still within the
        // retention is found along the primary key, past only the records old enough to go.
        // Behind every consumer, never the newest record, `limit` at most: the probe for the
        // first record still within the retention walks no further than that, however many
        // records a lagging consumer holds back.
        let bound = passed.min(last - 1).min(first.saturating_add(limit - 1));
        let young: Option<i64> = tx
            .query_opt("SELECT seq FROM change_log WHERE seq <= $2 AND at >= $1 ORDER BY seq LIMIT 1", &[&before, &bound])
            .await
            .map_err(pg)?
            .map(|r| r.get(0));
        let upto = young.map_or(bound, |y| y - 1);
        if upto < first {
            return Ok(0);
        }
        let n = tx.execute("DELETE FROM change_log WHERE seq <= $1", &[&upto]).await.map_err(pg)?;
        commit(tx).await?;
        Ok(n)
    }

    async fn change_log_stats(&self) -> StoreResult<LogStats> {
        let row = self.row("SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM change_log", &[]).await?;
        Ok(row
            .map(|r| LogStats { records: r.get::<_, i64>(0) as u64, first: r.get::<_, i64>(1) as u64, last: r.get::<_, i64>(2) as u64 })
            .unwrap_or_default())
    }

    async fn users_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        let (after, limit) = (after.unwrap_or(""), limit.min(i64::MAX as usize) as i64);
        let rows = self
            .rows(
                "SELECT id, username, email, password_hash, language, created FROM users WHERE username > $1 ORDER BY username LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| User {
                id: r.get(0),
                username: r.get(1),
                email: r.get(2),
                password_hash: r.get(3),
                language: r.get(4),
                created: r.get(5),
            })
            .collect())
    }

    async fn delete_user(&self, user_id: &str, log: Changes) -> StoreResult<Changes> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Attachments are rows here (`attachment_chunks`): they go in the same transaction.
        for table in [
            "event_stream_pairs",
            "event_streams",
            "event_versions",
            "attachment_chunks",
            "events",
            "streams",
            "webhooks",
            "accesses",
            "profiles",
            "password_resets",
            "users",
        ] {
            let column = if table == "users" { "id" } else { "user_id" };
            tx.execute(&format!("DELETE FROM {table} WHERE {column} = $1"), &[&user_id]).await.map_err(pg)?;
        }
        let log = append_log(&tx, log).await?;
        commit(tx).await?;
        Ok(log)
    }

    async fn insert_access_request(&self, r: &AccessRequest, now: Timestamp, max_live: u64) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Nodes creating requests at once count one after the other, so the cap holds.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACCESS_REQUESTS_LOCK]).await.map_err(pg)?;
        tx.execute("DELETE FROM access_requests WHERE expires <= $1", &[&now]).await.map_err(pg)?;
        let live: i64 = tx.query_one("SELECT COUNT(*) FROM access_requests", &[]).await.map_err(pg)?.get(0);
        if live as u64 >= max_live {
            return Ok(false);
        }
        let state = Value::Object(r.state.clone()).to_string();
        tx.execute(
            "INSERT INTO access_requests (key, status, state, created, expires) VALUES ($1, $2, $3, $4, $5)",
            &[&r.key, &r.status.as_str(), &state, &r.created, &r.expires],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn access_request(&self, key: &str) -> StoreResult<Option<AccessRequest>> {
        let row = self.row("SELECT key, status, state, created, expires FROM access_requests WHERE key = $1", &[&key]).await?;
        Ok(row.map(|r| AccessRequest {
            key: r.get(0),
            status: RequestStatus::parse(r.get::<_, &str>(1)).unwrap_or(RequestStatus::Error),
            state: serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default(),
            created: r.get(3),
            expires: r.get(4),
        }))
    }

    async fn decide_access_request(&self, r: &AccessRequest) -> StoreResult<bool> {
        let c = self.client().await?;
        let state = Value::Object(r.state.clone()).to_string();
        let n = c
            .execute(
                "UPDATE access_requests SET status = $2, state = $3 WHERE key = $1 AND status = 'NEED_SIGNIN'",
                &[&r.key, &r.status.as_str(), &state],
            )
            .await
            .map_err(pg)?;
        Ok(n == 1)
    }

    async fn shorten_access_request(&self, key: &str, expires: Timestamp) -> StoreResult<()> {
        let c = self.client().await?;
        c.execute("UPDATE access_requests SET expires = $2 WHERE key = $1 AND expires > $2", &[&key, &expires]).await.map_err(pg)?;
        Ok(())
    }

    async fn delete_access_request(&self, key: &str) -> StoreResult<()> {
        let c = self.client().await?;
        c.execute("DELETE FROM access_requests WHERE key = $1", &[&key]).await.map_err(pg)?;
        Ok(())
    }
}
