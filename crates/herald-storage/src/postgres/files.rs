//! Attachment files of the PostgreSQL store, in the database itself (`attachment_chunks`), so
//! that every node of a cluster reads every file. A file is rows of at most [`CHUNK`] bytes,
//! numbered from 0, written and read one at a time: no file is ever whole in memory. Row -1,
//! empty, is written last and says the file is whole; a reader sees no file without it.

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{pg, pool_err};
use crate::{FileChunks, FileWriter, StoreError, StoreResult};

/// Bytes per row.
const CHUNK: usize = 256 * 1024;
/// The number of the row that marks a whole file.
const DONE: i32 = -1;

pub(crate) async fn create(pool: &Pool, user_id: &str, file_id: &str) -> StoreResult<Box<dyn FileWriter>> {
    Ok(Box::new(PgWriter { pool: pool.clone(), user_id: user_id.into(), file_id: file_id.into(), n: 0, buf: Vec::new(), open: true }))
}

pub(crate) async fn read(pool: &Pool, user_id: &str, file_id: &str) -> StoreResult<Option<FileChunks>> {
    let c = pool.get().await.map_err(pool_err)?;
    let whole = c
        .query_opt("SELECT 1 FROM attachment_chunks WHERE user_id = $1 AND file_id = $2 AND n = $3", &[&user_id, &file_id, &DONE])
        .await
        .map_err(pg)?;
    if whole.is_none() {
        return Ok(None);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (u, f) = (user_id.to_string(), file_id.to_string());
    tokio::spawn(async move {
        let st = match c.prepare_cached("SELECT data FROM attachment_chunks WHERE user_id = $1 AND file_id = $2 AND n = $3").await {
            Ok(st) => st,
            Err(e) => {
                let _ = tx.send(Err(pg(e))).await;
                return;
            }
        };
        for n in 0i32.. {
            match c.query_opt(&st, &[&u, &f, &n]).await {
                Ok(Some(row)) => {
                    let data: Vec<u8> = row.get(0);
                    if tx.send(Ok(bytes::Bytes::from(data))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(pg(e))).await;
                    return;
                }
            }
        }
    });
    Ok(Some(rx))
}

pub(crate) async fn delete(pool: &Pool, user_id: &str, file_ids: &[String]) -> StoreResult<()> {
    if file_ids.is_empty() {
        return Ok(());
    }
    let c = pool.get().await.map_err(pool_err)?;
    c.execute("DELETE FROM attachment_chunks WHERE user_id = $1 AND file_id = ANY($2)", &[&user_id, &file_ids]).await.map_err(pg)?;
    Ok(())
}

struct PgWriter {
    pool: Pool,
    user_id: String,
    file_id: String,
    n: i32,
    buf: Vec<u8>,
    open: bool,
}

impl PgWriter {
    async fn insert(&self, n: i32, data: &[u8]) -> StoreResult<()> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.execute(
            "INSERT INTO attachment_chunks (user_id, file_id, n, data) VALUES ($1, $2, $3, $4)",
            &[&self.user_id, &self.file_id, &n, &data],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn flush_full(&mut self) -> StoreResult<()> {
        while self.buf.len() >= CHUNK {
            let rest = self.buf.split_off(CHUNK);
            let full = std::mem::replace(&mut self.buf, rest);
            self.insert(self.n, &full).await?;
            self.n += 1;
        }
        Ok(())
    }
}

#[async_trait]
impl FileWriter for PgWriter {
    async fn write(&mut self, chunk: &[u8]) -> StoreResult<()> {
        if !self.open {
            return Err(StoreError::Failure("attachment file already closed".into()));
        }
        self.buf.extend_from_slice(chunk);
        self.flush_full().await
    }

    async fn finish(mut self: Box<Self>) -> StoreResult<()> {
        self.flush_full().await?;
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.insert(self.n, &last).await?;
        }
        self.insert(DONE, &[]).await?;
        self.open = false;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.open = false;
        let _ = delete(&self.pool, &self.user_id, std::slice::from_ref(&self.file_id)).await;
    }
}

impl Drop for PgWriter {
    /// Dropped unfinished (the request went away): its rows go, in the background.
    fn drop(&mut self) {
        if self.open {
            let (pool, u, f) = (self.pool.clone(), self.user_id.clone(), vec![self.file_id.clone()]);
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = delete(&pool, &u, &f).await;
                });
            }
        }
    }
}
