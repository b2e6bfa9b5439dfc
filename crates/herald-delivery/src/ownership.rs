//! Who delivers which webhooks in a cluster: the partitions of `herald_model::partition`, each
//! held by one node with a lease (`herald_storage::postgres::leases`), each delivered by a
//! dispatcher of its own with its own cursor in the change log.
//!
//! Every second a node counts the delivering nodes, works out its share (an even one, by its
//! rank among them) and moves towards it: it takes free partitions while it holds fewer, and hands back its
//! surplus when a node joined. A partition is handed back only after its dispatcher stopped:
//! no POST in flight, every run, pending message and the cursor saved. The next holder loads
//! that state and replays the log after that cursor, so in steady state and on a hand-over no
//! POST is sent twice. When a node dies, PostgreSQL drops its leases with its connections and
//! the others take its partitions at their next count: only its POSTs in flight may repeat,
//! with the same `webhook-id`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_bus::ChangeBus;
use herald_model::partition::{share, PARTITIONS};
use herald_storage::postgres::leases::PgLeases;
use herald_storage::Store;

use crate::dispatcher::{DispatcherHandle, DispatcherSettings, Ownership};
use crate::sender::Sender;

/// How often a node counts the members and moves towards its share: a dead node's partitions
/// are taken within this time of PostgreSQL dropping its leases.
const EVERY: Duration = Duration::from_millis(1000);

/// This node's part of the cluster's delivery.
#[derive(Clone)]
pub struct ClusterHandle {
    held: Arc<tokio::sync::Mutex<BTreeMap<u32, DispatcherHandle>>>,
    /// Notified once the first count has taken this node's share and loaded it.
    pub ready: Arc<tokio::sync::Notify>,
}

impl ClusterHandle {
    /// Save what every partition of this node decided (a graceful stop).
    pub async fn flush(&self, timeout: Duration) {
        let held: Vec<DispatcherHandle> = self.held.lock().await.values().cloned().collect();
        for d in held {
            d.flush(timeout).await;
        }
    }
}

/// Join the delivering nodes of the database behind `leases` and deliver this node's share.
pub fn start(
    leases: PgLeases,
    store: Arc<dyn Store>,
    bus: Arc<dyn ChangeBus>,
    sender: Arc<Sender>,
    settings: DispatcherSettings,
) -> ClusterHandle {
    let handle = ClusterHandle { held: Arc::default(), ready: Arc::new(tokio::sync::Notify::new()) };
    let (held, ready) = (handle.held.clone(), handle.ready.clone());
    tokio::spawn(async move {
        let mut first = true;
        loop {
            if let Err(e) = rebalance(&leases, &held, &store, &bus, &sender, &settings, first).await {
                tracing::error!(error = %e, "cannot count or take the delivery partitions; trying again");
            }
            if first {
                first = false;
                ready.notify_waiters();
                ready.notify_one();
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    handle
}

async fn rebalance(
    leases: &PgLeases,
    held: &tokio::sync::Mutex<BTreeMap<u32, DispatcherHandle>>,
    store: &Arc<dyn Store>,
    bus: &Arc<dyn ChangeBus>,
    sender: &Arc<Sender>,
    settings: &DispatcherSettings,
    first: bool,
) -> Result<(), herald_storage::StoreError> {
    if !leases.alive().await {
        // The leases went with the connection: other nodes may hold these partitions already.
        let lost: Vec<(u32, DispatcherHandle)> = std::mem::take(&mut *held.lock().await).into_iter().collect();
        if !lost.is_empty() {
            tracing::error!(partitions = lost.len(), "lost the delivery leases; stopping their delivery");
        }
        for (_, d) in lost {
            d.stop().await;
        }
        leases.rejoin().await?;
    }
    let (members, rank) = leases.members().await?;
    let target = share(members, rank, PARTITIONS);
    let mine = held.lock().await.len();
    if mine > target {
        // A node joined: hand back the surplus, each partition once its dispatcher has stopped.
        let surplus: Vec<(u32, DispatcherHandle)> = {
            let mut h = held.lock().await;
            let keys: Vec<u32> = h.keys().rev().take(mine - target).copied().collect();
            keys.into_iter().filter_map(|k| h.remove(&k).map(|d| (k, d))).collect()
        };
        for (n, d) in surplus {
            d.stop().await;
            leases.release(n).await?;
            tracing::info!(partition = n, members, "handed a delivery partition to another node");
        }
    } else if mine < target {
        // Nodes starting together may try the same numbers: a lock goes to one of them.
        for n in 0..PARTITIONS {
            if held.lock().await.len() >= target {
                break;
            }
            if held.lock().await.contains_key(&n) || !leases.try_take(n).await? {
                continue;
            }
            // Only the node starting a cluster on its own greets; a partition taken over from
            // another node resumes what was owed, and the log leaves nothing missed to announce.
            let greet = first && members == 1;
            let s = DispatcherSettings {
                ownership: Ownership::Partition(n),
                greet,
                concurrency: (settings.concurrency / PARTITIONS as usize).max(16),
                ..settings.clone()
            };
            let d = crate::dispatcher::start(store.clone(), bus.clone(), sender.clone(), s);
            d.ready.notified().await;
            held.lock().await.insert(n, d);
            tracing::info!(partition = n, members, "this node now delivers a partition of the webhooks");
        }
    }
    Ok(())
}
