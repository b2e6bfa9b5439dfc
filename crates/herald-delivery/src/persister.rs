//! Saves delivery records in the order the dispatcher produced them. Records that queue up while
//! a save is running are written together in the next one, so a burst of deliveries costs a
//! few transactions, not one each.

use std::sync::Arc;

use herald_storage::{DeliveryRecord, Store};
use tokio::sync::{mpsc, oneshot};

pub enum Persist {
    Record(DeliveryRecord),
    /// Answer once everything sent before is saved (graceful shutdown).
    Flush(oneshot::Sender<()>),
}

pub fn start(store: Arc<dyn Store>) -> mpsc::UnboundedSender<Persist> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Persist>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![];
            let mut flushes = vec![];
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Persist::Record(r) => batch.push(r),
                    Persist::Flush(ack) => flushes.push(ack),
                }
                if batch.len() < 4096 && flushes.is_empty() {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                if let Err(e) = store.record_deliveries(batch).await {
                    tracing::error!(error = %e, "saving webhook deliveries failed");
                }
            }
            for ack in flushes {
                let _ = ack.send(());
            }
        }
    });
    tx
}
