//! The change bus between the nodes of a cluster, on NATS.
//!
//! Each node publishes the changes it commits on one subject and subscribes to it. Its own
//! changes reach its own subscribers at once, in process (the connection is opened with
//! `no_echo`, so NATS does not send them back); the other nodes' changes arrive from NATS. Core
//! NATS is enough: the bus only has to be fast, the change log in the shared store is what is
//! complete. When the connection drops and comes back, changes may have been missed meanwhile,
//! so every subscriber is told `Lagged(0)`: the dispatcher then reads the log, socket.io tells
//! its clients.
//!
//! The subject is `herald.<namespace>.changes`; the namespace (by default derived from the
//! database's identity) keeps two clusters that share a NATS server from hearing each other.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use herald_model::change::Change;
use tokio::sync::mpsc;

use crate::{ChangeBus, InProcessBus, Subscription};

pub struct NatsBus {
    local: Arc<InProcessBus>,
    /// (subject, payload) to publish, in order.
    outbox: mpsc::UnboundedSender<(String, Bytes)>,
    subject: String,
    client: async_nats::Client,
    namespace: String,
}

/// Namespaces go into a subject: keep them to letters, digits, `-` and `_`.
fn subject_for(namespace: &str) -> String {
    let clean: String = namespace.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("herald.{clean}.changes")
}

impl NatsBus {
    /// Connect to `url` (`nats://host:port`) and start relaying changes of `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<NatsBus, String> {
        let local = Arc::new(InProcessBus::default());
        let on_event = local.clone();
        let client = async_nats::ConnectOptions::new()
            .no_echo()
            .name("herald")
            .event_callback(move |event| {
                let local = on_event.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("change bus: connected to NATS again; subscribers resynchronise");
                            local.resync();
                        }
                        async_nats::Event::Disconnected => tracing::warn!("change bus: lost the connection to NATS"),
                        other => tracing::debug!(event = %other, "change bus: NATS event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        let subject = subject_for(namespace);
        let mut incoming = client.subscribe(subject.clone()).await.map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
        // Make sure the subscription is registered on the server before anything is published.
        client.flush().await.map_err(|e| format!("NATS flush: {e}"))?;
        let relay = local.clone();
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                match decode(&msg.payload) {
                    Ok(changes) => changes.into_iter().for_each(|c| relay.publish(c)),
                    Err(e) => tracing::warn!(error = %e, "change bus: a message that is not a change was ignored"),
                }
            }
        });
        // One task publishes, so the other nodes hear this node's changes in its order.
        let (outbox, mut queue) = mpsc::unbounded_channel::<(String, Bytes)>();
        let publisher = client.clone();
        tokio::spawn(async move {
            let mut waiting = None;
            loop {
                let (subject, payload) = match waiting.take() {
                    Some(m) => m,
                    None => match queue.recv().await {
                        Some(m) => m,
                        None => break,
                    },
                };
                // Changes queued meanwhile on the same subject go in the same message (a JSON
                // array): under load a group commit's changes arrive together, and one message
                // instead of one each halves what NATS and every node spend on them.
                let mut batch: Vec<Bytes> = vec![];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok((s, p)) if s == subject && p.first() == Some(&b'{') && payload.first() == Some(&b'{') => batch.push(p),
                        Ok(other) => {
                            waiting = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let payload = if batch.is_empty() { payload } else { join(payload, &batch) };
                if let Err(e) = publisher.publish(subject, payload).await {
                    tracing::warn!(error = %e, "change bus: publishing to NATS failed; other nodes will find the change in the log");
                }
            }
        });
        let clean = subject.trim_start_matches("herald.").trim_end_matches(".changes").to_string();
        Ok(NatsBus { local, outbox, subject, client, namespace: clean })
    }

    /// The NATS subject the changes travel on.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Most changes in one message: keeps a message far below NATS' default payload limit (1 MiB).
const MAX_BATCH: usize = 64;

/// `[first,rest…]`: one message for several changes, each already encoded as a JSON object.
fn join(first: Bytes, rest: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(2 + first.len() + rest.iter().map(|b| b.len() + 1).sum::<usize>());
    out.push(b'[');
    out.extend_from_slice(&first);
    for b in rest {
        out.push(b',');
        out.extend_from_slice(b);
    }
    out.push(b']');
    Bytes::from(out)
}

/// A message of the change subject: one change (an object), or several (an array, see `join`).
fn decode(payload: &[u8]) -> serde_json::Result<Vec<Change>> {
    if payload.first() == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice::<Change>(payload).map(|c| vec![c])
    }
}

impl ChangeBus for NatsBus {
    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn publish(&self, change: Change) {
        match serde_json::to_vec(&change) {
            Ok(bytes) => {
                let _ = self.outbox.send((self.subject.clone(), Bytes::from(bytes)));
            }
            Err(e) => tracing::error!(error = %e, "change bus: a change could not be encoded"),
        }
        self.local.publish(change);
    }

    fn subscribe(&self) -> Box<dyn Subscription> {
        self.local.subscribe()
    }
}

/// Notes travel on `herald.<namespace>.gossip.<topic>`.
impl crate::Gossip for NatsBus {
    fn tell(&self, topic: &'static str, payload: Vec<u8>) {
        let _ = self.outbox.send((format!("herald.{}.gossip.{topic}", self.namespace), Bytes::from(payload)));
    }

    fn listen(&self, topic: &'static str) -> mpsc::UnboundedReceiver<Vec<u8>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (client, subject) = (self.client.clone(), format!("herald.{}.gossip.{topic}", self.namespace));
        tokio::spawn(async move {
            let mut sub = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, %subject, "cannot listen to the other nodes");
                    return;
                }
            };
            while let Some(msg) = sub.next().await {
                if tx.send(msg.payload.to_vec()).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_safe() {
        assert_eq!(subject_for("abc-1_2"), "herald.abc-1_2.changes");
        assert_eq!(subject_for("a.b *>"), "herald.a_b___.changes");
    }
}
