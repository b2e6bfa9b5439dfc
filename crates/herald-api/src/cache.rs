//! Per-user caches of what nearly every request reads: the access behind a token and the
//! stream list (permissions are computed on the stream tree). Both change rarely compared to
//! events, and reading them from storage on every `events.create` doubled its cost.
//!
//! Correctness: every change of accesses or streams goes through [`crate::App::publish`] after
//! its commit and before its response, which invalidates the user's entry here. An entry loaded
//! from storage is only kept if no invalidation happened while it was being read (a generation
//! number per user), so a slow read cannot put back what a write just replaced.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use herald_model::access::Access;
use herald_model::change::{Change, ChangeKind};
use herald_model::stream::{Stream, StreamTree};

/// A user's live streams and the tree built from them, built once per change of streams.
pub struct UserStreams {
    pub list: Vec<Stream>,
    pub tree: StreamTree,
}

impl UserStreams {
    pub fn new(list: Vec<Stream>) -> Self {
        let tree = StreamTree::new(&list);
        UserStreams { list, tree }
    }
}

/// Methods take `&StreamTree`; a cached `UserStreams` stands for its tree.
impl std::ops::Deref for UserStreams {
    type Target = StreamTree;
    fn deref(&self) -> &StreamTree {
        &self.tree
    }
}

#[derive(Default)]
struct UserEntry {
    generation: u64,
    tokens: HashMap<String, Access>,
    streams: Option<Arc<UserStreams>>,
}

#[derive(Default)]
pub struct Cache {
    users: RwLock<HashMap<String, UserEntry>>,
}

/// Entries kept per user before the token map is simply cleared.
const MAX_TOKENS_PER_USER: usize = 1024;
/// Users kept before the whole cache is cleared (a crude but bounded policy).
const MAX_USERS: usize = 100_000;

impl Cache {
    pub fn generation(&self, user_id: &str) -> u64 {
        self.users.read().ok().and_then(|m| m.get(user_id).map(|e| e.generation)).unwrap_or(0)
    }

    pub fn access(&self, user_id: &str, token: &str) -> Option<Access> {
        self.users.read().ok()?.get(user_id)?.tokens.get(token).cloned()
    }

    pub fn streams(&self, user_id: &str) -> Option<Arc<UserStreams>> {
        self.users.read().ok()?.get(user_id)?.streams.clone()
    }

    fn with_entry(&self, user_id: &str, generation: u64, f: impl FnOnce(&mut UserEntry)) {
        let Ok(mut m) = self.users.write() else { return };
        if m.len() >= MAX_USERS && !m.contains_key(user_id) {
            m.clear();
        }
        let e = m.entry(user_id.to_string()).or_default();
        if e.generation == generation {
            f(e);
        }
    }

    pub fn put_access(&self, user_id: &str, generation: u64, access: &Access) {
        self.with_entry(user_id, generation, |e| {
            if e.tokens.len() >= MAX_TOKENS_PER_USER {
                e.tokens.clear();
            }
            e.tokens.insert(access.token.clone(), access.clone());
        });
    }

    pub fn put_streams(&self, user_id: &str, generation: u64, streams: Arc<UserStreams>) {
        self.with_entry(user_id, generation, |e| e.streams = Some(streams));
    }

    /// Forget what a committed change makes stale.
    pub fn invalidate(&self, change: &Change) {
        if !matches!(change.kind, ChangeKind::Accesses | ChangeKind::Streams) {
            return;
        }
        if let Ok(mut m) = self.users.write() {
            let e = m.entry(change.user_id.clone()).or_default();
            e.generation += 1;
            match change.kind {
                ChangeKind::Accesses => e.tokens.clear(),
                _ => e.streams = None,
            }
        }
    }
}
