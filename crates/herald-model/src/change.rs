//! A change: what the change bus carries after a write is committed. It names the kind of
//! resource, the user, and for each changed item the ids, stream ids and type that scoped
//! webhooks and socket.io subscriptions match on. It never carries content: receivers fetch that
//! with their own access.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Events,
    Streams,
    Accesses,
    /// A webhook was created, updated or deleted: internal, for the dispatcher only.
    Webhooks,
}

impl ChangeKind {
    /// The notification name of the webhooks guide and of socket.io.
    pub fn message(self) -> &'static str {
        match self {
            ChangeKind::Events => "eventsChanged",
            ChangeKind::Streams => "streamsChanged",
            ChangeKind::Accesses => "accessesChanged",
            ChangeKind::Webhooks => "webhooksChanged",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Events => "events",
            ChangeKind::Streams => "streams",
            ChangeKind::Accesses => "accesses",
            ChangeKind::Webhooks => "webhooks",
        }
    }
    /// Kinds that clients hear about (socket.io, unscoped webhooks).
    pub fn is_public(self) -> bool {
        self != ChangeKind::Webhooks
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "events" => Some(ChangeKind::Events),
            "streams" => Some(ChangeKind::Streams),
            "accesses" => Some(ChangeKind::Accesses),
            _ => None,
        }
    }
    /// [`ChangeKind::parse`], the internal `webhooks` included (reading the change log).
    pub fn parse_any(s: &str) -> Option<Self> {
        match s {
            "webhooks" => Some(ChangeKind::Webhooks),
            other => Self::parse(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    Create,
    Update,
    Trash,
    Delete,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Create => "create",
            ChangeType::Update => "update",
            ChangeType::Trash => "trash",
            ChangeType::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [ChangeType::Create, ChangeType::Update, ChangeType::Trash, ChangeType::Delete].into_iter().find(|t| t.as_str() == s)
    }
}

/// The identifying facts of one changed item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "lowercase")]
pub enum ChangedItem {
    Event {
        id: String,
        #[serde(rename = "streamIds")]
        stream_ids: Vec<String>,
        #[serde(rename = "type")]
        event_type: String,
    },
    Stream {
        id: String,
        #[serde(rename = "parentId")]
        parent_id: Option<String>,
    },
    Access {
        id: String,
        #[serde(rename = "type")]
        access_type: Option<String>,
        #[serde(rename = "streamIds")]
        stream_ids: Vec<String>,
    },
    /// A webhook was created, updated or deleted. `active` is its state after the change, so the
    /// dispatcher applies it before handling the next change (the rest it reloads).
    Webhook {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Its place in the change log: given by the store when the change commits with its data,
    /// and only ever growing. 0 until then.
    #[serde(default)]
    pub seq: u64,
    #[serde(rename = "userId")]
    pub user_id: String,
    pub username: String,
    pub kind: ChangeKind,
    #[serde(rename = "changeType")]
    pub change_type: ChangeType,
    pub items: Vec<ChangedItem>,
}

impl Change {
    /// A change not yet logged (`seq` 0): the store gives it its sequence number.
    pub fn new(user_id: &str, username: &str, kind: ChangeKind, change_type: ChangeType, items: Vec<ChangedItem>) -> Self {
        Change { seq: 0, user_id: user_id.into(), username: username.into(), kind, change_type, items }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_json() {
        let c = Change {
            seq: 7,
            user_id: "u1".into(),
            username: "alice".into(),
            kind: ChangeKind::Events,
            change_type: ChangeType::Create,
            items: vec![ChangedItem::Event { id: "e".into(), stream_ids: vec!["s".into()], event_type: "count/steps".into() }],
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"streamIds\":[\"s\"]"));
        assert_eq!(serde_json::from_str::<Change>(&s).unwrap(), c);
        assert_eq!(ChangeKind::Streams.message(), "streamsChanged");
    }
}
