//! Saves delivery records in the order the dispatcher produced them, with the dispatcher's
//! cursor in the change log. Records that queue up while a save is running are written together
//! in the next one, so a burst of deliveries costs a few transactions, not one each.
//!
//! The cursor says "every change up to here has had its effect on every webhook saved". The
//! dispatcher sends it after the records of those changes, and it is written in the same
//! transaction as the records before it (or a later one): a crash can never leave a cursor ahead
//! of the `pending` it vouches for. With no record to carry it, it is written at most once a
//! second on its own: a lagging cursor only means a little more to replay after a crash, and
//! replaying an already-saved change adds nothing (messages in `pending` are a set).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_storage::{DeliveryRecord, LogCursor, Store};
use tokio::sync::{mpsc, oneshot};

pub enum Persist {
    Record(DeliveryRecord),
    /// Every change up to this `seq` has been applied and its records queued before this.
    Cursor(u64),
    /// Answer once everything sent before is saved (graceful shutdown).
    Flush(oneshot::Sender<()>),
}

/// How often a cursor is saved when no record carries it.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// What a [`SavedWatcher`] calls: the user ids of the records a save has just made durable.
pub type OnSaved = dyn Fn(&[Arc<str>]) + Send + Sync;

#[derive(Clone)]
pub struct SavedWatcher(pub Arc<OnSaved>);

impl std::fmt::Debug for SavedWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SavedWatcher")
    }
}

pub fn start(store: Arc<dyn Store>, consumer: &'static str) -> mpsc::UnboundedSender<Persist> {
    start_watched(store, consumer, None)
}

/// [`start`], telling `watcher` whose records each save made durable.
pub fn start_watched(store: Arc<dyn Store>, consumer: &'static str, watcher: Option<SavedWatcher>) -> mpsc::UnboundedSender<Persist> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Persist>();
    tokio::spawn(async move {
        // A cursor received and not written yet.
        let mut unsaved: Option<u64> = None;
        let mut last_write = Instant::now();
        // After records were given up, the cursor must not pass them: it stays where it was
        // until the process restarts and replays from there.
        let mut stuck = false;
        loop {
            let first = match unsaved {
                None => rx.recv().await,
                Some(_) => match tokio::time::timeout(CURSOR_EVERY.saturating_sub(last_write.elapsed()), rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        save(&*store, vec![], unsaved.take().filter(|_| !stuck), consumer, &mut stuck).await;
                        last_write = Instant::now();
                        continue;
                    }
                },
            };
            let Some(first) = first else {
                save(&*store, vec![], unsaved.take().filter(|_| !stuck), consumer, &mut stuck).await;
                break;
            };
            let mut batch = vec![];
            let mut flushes = vec![];
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Persist::Record(r) => batch.push(r),
                    Persist::Cursor(seq) => unsaved = Some(unsaved.map_or(seq, |u| u.max(seq))),
                    Persist::Flush(ack) => flushes.push(ack),
                }
                if batch.len() < 4096 && flushes.is_empty() {
                    next = rx.try_recv().ok();
                }
            }
            let cursor_due = last_write.elapsed() >= CURSOR_EVERY;
            if !batch.is_empty() || !flushes.is_empty() || cursor_due {
                let mut users: Vec<Arc<str>> = match &watcher {
                    Some(_) => batch
                        .iter()
                        .filter(|r| r.run.is_some() || r.state != herald_model::webhook::WebhookState::Active)
                        .map(|r| r.user_id.clone())
                        .collect(),
                    None => vec![],
                };
                let saved = save(&*store, batch, unsaved.take().filter(|_| !stuck), consumer, &mut stuck).await;
                last_write = Instant::now();
                if let (Some(w), true) = (&watcher, saved) {
                    users.sort();
                    users.dedup();
                    if !users.is_empty() {
                        (w.0)(&users);
                    }
                }
            }
            for ack in flushes {
                let _ = ack.send(());
            }
        }
    });
    tx
}

/// Whether the records (if any) are now saved.
async fn save(store: &dyn Store, batch: Vec<DeliveryRecord>, cursor: Option<u64>, consumer: &'static str, stuck: &mut bool) -> bool {
    if batch.is_empty() && cursor.is_none() {
        return true;
    }
    let records = batch.len();
    if let Err(e) = store.record_deliveries(batch, cursor.map(|seq| LogCursor { consumer, seq })).await {
        tracing::error!(error = %e, records, "saving webhook deliveries failed; the change-log cursor stays where it was until restart");
        // Records were lost from storage: a later cursor must not vouch for them. The restart
        // replays from the last saved cursor.
        *stuck |= records > 0;
        return false;
    }
    true
}
