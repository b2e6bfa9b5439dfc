//! Leases on the partitions of webhook delivery, for nodes sharing one PostgreSQL database.
//!
//! Each lease is a session advisory lock held on one connection of its own: PostgreSQL keeps it
//! while that connection lives and drops it the moment the connection closes, at a graceful stop
//! or a `kill -9` (the kernel closes the socket), so another node can take the partition at
//! once. Membership is a shared lock on the same connection, and `pg_locks` counts the members.
//! PostgreSQL is the arbiter: no heartbeat and no consensus of our own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_postgres::NoTls;

use herald_model::partition::consumers;

use super::pg;
use crate::StoreResult;

/// First key of every lease (ASCII "HRLD"); the second is 0 for membership, 1 + n for
/// partition n. Advisory locks belong to one database, so two clusters never meet here.
const LEASE_KEY: i32 = 0x4852_4c44;

pub struct PgLeases {
    config: tokio_postgres::Config,
    session: tokio::sync::Mutex<Option<Session>>,
}

struct Session {
    client: tokio_postgres::Client,
    /// Set when the connection ended: every lock it held is gone.
    lost: Arc<AtomicBool>,
}

impl PgLeases {
    /// Open the lease connection and join the delivering nodes. The connection's
    /// `application_name` is `herald` and the node's id, if it has one, so that
    /// `pg_stat_activity` joined with `pg_locks` shows which node holds which partition
    /// (docs/deployment.md).
    pub async fn join(url: &str, node_id: Option<&str>) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| crate::StoreError::Failure(format!("database URL: {e}")))?;
        config.application_name(&match node_id {
            Some(id) => format!("herald {id}"),
            None => "herald".to_string(),
        });
        let leases = PgLeases { config, session: tokio::sync::Mutex::new(None) };
        leases.rejoin().await?;
        Ok(leases)
    }

    /// Whether the locks taken so far are still held (the lease connection lives).
    pub async fn alive(&self) -> bool {
        self.session.lock().await.as_ref().is_some_and(|s| !s.lost.load(Ordering::Acquire))
    }

    /// Open a new lease connection and join again, holding no partition (after `alive` turned
    /// false, or at the start).
    pub async fn rejoin(&self) -> StoreResult<()> {
        let (client, conn) = self.config.connect(NoTls).await.map_err(pg)?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::error!(error = %e, "lost the connection that holds this node's delivery leases");
            }
            flag.store(true, Ordering::Release);
        });
        // A database written by a release with one delivery node has one cursor, "dispatcher":
        // each partition starts from it. Every partition's cursor exists from here on, so the
        // log's trimming waits for all of them.
        client
            .batch_execute(&format!(
                "BEGIN; \
                 INSERT INTO change_log_consumers (name, seq, updated) \
                   SELECT n, COALESCE((SELECT seq FROM change_log_consumers WHERE name = 'dispatcher'), 0), 0 \
                   FROM unnest(ARRAY[{}]) AS n ON CONFLICT (name) DO NOTHING; \
                 DELETE FROM change_log_consumers WHERE name = 'dispatcher'; \
                 COMMIT",
                consumers().iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(",")
            ))
            .await
            .map_err(pg)?;
        client.execute("SELECT pg_advisory_lock_shared($1, 0)", &[&LEASE_KEY]).await.map_err(pg)?;
        *self.session.lock().await = Some(Session { client, lost });
        Ok(())
    }

    /// Nodes delivering now (this one included), and this node's rank among them (by the
    /// server process of each lease connection), so that each node can work out a share of its
    /// own that, with the others', covers every partition exactly.
    pub async fn members(&self) -> StoreResult<(usize, usize)> {
        let guard = self.session.lock().await;
        let Some(s) = guard.as_ref() else { return Ok((0, 0)) };
        let rows = s
            .client
            .query(
                "SELECT pid = pg_backend_pid() FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = $1::int4::oid AND objid = 0::oid AND objsubid = 2 ORDER BY pid",
                &[&LEASE_KEY],
            )
            .await
            .map_err(pg)?;
        let rank = rows.iter().position(|r| r.get::<_, bool>(0)).unwrap_or(rows.len());
        Ok((rows.len().max(1), rank))
    }

    /// Take partition `n` if no node holds it.
    pub async fn try_take(&self, n: u32) -> StoreResult<bool> {
        let guard = self.session.lock().await;
        let Some(s) = guard.as_ref() else { return Ok(false) };
        let key2 = 1 + n as i32;
        Ok(s.client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LEASE_KEY, &key2]).await.map_err(pg)?.get(0))
    }

    /// Give partition `n` back (its dispatcher has stopped and saved everything).
    pub async fn release(&self, n: u32) -> StoreResult<()> {
        let guard = self.session.lock().await;
        let Some(s) = guard.as_ref() else { return Ok(()) };
        let key2 = 1 + n as i32;
        s.client.execute("SELECT pg_advisory_unlock($1, $2)", &[&LEASE_KEY, &key2]).await.map_err(pg)?;
        Ok(())
    }
}
