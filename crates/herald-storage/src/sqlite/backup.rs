//! Copies of the SQLite store for `herald admin backup` and `restore`.
//!
//! The backup uses SQLite's online backup API in one step: the copy is one read transaction,
//! so it is consistent (a snapshot at one commit) and, in WAL mode, never blocks the server's
//! writer. Copying the file instead could tear a page being written, or miss the WAL.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{StoreError, StoreResult};

fn failure(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failure(format!("{what} {}: {e}", path.display()))
}

/// Copy the database at `src` into a new file `dest` (its directory is created). Answers the
/// pages copied.
pub fn backup(src: &Path, dest: &Path) -> StoreResult<u64> {
    if !src.exists() {
        return Err(failure("no store at", src, "missing"));
    }
    if dest.exists() {
        return Err(failure("will not overwrite", dest, "it exists"));
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failure("cannot create", dir, e))?;
    }
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| failure("cannot open", src, e))?;
    from.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| failure("cannot open", src, e))?;
    let mut to = Connection::open(dest).map_err(|e| failure("cannot create", dest, e))?;
    let pages = {
        let b = rusqlite::backup::Backup::new(&from, &mut to).map_err(|e| failure("cannot back up", src, e))?;
        // -1: every page in one step, one read transaction: a snapshot, never restarted by the
        // server's commits.
        b.step(-1).map_err(|e| failure("backup of", src, e))?;
        b.progress().pagecount as u64
    };
    // A backup is one self-contained file: no WAL beside it.
    to.pragma_update(None, "journal_mode", "DELETE").map_err(|e| failure("cannot finish", dest, e))?;
    Ok(pages)
}

/// Put the backup `src` in place of the database `dest` (the server must be stopped). The
/// backup is checked first; `dest`'s WAL files, which belong to the replaced database, go.
pub fn restore(src: &Path, dest: &Path, force: bool) -> StoreResult<()> {
    {
        let c = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| failure("cannot open", src, e))?;
        let check: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| failure("cannot check", src, e))?;
        if check != "ok" {
            return Err(failure("damaged backup", src, check));
        }
        c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0)).map_err(|e| failure("not a Herald store:", src, e))?;
    }
    if dest.exists() && !force {
        return Err(failure("a store exists at", dest, "stop the server, then pass --force to replace it"));
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failure("cannot create", dir, e))?;
    }
    // Copied beside, then renamed over: the data dir never holds half a database.
    let tmp = dest.with_extension("db.restoring");
    std::fs::copy(src, &tmp).map_err(|e| failure("cannot copy to", &tmp, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut p = dest.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(Path::new(&p));
    }
    std::fs::rename(&tmp, dest).map_err(|e| failure("cannot move into place", dest, e))?;
    Ok(())
}
