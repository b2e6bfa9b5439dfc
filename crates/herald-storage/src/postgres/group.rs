//! Group commit of `events.create` on PostgreSQL, as SQLite's writer does it (`sqlite/engine.rs`).
//!
//! The change log is numbered under one advisory lock held until the commit has reached the
//! disk, so log-writing commits happen one after the other: one WAL flush each, however many
//! connections. Creates are therefore queued to a writer task (or a few); each takes every create
//! waiting and writes them as ONE statement, `herald_create_events` (migration 8), which is its
//! own transaction: the freshness check, the events, their stream rows, and the log records
//! numbered under the lock, taken last. One round trip, one flush for the whole group, and the
//! lock held for the log insert and the commit only. Replies go out after the commit. (The group
//! was first eight pipelined statements, `BEGIN` to `COMMIT`: the same round trip, but each
//! statement's bind, snapshot and executor start cost PostgreSQL more than its work did.)
//!
//! A group that fails (a duplicate id, say) has been rolled back as a whole; its creates are
//! then written one by one, so each caller gets its own answer (`Conflict` for the duplicate).
//!
//! A group does not look for tombstones of its ids (an event deleted with the same id, whose
//! row stays): only a client-chosen id can meet one, and the insert then fails on the primary
//! key, which sends the group to the one-by-one writes, where the tombstone is removed first.
//! Looking for them in every group cost a join that the planner, planning the statement once
//! while the tables were small, ran as sequential scans of `events` and `event_streams`:
//! the most expensive statement of a create, growing with the tables.

use std::sync::Arc;

use deadpool_postgres::Pool;
use herald_model::event::Event;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{now_secs, pg, pool_err, record_commit, LOG_LOCK};
use crate::{Changes, StoreError, StoreResult};

/// The most creates one transaction takes; more wait for the next group.
const MAX_GROUP: usize = 1024;

struct Job {
    user_id: String,
    event: Event,
    log: Changes,
    /// Refuse the write if the log holds a change to the user's accesses or streams past this
    /// (`Store::insert_event_fresh`).
    seen: Option<u64>,
    reply: oneshot::Sender<StoreResult<Changes>>,
}

/// The queue of creates and the writer tasks that drain it.
pub(super) struct EventWriter {
    queue: mpsc::UnboundedSender<Job>,
}

impl EventWriter {
    /// Start `writers` writer tasks (`EVENT_WRITERS` says why one).
    pub(super) fn start(pool: Pool, writers: usize) -> EventWriter {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(run(pool.clone(), rx.clone()));
        }
        EventWriter { queue }
    }

    pub(super) async fn insert(&self, user_id: &str, event: &Event, log: Changes, seen: Option<u64>) -> StoreResult<Changes> {
        self.queue_all(user_id, vec![(event.clone(), log)], seen).await.pop().unwrap_or_else(|| Err(stopped()))
    }

    /// Queue them all at once (so they go in one group, in this order); one answer each.
    pub(super) async fn insert_all(&self, user_id: &str, events: Vec<(Event, Changes)>) -> Vec<StoreResult<Changes>> {
        self.queue_all(user_id, events, None).await
    }

    async fn queue_all(&self, user_id: &str, events: Vec<(Event, Changes)>, seen: Option<u64>) -> Vec<StoreResult<Changes>> {
        let mut answers = Vec::with_capacity(events.len());
        for (event, log) in events {
            let (reply, answer) = oneshot::channel();
            let sent = self.queue.send(Job { user_id: user_id.to_string(), event, log, seen, reply });
            answers.push((sent.is_ok(), answer));
        }
        let mut out = Vec::with_capacity(answers.len());
        for (sent, answer) in answers {
            out.push(if sent { answer.await.unwrap_or_else(|_| Err(stopped())) } else { Err(stopped()) });
        }
        out
    }
}

fn stopped() -> StoreError {
    StoreError::Failure("the event writer has stopped".into())
}

async fn run(pool: Pool, rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    loop {
        // One writer at a time waits on the queue; it takes all that is there and lets the
        // next writer wait while it writes.
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            jobs
        };
        write_group(&pool, jobs).await;
    }
}

/// How a pipelined transaction failed.
enum Failed {
    /// The server answered: the transaction was rolled back, nothing of it is committed.
    RolledBack(tokio_postgres::Error),
    /// The connection failed: whether the commit happened is unknown.
    Unknown(StoreError),
}

async fn write_group(pool: &Pool, jobs: Vec<Job>) {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            for j in jobs {
                let _ = j.reply.send(Err(pool_err(&e)));
            }
            return;
        }
    };
    let started = std::time::Instant::now();
    match write(&client, &jobs, false).await {
        Ok(seqs) => {
            record_commit(started, jobs.len());
            answer(jobs, seqs);
        }
        // Even a group of one: it may have met a tombstone, which only the one-by-one write removes.
        Err(Failed::RolledBack(_)) => {
            // Each on its own now, tombstones removed first: the failing one gets its error, the
            // others commit.
            for j in jobs {
                let started = std::time::Instant::now();
                let result = match write(&client, std::slice::from_ref(&j), true).await {
                    Ok(mut seqs) => {
                        record_commit(started, 1);
                        Ok(number(j.log, seqs.pop().unwrap_or(0)))
                    }
                    Err(Failed::RolledBack(e)) => Err(pg(e)),
                    Err(Failed::Unknown(e)) => Err(e),
                };
                let _ = j.reply.send(result);
            }
        }
        Err(failed) => {
            let e = match failed {
                Failed::RolledBack(e) => pg(e),
                Failed::Unknown(e) => e,
            };
            for j in jobs {
                let _ = j.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Give each job its answer: its changes numbered from its first `seq`.
fn answer(jobs: Vec<Job>, firsts: Vec<u64>) {
    for (j, first) in jobs.into_iter().zip(firsts) {
        let _ = j.reply.send(Ok(number(j.log, first)));
    }
}

pub(super) fn number(mut log: Changes, first: u64) -> Changes {
    for (i, ch) in log.iter_mut().enumerate() {
        ch.seq = first + i as u64;
    }
    log
}

/// The whole group as one statement, and so one transaction (migration 8): the freshness check,
/// tombstones out when asked (one-by-one writes only, see the module's comment), the events,
/// their stream rows, and the log records numbered under `LOG_LOCK`. Returns the first `seq`.
const CREATE_EVENTS: &str = "SELECT herald_create_events($1, $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], \
     $7::float8[], $8::float8[], $9::float8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int4[], $15::float8[], \
     $16::text[], $17::float8[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::float8[], $24, \
     $25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30)";

/// Appends records to the log, numbered under `LOG_LOCK` (migration 8; `herald_create_events`
/// calls the same function): the highest `seq` before them.
pub(super) const APPEND_LOG: &str = "SELECT herald_append_log($1, $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7)";

/// The log records' columns, as arrays for `herald_append_log`.
#[derive(Default)]
pub(super) struct LogRows {
    pub users: Vec<String>,
    pub names: Vec<String>,
    pub kinds: Vec<&'static str>,
    pub types: Vec<&'static str>,
    pub items: Vec<String>,
}

impl LogRows {
    pub(super) fn push(&mut self, log: &Changes) -> StoreResult<()> {
        for ch in log {
            self.users.push(ch.user_id.clone());
            self.names.push(ch.username.clone());
            self.kinds.push(ch.kind.as_str());
            self.types.push(ch.change_type.as_str());
            self.items.push(serde_json::to_string(&ch.items).map_err(|e| StoreError::Failure(e.to_string()))?);
        }
        Ok(())
    }
}

/// Write `jobs` as one transaction (a single statement); the first `seq` of each job.
/// `tombstones`: remove tombstones of the ids first.
async fn write(client: &deadpool_postgres::Object, jobs: &[Job], tombstones: bool) -> Result<Vec<u64>, Failed> {
    let create = client.prepare_cached(CREATE_EVENTS).await.map_err(Failed::RolledBack)?;

    let n = jobs.len();
    let (mut users, mut ids, mut stream_ids, mut times) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut durations, mut ends, mut types, mut contents) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut descriptions, mut client_datas, mut trasheds, mut createds) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut created_bys, mut modifieds, mut modified_bys, mut attachments) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut s_users, mut s_ids, mut s_streams, mut s_times) = (vec![], vec![], vec![], vec![]);
    let mut rows = LogRows::default();
    // Each user once, from the lowest `seen` of its jobs (the check reads the log past it).
    let mut fresh_since: Vec<(&str, i64)> = vec![];
    for j in jobs {
        if let Some(seen) = j.seen {
            let seen = seen.min(i64::MAX as u64) as i64;
            match fresh_since.iter_mut().find(|(u, _)| *u == j.user_id) {
                Some((_, s)) => *s = (*s).min(seen),
                None => fresh_since.push((j.user_id.as_str(), seen)),
            }
        }
        let e = &j.event;
        users.push(j.user_id.as_str());
        ids.push(e.id.as_str());
        stream_ids.push(serde_json::to_string(&e.stream_ids).unwrap_or_else(|_| "[]".into()));
        times.push(e.time);
        durations.push(e.duration);
        ends.push(e.end_time());
        types.push(e.event_type.as_str());
        contents.push(super::json_text(&e.content));
        descriptions.push(e.description.as_deref());
        client_datas.push(super::json_text(&e.client_data));
        trasheds.push(e.trashed as i32);
        createds.push(e.created);
        created_bys.push(e.created_by.as_str());
        modifieds.push(e.modified);
        modified_bys.push(e.modified_by.as_str());
        attachments.push(crate::attachments_text(&e.attachments));
        for s in crate::dedup(&e.stream_ids) {
            s_users.push(j.user_id.as_str());
            s_ids.push(e.id.as_str());
            s_streams.push(s.as_str());
            s_times.push(e.time);
        }
        rows.push(&j.log).map_err(Failed::Unknown)?;
    }
    let (f_users, f_seens): (Vec<&str>, Vec<i64>) = fresh_since.into_iter().unzip();
    let at = now_secs();

    let result = client
        .query_one(
            &create,
            &[
                &tombstones,
                &f_users,
                &f_seens,
                &users,
                &ids,
                &stream_ids,
                &times,
                &durations,
                &ends,
                &types,
                &contents,
                &descriptions,
                &client_datas,
                &trasheds,
                &createds,
                &created_bys,
                &modifieds,
                &modified_bys,
                &attachments,
                &s_users,
                &s_ids,
                &s_streams,
                &s_times,
                &LOG_LOCK,
                &rows.users,
                &rows.names,
                &rows.kinds,
                &rows.types,
                &rows.items,
                &at,
            ],
        )
        .await;
    let base = match result {
        Ok(row) => row.get::<_, i64>(0),
        // The server answered: the statement, and so its transaction, was rolled back.
        Err(e) if e.as_db_error().is_some() => return Err(Failed::RolledBack(e)),
        // A connection failure leaves the commit's outcome unknown.
        Err(e) => return Err(Failed::Unknown(pg(e))),
    };
    let mut next = base as u64 + 1;
    Ok(jobs
        .iter()
        .map(|j| {
            let first = next;
            next += j.log.len() as u64;
            first
        })
        .collect())
}
