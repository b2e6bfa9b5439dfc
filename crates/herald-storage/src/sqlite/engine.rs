//! How Herald drives SQLite: one writer thread that commits writes in groups, and a small pool
//! of reader connections.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. Writes from
//! concurrent requests are therefore queued to a single thread that runs every queued write in
//! one transaction (each in its own savepoint, so one failing write does not undo the others)
//! and answers them all after the one `COMMIT`: durability per request at the price of one sync
//! per group ("group commit"). Readers use WAL snapshots and never wait for the writer.
//!
//! With durability `full` the sync stays inside the `COMMIT` (SQLite's `synchronous=FULL`),
//! because there SQLite makes a group visible to readers only once it is on disk: what anyone
//! reads has been synced, as well as what was acknowledged. (Tried: committing with `NORMAL`
//! and syncing the WAL from Herald before answering let the writer go on during the sync, but
//! readers saw each group before its sync, and a power cut could take away data someone had
//! read.) Checkpoints are not left inside a `COMMIT` either: see [`write_groups`].

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::{StoreError, StoreResult};

type Boxed = Box<dyn Any + Send>;
type WriteFn = Box<dyn FnOnce(&Connection) -> StoreResult<Boxed> + Send>;

struct WriteJob {
    run: WriteFn,
    reply: oneshot::Sender<StoreResult<Boxed>>,
}

/// How hard a commit pushes data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit is fsynced; survives power loss.
    Full,
    /// `synchronous=NORMAL` in WAL mode: survives a crash or `kill -9` of the process (the OS
    /// still has the data), not a power loss.
    Normal,
}

pub struct Engine {
    writer: mpsc::Sender<WriteJob>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            // "UNIQUE constraint failed: accesses.user_id, accesses.token" or "... index 'name'"
            let field = crate::conflict_field(msg);
            return StoreError::Conflict { field: field.into() };
        }
    }
    StoreError::Failure(e.to_string())
}

/// Page cache of the writer and of each reader, in KiB: small, the OS caches the file too.
const WRITER_CACHE_KIB: u32 = 8 * 1024;
const READER_CACHE_KIB: u32 = 2 * 1024;

fn open(path: &Path, durability: Durability, cache_kib: u32) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(path, flags).map_err(map_err)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=10000; PRAGMA cache_size=-{cache_kib}; PRAGMA temp_store=MEMORY;"
    ))
    .map_err(map_err)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

/// The schema's versions, oldest first. SQLite's `user_version` says which have run; a data dir
/// written by any earlier release is brought up to date at start, in one transaction. A data
/// dir from a newer release is refused rather than misread.
fn migrations() -> rusqlite_migration::Migrations<'static> {
    use rusqlite_migration::M;
    rusqlite_migration::Migrations::new(vec![
        // The first release made these tables with `IF NOT EXISTS` and left `user_version` at 0,
        // so this one runs harmlessly over a data dir it wrote.
        M::up(include_str!("migrations/001_initial.sql")),
        M::up(include_str!("migrations/002_change_log.sql")),
        M::up(include_str!("migrations/003_read_indexes.sql")),
        M::up(include_str!("migrations/004_account_attachments.sql")),
        // 004 belongs to issue 10 (attachments) and goes before this one when both are merged:
        // versions are positions in this list.
        M::up(include_str!("migrations/005_access_requests.sql")),
        M::up(include_str!("migrations/006_stream_pairs.sql")),
    ])
}

/// Bring the database's schema to the latest version.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    migrations().to_latest(conn).map_err(|e| StoreError::Failure(format!("schema migration failed: {e}")))
}

impl Engine {
    pub fn open(path: &Path, durability: Durability) -> StoreResult<Self> {
        let mut conn = open(path, durability, WRITER_CACHE_KIB)?;
        migrate(&mut conn)?;
        // A migration may leave a large WAL (migration 6 wrote ~150,000 rows for a user of a
        // million events), which every read consults until a checkpoint: readers served half
        // as many `events.get`/s until then. Nothing is open yet, so this one copies it all.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(map_err)?;
        let (tx, rx) = mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Failure(e.to_string()))?;
        let readers = (0..4).map(|_| open(path, durability, READER_CACHE_KIB)).collect::<StoreResult<Vec<_>>>()?;
        Ok(Engine { writer: tx, readers: Arc::new(Mutex::new(readers)), path: path.to_path_buf() })
    }

    /// Run `f` inside the next group transaction; resolves after the commit.
    pub async fn write<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static) -> StoreResult<T> {
        let (reply, rx) = oneshot::channel();
        let run: WriteFn = Box::new(move |c| f(c).map(|v| Box::new(v) as Boxed));
        self.writer.send(WriteJob { run, reply }).map_err(|_| StoreError::Failure("writer stopped".into()))?;
        let out = rx.await.map_err(|_| StoreError::Failure("writer stopped".into()))??;
        out.downcast::<T>().map(|b| *b).map_err(|_| StoreError::Failure("write result type".into()))
    }

    /// Run `f` on a reader connection, off the async threads.
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static) -> StoreResult<T> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().map_err(|_| StoreError::Failure("reader pool poisoned".into()))?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open(&path, Durability::Normal, READER_CACHE_KIB)?,
            };
            let out = f(&conn);
            if let Ok(mut pool) = readers.lock() {
                if pool.len() < 16 {
                    pool.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::Failure(e.to_string()))?
    }

    /// Run `f` on a reader connection on a blocking thread and return at once: for reads that
    /// hand their rows out as they go (through a bounded channel) instead of collecting them.
    pub fn spawn_read(&self, f: impl FnOnce(&Connection) + Send + 'static) {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().ok().and_then(|mut p| p.pop());
            let conn = match conn {
                Some(c) => c,
                None => match open(&path, Durability::Normal, READER_CACHE_KIB) {
                    Ok(c) => c,
                    Err(_) => return,
                },
            };
            f(&conn);
            if let Ok(mut pool) = readers.lock() {
                if pool.len() < 16 {
                    pool.push(conn);
                }
            }
        });
    }
}

/// Run a statement without parameters from the connection's statement cache.
fn step(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

/// The WAL's size in frames after the writer's last commit, as SQLite's WAL hook reports it.
type WalFrames = std::sync::atomic::AtomicI32;

/// Checkpoint once the WAL holds this many frames (pages): SQLite's own default threshold.
const CHECKPOINT_FRAMES: i32 = 1000;

/// SQLite's WAL hook on the writer connection: called after every commit with the WAL's size.
/// Registering it replaces SQLite's automatic checkpoint, which ran inside the `COMMIT` that
/// crossed the threshold: that commit's writers waited for a thousand pages to be copied into
/// the database file and synced before hearing that their own writes were durable.
unsafe extern "C" fn wal_committed(
    frames_seen: *mut std::ffi::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _name: *const std::ffi::c_char,
    frames: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: `frames_seen` is the `WalFrames` that `writer_loop` registered with the hook; it
    // outlives the registration (the hook is removed before it is dropped), and an atomic may be
    // written through a shared pointer.
    unsafe { (*(frames_seen as *const WalFrames)).store(frames, std::sync::atomic::Ordering::Relaxed) };
    rusqlite::ffi::SQLITE_OK
}

/// Set (or with `None`, remove) the WAL hook of the writer connection.
fn set_wal_hook(conn: &Connection, frames: Option<&WalFrames>) {
    let (hook, arg) = match frames {
        Some(f) => (Some(wal_committed as _), f as *const WalFrames as *mut std::ffi::c_void),
        None => (None, std::ptr::null_mut()),
    };
    // SAFETY: the handle is this open connection's, used on the thread that owns it; `arg` is
    // valid for as long as it stays registered (see `writer_loop`).
    unsafe {
        rusqlite::ffi::sqlite3_wal_hook(conn.handle(), hook, arg);
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteJob>) {
    let frames = WalFrames::new(0);
    set_wal_hook(&conn, Some(&frames));
    write_groups(&conn, &rx, &frames);
    set_wal_hook(&conn, None);
    drop(conn);
}

/// Run the queued writes in groups, one transaction and one `COMMIT` each, until the queue
/// closes.
fn write_groups(conn: &Connection, rx: &mpsc::Receiver<WriteJob>, frames: &WalFrames) {
    const MAX_GROUP: usize = 512;
    // A job taken from the queue to see whether any was waiting: it starts the next group.
    let mut next: Option<WriteJob> = None;
    loop {
        // Checkpoint here, once the previous group has been answered: a passive checkpoint, as
        // SQLite's automatic one (synced as the connection's `synchronous` says), but no writer
        // waits for it inside its commit, and when no
        // write is waiting it costs no one anything. The writer being idle meanwhile, it copies
        // every frame and the next transaction starts the WAL over (it stays small, and is
        // overwritten rather than appended to). Under a load that never leaves the queue
        // empty, it waits until the WAL is four times the threshold.
        let wal_frames = frames.load(std::sync::atomic::Ordering::Relaxed);
        if wal_frames >= CHECKPOINT_FRAMES && (next.is_none() || wal_frames >= 4 * CHECKPOINT_FRAMES) {
            let started = std::time::Instant::now();
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            frames.store(0, std::sync::atomic::Ordering::Relaxed);
            metrics::histogram!("herald_store_checkpoint_duration_seconds").record(started.elapsed().as_secs_f64());
        }
        let first = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // Operators watch these (docs/operations.md): a growing commit time with small groups
        // points at the disk, large groups at load.
        let started = std::time::Instant::now();
        metrics::histogram!("herald_store_commit_group_size").record(jobs.len() as f64);
        if let Err(e) = step(conn, "BEGIN IMMEDIATE") {
            let err = map_err(e);
            for j in jobs {
                let _ = j.reply.send(Err(err.clone()));
            }
            continue;
        }
        // Alone in its group, a job needs no savepoint: if it fails, the whole transaction is
        // rolled back instead (one client's writes then cost two statements fewer each).
        // Otherwise each job has its own, so one failing write does not undo the others.
        // Cached statements: a savepoint is then a step, not a parse.
        let alone = jobs.len() == 1;
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            if !alone {
                let _ = step(conn, "SAVEPOINT job");
            }
            let r = (job.run)(conn);
            if !alone {
                if r.is_err() {
                    let _ = step(conn, "ROLLBACK TO job");
                }
                let _ = step(conn, "RELEASE job");
            }
            results.push((job.reply, r));
        }
        if alone && results.iter().any(|(_, r)| r.is_err()) {
            let _ = conn.execute_batch("ROLLBACK");
            for (reply, r) in results {
                let _ = reply.send(r);
            }
            continue;
        }
        if let Err(e) = step(conn, "COMMIT") {
            let err = map_err(e);
            let _ = conn.execute_batch("ROLLBACK");
            for (reply, _) in results {
                let _ = reply.send(Err(err.clone()));
            }
            continue;
        }
        metrics::histogram!("herald_store_commit_duration_seconds").record(started.elapsed().as_secs_f64());
        for (reply, r) in results {
            let _ = reply.send(r);
        }
        // Whether writes are waiting (they start the next group): if none, the checkpoint, if
        // one is due, runs now.
        next = rx.try_recv().ok();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }
}
