//! Saves delivery records in the order the dispatcher produced them. Records that queue up while
//! a save is running are written together in the next one, so a burst of deliveries costs a
//! few transactions, not one each.

use std::sync::Arc;

use herald_storage::{DeliveryRecord, Store};
use tokio::sync::mpsc;

pub fn start(store: Arc<dyn Store>) -> mpsc::UnboundedSender<DeliveryRecord> {
    let (tx, mut rx) = mpsc::unbounded_channel::<DeliveryRecord>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if let Err(e) = store.record_deliveries(batch).await {
                tracing::error!(error = %e, "saving webhook deliveries failed");
            }
        }
    });
    tx
}
