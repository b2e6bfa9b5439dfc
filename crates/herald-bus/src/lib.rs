//! The change bus: how the parts of Herald that react to data changes (the webhook dispatcher,
//! socket.io) hear about them, without the API knowing who listens.
//!
//! The API publishes a [`Change`] after the write is committed. Every subscriber receives every
//! change, in publication order. [`InProcessBus`] serves one node; [`nats::NatsBus`] carries
//! changes between the nodes of a cluster.
//!
//! A bus is for speed, never for truth: every change is in the store's change log, committed
//! with its data. A subscriber told that it [`Received::Lagged`] (it fell behind, or the bus lost
//! its connection to the other nodes) catches up from the log or drops what it caches.

use std::sync::Arc;

use async_trait::async_trait;
use herald_model::change::Change;
use tokio::sync::broadcast;

/// What a subscriber gets next.
#[derive(Debug, Clone)]
pub enum Received {
    Change(Arc<Change>),
    /// The subscriber fell behind and `n` changes were dropped for it: it must resynchronise
    /// (the dispatcher treats it as "everything may have changed").
    Lagged(u64),
}

#[async_trait]
pub trait Subscription: Send {
    /// The next change; `None` once the bus is closed.
    async fn recv(&mut self) -> Option<Received>;
}

pub trait ChangeBus: Send + Sync + 'static {
    /// Publish a committed change to every subscriber. Never blocks.
    fn publish(&self, change: Change);
    fn subscribe(&self) -> Box<dyn Subscription>;
    /// Whether changes published now reach the other nodes (`/health/ready`). In process: always.
    fn is_connected(&self) -> bool {
        true
    }
}

pub mod nats;

/// Short notes between the nodes of a cluster that are not changes and go to no log: a failed
/// login counted on one node, so that every node throttles the guesser alike. A node never
/// hears its own notes.
pub trait Gossip: Send + Sync + 'static {
    fn tell(&self, topic: &'static str, payload: Vec<u8>);
    /// Every note the other nodes tell on `topic` from now on.
    fn listen(&self, topic: &'static str) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>;
}

/// A bus inside one process: a broadcast channel.
pub struct InProcessBus {
    tx: broadcast::Sender<Received>,
}

impl InProcessBus {
    /// `capacity` changes may wait for the slowest subscriber before it lags.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        InProcessBus { tx }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(1 << 16)
    }
}

impl InProcessBus {
    /// Tell every subscriber that changes may have been missed (`Lagged(0)`): a bus that lost
    /// its link to the other nodes says so.
    pub fn resync(&self) {
        let _ = self.tx.send(Received::Lagged(0));
    }
}

struct InProcessSubscription {
    rx: broadcast::Receiver<Received>,
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(r) => Some(r),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl ChangeBus for InProcessBus {
    fn publish(&self, change: Change) {
        // No subscriber is not an error: nothing listens yet.
        let _ = self.tx.send(Received::Change(Arc::new(change)));
    }

    fn subscribe(&self) -> Box<dyn Subscription> {
        Box::new(InProcessSubscription { rx: self.tx.subscribe() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::change::{ChangeKind, ChangeType};

    fn change(n: usize) -> Change {
        Change {
            seq: 0,
            user_id: "u".into(),
            username: format!("user{n}"),
            kind: ChangeKind::Events,
            change_type: ChangeType::Create,
            items: vec![],
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_change_in_order() {
        let bus = InProcessBus::new(64);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for i in 0..3 {
            bus.publish(change(i));
        }
        for sub in [&mut a, &mut b] {
            for i in 0..3 {
                match sub.recv().await {
                    Some(Received::Change(c)) => assert_eq!(c.username, format!("user{i}")),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let bus = InProcessBus::new(16);
        let mut a = bus.subscribe();
        for i in 0..40 {
            bus.publish(change(i));
        }
        assert!(matches!(a.recv().await, Some(Received::Lagged(_))));
    }
}
