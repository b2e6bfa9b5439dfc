//! Storage behind one trait.
//!
//! The API and the delivery engine see only [`Store`]: domain operations on users, accesses,
//! streams, events and webhooks, with no database type in any signature. The embedded SQLite
//! implementation ([`sqlite::SqliteStore`]) is the default; a PostgreSQL one can sit beside it
//! because the SQL used is plain (no SQLite-only functions beyond `json` text columns).
//!
//! Every write method returns only once the write is committed to disk: callers publish changes
//! on the bus after that, so a listener never hears of a change that a crash could undo.
//!
//! The change log is the transactional outbox. A write that publishes a change hands the
//! [`Change`]s to the store, which appends them to the log in the same transaction as the data
//! and gives each its sequence number (`seq`, only growing). So a change is committed if and
//! only if its record is; the bus then carries it for speed, but the log is the truth: the
//! webhook dispatcher keeps a durable cursor in it ([`Store::record_deliveries`]) and replays
//! what lies after the cursor when it starts.

use async_trait::async_trait;
use herald_model::access::Access;
use herald_model::access_request::AccessRequest;
use herald_model::change::Change;
use herald_model::event::Event;
use herald_model::query::EventFilter;
use herald_model::stream::Stream;
use herald_model::user::User;
use herald_model::webhook::{Run, Webhook, WebhookState};
use herald_model::Timestamp;

pub mod postgres;
pub mod retention;
pub mod sqlite;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit; `field` names it (e.g. `token`, `name`, `id`, `url`).
    #[error("duplicate {field}")]
    Conflict { field: String },
    #[error("not found")]
    NotFound,
    #[error("storage failure: {0}")]
    Failure(String),
    /// The change log shows that what a write relied on may have changed (see
    /// [`Store::insert_event_fresh`]); nothing was written.
    #[error("the change log holds changes the write did not account for")]
    Stale,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The changes a write appends to the change log in its own transaction; the store answers
/// with the same changes carrying their `seq`, ready for the bus.
pub type Changes = Vec<Change>;

/// A consumer's durable position in the change log: every change up to `seq` has had its whole
/// effect saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    pub consumer: &'static str,
    pub seq: u64,
}

/// The size of the change log, for operators and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    pub records: u64,
    /// Lowest and highest `seq` still kept (0 when the log is empty).
    pub first: u64,
    pub last: u64,
}

/// A part of a streamed `events.get` answer: events in the query's order, then (when asked)
/// the deletions, each list possibly in several parts.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBatch {
    Events(Vec<Event>),
    Deletions(Vec<(String, Timestamp)>),
}

/// What `streams.delete` does to the events of the deleted streams, decided by the API.
#[derive(Debug, Clone, Default)]
pub struct StreamDeletion {
    pub stream_ids: Vec<String>,
    /// Events rewritten (moved to the parent stream).
    pub events_to_update: Vec<Event>,
    /// Events deleted with the streams.
    pub events_to_delete: Vec<String>,
}

/// What the delivery engine saves about a webhook after a step: its counters and state, the run
/// that just finished (put in front of `runs`, which keeps `runs_size`), and what is pending.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// Shared with the dispatcher's entry: a burst of a million records allocates no ids.
    pub user_id: std::sync::Arc<str>,
    pub webhook_id: std::sync::Arc<str>,
    pub state: WebhookState,
    pub run_count: u64,
    pub fail_count: u64,
    pub current_retries: u32,
    pub run: Option<Run>,
    pub runs_size: usize,
    pub pending: Vec<String>,
}

/// The field a uniqueness violation is about, from the constraint's name or the database's
/// message (both stores name their indexes alike: `accesses_token`, `users_email_key`,
/// `streams_sibling_name`, …).
pub(crate) fn conflict_field(detail: &str) -> &'static str {
    ["token", "url", "email", "username", "name"].into_iter().find(|f| detail.contains(f)).unwrap_or("id")
}

/// The same set without repeats, in first-seen order.
pub(crate) fn dedup(set: &[String]) -> Vec<&String> {
    let mut seen = std::collections::HashSet::with_capacity(set.len());
    set.iter().filter(|s| seen.insert(s.as_str())).collect()
}

/// The stream whose index range drives the query, if one fits: a group whose `any` (or one of
/// whose `all` sets) is a single stream. Reading that stream's members in time order and
/// checking the other conditions per row stops after `limit` matches, whatever the user's other
/// events. Several groups, or sets of several streams, are read in the events' time order with
/// a membership check per row (fast when the streams are dense; see docs/performance.md).
/// Both stores choose by this rule.
pub(crate) fn driving_stream(f: &EventFilter) -> Option<&String> {
    if f.groups.len() != 1 || f.modified_since.is_some() {
        return None;
    }
    let g = &f.groups[0];
    fn single(set: &[String]) -> Option<&String> {
        let d = dedup(set);
        (d.len() == 1).then(|| d[0])
    }
    g.any.as_deref().and_then(single).or_else(|| g.all.iter().find_map(|set| single(set)))
}

/// The streams every event of a one-group query must be in (its `any` and `all` sets of a
/// single stream), when the query is driven by a stream (see [`driving_stream`]). With two or
/// more, both stores read the events the first shares with the second from
/// `event_stream_pairs`.
pub(crate) fn required_streams(f: &EventFilter) -> Vec<&String> {
    if driving_stream(f).is_none() {
        return vec![];
    }
    let g = &f.groups[0];
    let mut out: Vec<&String> = Vec::new();
    for set in g.any.iter().chain(g.all.iter()) {
        let d = dedup(set);
        if d.len() == 1 && !out.contains(&d[0]) {
            out.push(d[0]);
        }
    }
    out
}

/// A lower bound on `time` for events overlapping `[from, …]`: an event overlaps only if
/// `time + duration >= from`, so it started at least the longest duration before `from`, or it
/// is running and started no earlier than the oldest running event.
pub(crate) fn time_floor_from(f: &EventFilter, max_duration: Option<f64>, oldest_running: Option<f64>) -> Option<f64> {
    let from = f.from_time?;
    // One second of slack against rounding of `end_time`.
    let mut floor = from - max_duration.unwrap_or(0.0).max(0.0) - 1.0;
    if let Some(t) = oldest_running {
        floor = floor.min(t);
    }
    Some(floor)
}

/// The SQL condition of a streams query's groups: groups joined by OR, the parts of a group by
/// AND; `in_one_of(set)` is each store's "the event is in one of these streams", and `always`
/// its true constant. `None` when there is no group.
pub(crate) fn groups_condition(
    groups: &[herald_model::query::ResolvedGroup],
    mut in_one_of: impl FnMut(&[String]) -> String,
    always: &str,
) -> Option<String> {
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let mut conds = Vec::new();
        if let Some(any) = &g.any {
            conds.push(in_one_of(any));
        }
        for set in &g.all {
            conds.push(in_one_of(set));
        }
        if !g.not.is_empty() {
            conds.push(format!("NOT {}", in_one_of(&g.not)));
        }
        out.push(if conds.is_empty() { always.to_string() } else { format!("({})", conds.join(" AND ")) });
    }
    (!out.is_empty()).then(|| format!("({})", out.join(" OR ")))
}

/// An event's attachments as stored: a JSON array, or NULL when there are none.
pub(crate) fn attachments_text(list: &[herald_model::event::Attachment]) -> Option<String> {
    (!list.is_empty()).then(|| serde_json::to_string(list).unwrap_or_else(|_| "[]".into()))
}

pub(crate) fn attachments_from_text(s: Option<String>) -> Vec<herald_model::event::Attachment> {
    s.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
}

/// The size of what a user stores (`account.get`'s `storageUsed`): rows, and attached bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StorageUsed {
    /// Live streams and events.
    pub db_documents: u64,
    /// The sum of the live events' attachment sizes, in bytes.
    pub attached_files: u64,
}

/// A file being written to the store's file storage, chunk by chunk, so that no file is ever
/// whole in memory. It becomes readable only once [`FileWriter::finish`] answered; dropped or
/// [`FileWriter::abort`]ed before, what was written is removed.
#[async_trait]
pub trait FileWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> StoreResult<()>;
    async fn finish(self: Box<Self>) -> StoreResult<()>;
    async fn abort(self: Box<Self>);
}

/// A file read back in chunks, through a bounded channel.
pub type FileChunks = tokio::sync::mpsc::Receiver<StoreResult<bytes::Bytes>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Users
    /// Create a user. Conflicts on `username` or `email`.
    async fn create_user(&self, user: &User) -> StoreResult<()>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// Save a user's `email`, `language` and `password_hash`. Conflicts on `email`.
    async fn update_user(&self, user: &User) -> StoreResult<()>;
    async fn storage_used(&self, user_id: &str) -> StoreResult<StorageUsed>;

    // Profiles, password resets, secrets (issue 10)
    /// A profile set (`public`, `private`, `app:<name>`), if one was saved.
    async fn profile(&self, user_id: &str, id: &str) -> StoreResult<Option<serde_json::Value>>;
    async fn put_profile(&self, user_id: &str, id: &str, profile: &serde_json::Value) -> StoreResult<()>;
    async fn insert_password_reset(&self, user_id: &str, token: &str, expires: Timestamp) -> StoreResult<()>;
    /// The user of a reset token still valid at `now`; the token is used up (deleted) either way.
    async fn take_password_reset(&self, token: &str, now: Timestamp) -> StoreResult<Option<String>>;
    /// The secret stored under `name`; the first call stores `fresh` and answers it, so every
    /// node and every start of one database agrees on it.
    async fn secret(&self, name: &str, fresh: &str) -> StoreResult<String>;

    // Attachment files: outside the event rows, readable by every node sharing the store.
    async fn create_file(&self, user_id: &str, file_id: &str) -> StoreResult<Box<dyn FileWriter>>;
    /// The file's bytes in chunks, or `None` when there is no such file.
    async fn read_file(&self, user_id: &str, file_id: &str) -> StoreResult<Option<FileChunks>>;
    /// Remove files (unknown ones are ignored).
    async fn delete_files(&self, user_id: &str, file_ids: &[String]) -> StoreResult<()>;

    // Event history (`versioning.forceKeepHistory`)
    /// Keep `version` (a past state of the event `head_id`, in its API form) with id `version_id`.
    async fn insert_event_version(
        &self,
        user_id: &str,
        head_id: &str,
        version_id: &str,
        modified: Timestamp,
        version: &serde_json::Value,
    ) -> StoreResult<()>;
    /// The versions of an event, oldest `modified` first.
    async fn event_history(&self, user_id: &str, head_id: &str) -> StoreResult<Vec<serde_json::Value>>;
    /// At the event's deletion: drop its versions, or (`keep_authors`) keep of each only `id`,
    /// `modified` and `modifiedBy`.
    async fn delete_event_history(&self, user_id: &str, head_id: &str, keep_authors: bool) -> StoreResult<()>;

    // Accesses
    async fn access_by_token(&self, user_id: &str, token: &str) -> StoreResult<Option<Access>>;
    async fn access_by_id(&self, user_id: &str, id: &str) -> StoreResult<Option<Access>>;
    /// Live accesses; with `include_deleted`, deleted ones too.
    async fn accesses(&self, user_id: &str, include_deleted: bool) -> StoreResult<Vec<Access>>;
    /// Conflicts on `token` or on `name` (same type, name and device name).
    async fn insert_access(&self, user_id: &str, access: &Access, log: Changes) -> StoreResult<Changes>;
    async fn delete_accesses(&self, user_id: &str, ids: &[String], at: Timestamp, log: Changes) -> StoreResult<Changes>;

    // Streams
    /// Live streams (trashed included).
    async fn streams(&self, user_id: &str) -> StoreResult<Vec<Stream>>;
    /// (id, deleted) of streams deleted after `since`.
    async fn stream_deletions(&self, user_id: &str, since: Timestamp) -> StoreResult<Vec<(String, Timestamp)>>;
    /// Conflicts on `id` or `name` (among siblings).
    async fn insert_stream(&self, user_id: &str, stream: &Stream, log: Changes) -> StoreResult<Changes>;
    async fn update_stream(&self, user_id: &str, stream: &Stream, log: Changes) -> StoreResult<Changes>;
    /// Delete streams and apply the event changes, in one transaction.
    async fn delete_streams(&self, user_id: &str, deletion: &StreamDeletion, at: Timestamp, log: Changes) -> StoreResult<Changes>;

    // Events
    /// Conflicts on `id`.
    async fn insert_event(&self, user_id: &str, event: &Event, log: Changes) -> StoreResult<Changes>;
    /// [`Store::insert_event`], refused with [`StoreError::Stale`] (nothing written) when the
    /// change log holds, past `seen`, a change to the user's accesses or streams: checked in the
    /// write's own transaction. A node of a shared store that authorised the write from caches
    /// kept up to date to `seen` learns so, in the same round trip, whether they still hold,
    /// instead of reading the log before every request. A store that no other node writes has
    /// nothing to check: the default is `insert_event`.
    async fn insert_event_fresh(&self, user_id: &str, event: &Event, log: Changes, seen: u64) -> StoreResult<Changes> {
        let _ = seen;
        self.insert_event(user_id, event, log).await
    }
    /// Insert many events in one write (one transaction, one commit), with their changes: all
    /// or nothing. Conflicts on `id`. (Bulk loads: benchmarks, tests, imports.) The default
    /// writes them one by one, with `log` after the last: not atomic; SQLite overrides it.
    async fn insert_events(&self, user_id: &str, events: Vec<Event>, log: Changes) -> StoreResult<Changes> {
        let n = events.len();
        let mut log = Some(log);
        let mut out = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let l = if i + 1 == n { log.take().unwrap_or_default() } else { Vec::new() };
            out = self.insert_event(user_id, &e, l).await?;
        }
        match log {
            Some(l) if !l.is_empty() => Err(StoreError::Failure(format!("{} changes with no event to log them with", l.len()))),
            _ => Ok(out),
        }
    }
    async fn event(&self, user_id: &str, id: &str) -> StoreResult<Option<Event>>;
    async fn update_event(&self, user_id: &str, event: &Event, log: Changes) -> StoreResult<Changes>;
    /// Delete for good, keeping a tombstone for `includeDeletions`.
    async fn delete_event(&self, user_id: &str, id: &str, at: Timestamp, log: Changes) -> StoreResult<Changes>;
    async fn find_events(&self, user_id: &str, filter: &EventFilter) -> StoreResult<Vec<Event>>;
    /// (id, deleted) of events deleted after `since` that the filter's streams and types cover
    /// (so a token only learns of deletions in streams it can read).
    async fn event_deletions(&self, user_id: &str, filter: &EventFilter, since: Timestamp) -> StoreResult<Vec<(String, Timestamp)>>;
    /// Insert each event with its changes, independently (one failing leaves the others), in one
    /// write: one transaction, one commit, for a batch call's run of `events.create`. Answers
    /// one result per event, in order. The default inserts them one by one.
    async fn insert_events_each(&self, user_id: &str, events: Vec<(Event, Changes)>) -> StoreResult<Vec<StoreResult<Changes>>> {
        let mut out = Vec::with_capacity(events.len());
        for (e, log) in events {
            out.push(self.insert_event(user_id, &e, log).await);
        }
        Ok(out)
    }
    /// [`Store::find_events`] (then, with `deletions_since`, [`Store::event_deletions`]) handed
    /// out in batches of about `batch` through a bounded channel as they are read, from one
    /// snapshot: memory stays independent of the result's size. A dropped receiver stops the
    /// read. Both stores stream (SQLite from one read transaction, PostgreSQL
    /// through a portal).
    async fn stream_events(
        &self,
        user_id: &str,
        filter: &EventFilter,
        deletions_since: Option<Timestamp>,
        batch: usize,
    ) -> StoreResult<tokio::sync::mpsc::Receiver<StoreResult<EventBatch>>>;
    /// Live events having at least one of these streams (trashed included).
    async fn events_in_streams(&self, user_id: &str, stream_ids: &[String]) -> StoreResult<Vec<Event>>;

    // Webhooks
    /// Conflicts on `url` (same access and url among live webhooks).
    async fn insert_webhook(&self, user_id: &str, webhook: &Webhook, log: Changes) -> StoreResult<Changes>;
    async fn webhook(&self, user_id: &str, id: &str) -> StoreResult<Option<Webhook>>;
    /// Live webhooks of a user, optionally only those of one access.
    async fn webhooks(&self, user_id: &str, access_id: Option<&str>) -> StoreResult<Vec<Webhook>>;
    /// Live webhooks of every user with their user id, ordered by (user id, webhook id), `limit`
    /// at a time after `after`: the dispatcher loads a million of them without holding them all
    /// twice.
    async fn webhooks_page(&self, after: Option<(String, String)>, limit: usize) -> StoreResult<Vec<(String, Webhook)>>;
    /// Save what the API may change: `state`, `currentRetries`, `scopes` and the tracking fields.
    /// Delivery counters are the engine's ([`Store::record_deliveries`]), so neither side
    /// overwrites the other's fields.
    async fn update_webhook(&self, user_id: &str, webhook: &Webhook, log: Changes) -> StoreResult<Changes>;
    /// Save delivery steps, in order, in one transaction. Records of deleted webhooks are ignored.
    /// The engine only ever turns `state` inactive (after too many failures or a 410): an
    /// `active` in a record leaves the stored state as the API last set it.
    ///
    /// `cursor`, when given, is saved in the same transaction: the records and the position in
    /// the change log they account for are durable together.
    async fn record_deliveries(&self, records: Vec<DeliveryRecord>, cursor: Option<LogCursor>) -> StoreResult<()>;
    async fn delete_webhook(&self, user_id: &str, id: &str, at: Timestamp, log: Changes) -> StoreResult<Changes>;
    /// How many live webhooks an access owns (the per-access limit).
    async fn count_webhooks(&self, user_id: &str, access_id: &str) -> StoreResult<u64>;

    // The change log
    /// Up to `limit` changes with `seq` above `after`, in `seq` order.
    async fn changes_after(&self, after: u64, limit: usize) -> StoreResult<Vec<Change>>;
    /// The highest `seq` ever given (0 when none was): trimming the log does not lower it.
    async fn last_seq(&self) -> StoreResult<u64>;
    /// Where `consumer` last saved its cursor (0 when it never did).
    async fn log_cursor(&self, consumer: &str) -> StoreResult<u64>;
    /// Delete records that every consumer has passed and that were written before `before`,
    /// at most `limit` of them (the caller loops): the log stays bounded under constant load.
    /// The newest record is always kept (numbers must keep growing). Answers how many were
    /// deleted.
    async fn trim_change_log(&self, before: Timestamp, limit: usize) -> StoreResult<u64>;
    async fn change_log_stats(&self) -> StoreResult<LogStats>;

    // Operations (`herald admin`)
    /// Up to `limit` users with a username above `after`, by username.
    async fn users_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>>;
    /// Remove the user and everything of theirs (accesses, streams, events and their versions,
    /// webhooks, profiles, password resets, attached files) in one transaction, with `log` (the
    /// webhooks' deletions, so the dispatcher drops them). Files kept outside the database
    /// (SQLite's `attachments/`) are removed just after the commit.
    async fn delete_user(&self, user_id: &str, log: Changes) -> StoreResult<Changes>;

    // Access requests (Pryv's consent flow). Not users' data: no change is logged.
    /// Save a new request, first deleting the requests expired before `now` (so the table holds
    /// only live ones), unless `max_live` live requests already exist: then `Ok(false)`.
    async fn insert_access_request(&self, request: &AccessRequest, now: Timestamp, max_live: u64) -> StoreResult<bool>;
    /// The request with this key, expired or not (the caller decides).
    async fn access_request(&self, key: &str) -> StoreResult<Option<AccessRequest>>;
    /// Save the decided `request` if its stored status is still `NEED_SIGNIN` (a decided request
    /// never changes): whether it was saved.
    async fn decide_access_request(&self, request: &AccessRequest) -> StoreResult<bool>;
    /// Bring the request's expiry forward to `expires` if that is sooner (never later).
    async fn shorten_access_request(&self, key: &str, expires: Timestamp) -> StoreResult<()>;
    async fn delete_access_request(&self, key: &str) -> StoreResult<()>;
}
