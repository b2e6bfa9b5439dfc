//! The dispatcher: every registered webhook of this node, the changes that reach them, their
//! timers, and the POSTs in flight.
//!
//! One task owns all state, so there are no locks: inputs (bus changes, POST results, reloads)
//! arrive on channels, timers sit in one binary heap, and each POST runs in its own short task.
//! At most `concurrency` POSTs run at once; the others wait in a queue of handles (8 bytes
//! each, so a boot greeting a million webhooks costs no million tasks). A webhook has at most
//! one POST in flight (its machine says so), and a slow endpoint only holds its own task, never
//! the loop: that is the isolation guarantee.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herald_bus::{ChangeBus, Received};
use herald_model::change::{Change, ChangeKind, ChangedItem};
use herald_model::id::new_id;
use herald_model::scope::{matched_keys, parse_scopes, Scope};
use herald_model::stream::StreamTree;
use herald_model::webhook::Webhook;
use herald_model::webhook_machine::{Machine, Outcome, Save, Step};
use herald_storage::{DeliveryRecord, Store};
use tokio::sync::mpsc;

use crate::sender::Sender;

pub use herald_model::webhook_machine::BOOT_MESSAGE;

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub runs_size: usize,
    /// POSTs in flight at once over all webhooks.
    pub concurrency: usize,
}

/// A registered webhook: slot index (low 32 bits) and the slot's generation (high 32 bits), so a
/// late POST result or timer for a removed webhook never reaches the one that reused its slot.
type Handle = u64;

/// One registered webhook: what a POST needs, and its machine. A node holds a million of these,
/// so it stays compact: the signing key is decoded inline, the delivery id exists only while a
/// delivery is being attempted.
struct Entry {
    user_id: Arc<str>,
    id: Arc<str>,
    url: Box<str>,
    key: crate::sender::SigningKey,
    scopes: Option<Arc<[Scope]>>,
    machine: Machine,
    /// `webhook-id` of the delivery being attempted, kept across retries of the same messages,
    /// with a hash of those messages (a retry that carries more is a new delivery).
    delivery_id: Option<Box<(Box<str>, u64)>>,
}

/// Webhook id → handle, keyed by a 64-bit hash of the id: 16-byte slots and no second copy of
/// the id (the entry's own id confirms a match). Ids whose hash is taken by another id, which
/// practically never happens, go to a side map.
#[derive(Default)]
struct IdIndex {
    by_hash: HashMap<u64, Handle>,
    collided: HashMap<Arc<str>, Handle>,
}

fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl IdIndex {
    fn get(&self, id: &str, entries: &Slab) -> Option<Handle> {
        match self.by_hash.get(&id_hash(id)) {
            Some(h) if entries.get(*h).is_some_and(|e| &*e.id == id) => Some(*h),
            _ => self.collided.get(id).copied(),
        }
    }
    fn insert(&mut self, id: Arc<str>, handle: Handle, entries: &Slab) {
        let key = id_hash(&id);
        match self.by_hash.get(&key) {
            Some(h) if entries.get(*h).is_some_and(|e| e.id != id) => {
                self.collided.insert(id, handle);
            }
            _ => {
                self.by_hash.insert(key, handle);
            }
        }
    }
    fn remove(&mut self, id: &str, entries: &Slab) -> Option<Handle> {
        if let Some(h) = self.collided.remove(id) {
            return Some(h);
        }
        let key = id_hash(id);
        let h = *self.by_hash.get(&key)?;
        if entries.get(h).is_some_and(|e| &*e.id == id) {
            self.by_hash.remove(&key);
            Some(h)
        } else {
            None
        }
    }
}

/// Entries in a vector indexed by handle: a million webhooks cost a million slots, not the
/// power-of-two table with spare room that a hash map would keep.
#[derive(Default)]
struct Slab {
    slots: Vec<(u32, Option<Entry>)>,
    free: Vec<u32>,
}

impl Slab {
    fn insert(&mut self, e: Entry) -> Handle {
        match self.free.pop() {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                slot.0 = slot.0.wrapping_add(1);
                slot.1 = Some(e);
                ((slot.0 as u64) << 32) | i as u64
            }
            None => {
                self.slots.push((0, Some(e)));
                (self.slots.len() - 1) as u64
            }
        }
    }
    fn slot(&self, h: Handle) -> Option<&(u32, Option<Entry>)> {
        self.slots.get((h & 0xffff_ffff) as usize).filter(|s| s.0 == (h >> 32) as u32)
    }
    fn get(&self, h: Handle) -> Option<&Entry> {
        self.slot(h)?.1.as_ref()
    }
    fn get_mut(&mut self, h: Handle) -> Option<&mut Entry> {
        let gen = (h >> 32) as u32;
        self.slots.get_mut((h & 0xffff_ffff) as usize).filter(|s| s.0 == gen)?.1.as_mut()
    }
    fn remove(&mut self, h: Handle) -> Option<Entry> {
        let gen = (h >> 32) as u32;
        let slot = self.slots.get_mut((h & 0xffff_ffff) as usize).filter(|s| s.0 == gen)?;
        let e = slot.1.take();
        if e.is_some() {
            self.free.push((h & 0xffff_ffff) as u32);
        }
        e
    }
    fn handles(&self) -> Vec<Handle> {
        self.slots.iter().enumerate().filter(|(_, s)| s.1.is_some()).map(|(i, s)| ((s.0 as u64) << 32) | i as u64).collect()
    }
}

enum Input {
    Result {
        handle: Handle,
        outcome: Outcome,
    },
    /// A webhook read from storage after a `webhooks` change; `None` if the read failed.
    Reload {
        user_id: Arc<str>,
        id: String,
        seq: u64,
        webhook: Option<Option<Box<Webhook>>>,
    },
    Messages(Vec<(Handle, Vec<String>)>),
    /// Save everything decided so far, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Lets the binary wait for the dispatcher to have loaded and greeted every webhook, and to
/// have saved what it decided before the process stops.
#[derive(Clone)]
pub struct DispatcherHandle {
    pub ready: Arc<tokio::sync::Notify>,
    inputs: mpsc::UnboundedSender<Input>,
}

impl DispatcherHandle {
    /// Wait (at most `timeout`) until every run and pending message decided so far is saved.
    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inputs.send(Input::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

struct Dispatcher {
    store: Arc<dyn Store>,
    sender: Arc<Sender>,
    settings: DispatcherSettings,
    entries: Slab,
    by_id: IdIndex,
    by_user: HashMap<Arc<str>, Vec<Handle>>,
    timers: BinaryHeap<Reverse<(u64, Handle)>>,
    inputs: mpsc::UnboundedSender<Input>,
    saves: mpsc::UnboundedSender<crate::persister::Persist>,
    /// POSTs running now.
    running: usize,
    /// Webhooks whose POST is decided but waits for a free slot.
    ready: VecDeque<Handle>,
    /// Shutdown asked: start no new POST, answer these once the running ones are done and saved.
    flush_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Reads of changed webhooks still under way, so that only the latest is applied and none
    /// brings back a webhook deleted meanwhile.
    reloads: HashMap<String, PendingReload>,
    reload_seq: u64,
}

struct PendingReload {
    latest: u64,
    outstanding: u32,
    deleted: bool,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0
}

fn scopes_of(w: &Webhook) -> Option<Arc<[Scope]>> {
    let s = parse_scopes(w.scopes.as_ref()?).ok()?;
    (!s.is_empty()).then(|| Arc::from(s))
}

/// Start the dispatcher: subscribe to the bus first (so nothing published during start-up is
/// missed), load every webhook, greet the active ones with `webhooksServiceBoot` plus whatever
/// was pending, then serve.
pub fn start(store: Arc<dyn Store>, bus: Arc<dyn ChangeBus>, sender: Arc<Sender>, settings: DispatcherSettings) -> DispatcherHandle {
    let mut sub = bus.subscribe();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let saves = crate::persister::start(store.clone());
    let ready = Arc::new(tokio::sync::Notify::new());
    let handle = DispatcherHandle { ready: ready.clone(), inputs: tx.clone() };
    let mut d = Dispatcher {
        store,
        sender,
        settings,
        entries: Slab::default(),
        by_id: IdIndex::default(),
        by_user: HashMap::new(),
        timers: BinaryHeap::new(),
        inputs: tx,
        saves,
        running: 0,
        ready: VecDeque::new(),
        flush_waiters: vec![],
        reloads: HashMap::new(),
        reload_seq: 0,
    };
    tokio::spawn(async move {
        d.boot().await;
        ready.notify_waiters();
        ready.notify_one();
        loop {
            let sleep = match d.timers.peek() {
                Some(Reverse((at, _))) => Duration::from_millis((*at as f64 - now_ms()).max(0.0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(i) => d.on_input(i),
                    None => break,
                },
                change = sub.recv() => match change {
                    Some(Received::Change(c)) => d.on_change(&c),
                    Some(Received::Lagged(n)) => d.on_lagged(n),
                    None => break,
                },
                _ = tokio::time::sleep(sleep) => d.on_timers(),
            }
        }
    });
    handle
}

impl Dispatcher {
    /// Load every webhook, then greet the active ones. Loading first keeps the million entries'
    /// long-lived allocations together, apart from the short-lived ones of a million POSTs, so
    /// the memory those POSTs used goes back to the system.
    async fn boot(&mut self) {
        let mut after: Option<(String, String)> = None;
        let mut active = Vec::new();
        loop {
            let page = match self.store.webhooks_page(after.clone(), 5000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot load webhooks; the dispatcher starts with those it has");
                    break;
                }
            };
            let Some((last_user, last)) = page.last() else { break };
            after = Some((last_user.clone(), last.id.clone()));
            for (user_id, w) in page {
                let h = self.register(Arc::from(user_id.as_str()), &w);
                if w.state == herald_model::webhook::WebhookState::Active {
                    active.push(h);
                }
            }
        }
        self.entries.slots.shrink_to_fit();
        self.by_id.by_hash.shrink_to_fit();
        let now = now_ms();
        for h in active {
            self.feed(h, |m| m.on_boot(now));
        }
    }

    fn register(&mut self, user_id: Arc<str>, w: &Webhook) -> Handle {
        // Registered already (created through the API while the boot was loading pages).
        if let Some(h) = self.by_id.get(w.id.as_str(), &self.entries) {
            return h;
        }
        let user_id = self.by_user.get_key_value(&user_id).map(|(k, _)| k.clone()).unwrap_or(user_id);
        let id: Arc<str> = Arc::from(w.id.as_str());
        let h = self.entries.insert(Entry {
            user_id: user_id.clone(),
            id: id.clone(),
            url: w.url.as_str().into(),
            key: crate::sender::SigningKey::from_secret(&w.secret),
            scopes: scopes_of(w),
            machine: Machine::new(w),
            delivery_id: None,
        });
        self.by_id.insert(id, h, &self.entries);
        self.by_user.entry(user_id).or_default().push(h);
        h
    }

    fn unregister(&mut self, id: &str) {
        let Some(h) = self.by_id.remove(id, &self.entries) else { return };
        if let Some(e) = self.entries.remove(h) {
            if let Some(list) = self.by_user.get_mut(&e.user_id) {
                list.retain(|x| *x != h);
                if list.is_empty() {
                    self.by_user.remove(&e.user_id);
                }
            }
        }
    }

    /// Run one machine transition and carry out its step.
    fn feed(&mut self, h: Handle, f: impl FnOnce(&mut Machine) -> Step) {
        let Some(e) = self.entries.get_mut(h) else { return };
        let step = f(&mut e.machine);
        if let Some(at) = step.wake_at {
            self.timers.push(Reverse((at.ceil() as u64, h)));
        }
        match step.save {
            Save::Nothing => {}
            Save::Pending => {
                let _ = self.saves.send(crate::persister::Persist::Record(record(
                    &e.user_id,
                    &e.id,
                    &e.machine,
                    None,
                    self.settings.runs_size,
                )));
            }
            Save::Run(run) => {
                let _ = self.saves.send(crate::persister::Persist::Record(record(
                    &e.user_id,
                    &e.id,
                    &e.machine,
                    Some(run),
                    self.settings.runs_size,
                )));
            }
        }
        if let Some(messages) = &step.send {
            // A new delivery gets a new webhook-id; retries of the very same messages keep it.
            let hash = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                messages.hash(&mut h);
                h.finish()
            };
            let same = e.machine.current_retries > 0 && e.delivery_id.as_ref().is_some_and(|d| d.1 == hash);
            if !same {
                e.delivery_id = Some(Box::new((format!("msg_{}", new_id()).into(), hash)));
            }
            self.ready.push_back(h);
            self.start_ready();
        } else if !e.machine.is_sending() && e.machine.current_retries == 0 {
            e.delivery_id = None;
        }
    }

    /// Once no POST runs, hand the shutdown's flush requests to the persister (after the
    /// records already queued).
    fn maybe_flush(&mut self) {
        if self.running == 0 {
            for ack in self.flush_waiters.drain(..) {
                let _ = self.saves.send(crate::persister::Persist::Flush(ack));
            }
        }
    }

    /// Start queued POSTs while there is room.
    fn start_ready(&mut self) {
        while self.flush_waiters.is_empty() && self.running < self.settings.concurrency.max(1) {
            let Some(h) = self.ready.pop_front() else { return };
            let Some(e) = self.entries.get(h) else { continue };
            let Some(messages) = e.machine.in_flight().map(<[String]>::to_vec) else { continue };
            self.running += 1;
            let (sender, tx) = (self.sender.clone(), self.inputs.clone());
            let (url, key, msg_id) = (e.url.clone(), e.key.clone(), e.delivery_id.as_ref().map(|d| d.0.clone()).unwrap_or_default());
            tokio::spawn(async move {
                let outcome = sender.post_signed(&url, &key, &msg_id, &messages).await;
                let _ = tx.send(Input::Result { handle: h, outcome });
            });
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Result { handle, outcome } => {
                self.running -= 1;
                let now = now_ms();
                self.feed(handle, |m| m.on_result(outcome, now));
                self.start_ready();
                self.maybe_flush();
            }
            Input::Flush(ack) => {
                self.flush_waiters.push(ack);
                self.maybe_flush();
            }
            Input::Messages(list) => {
                let now = now_ms();
                for (h, msgs) in list {
                    self.feed(h, |m| m.on_messages(&msgs, now));
                }
            }
            Input::Reload { user_id, id, seq, webhook } => {
                let Some(p) = self.reloads.get_mut(&id) else { return };
                p.outstanding -= 1;
                let current = !p.deleted && p.latest == seq;
                if p.outstanding == 0 {
                    self.reloads.remove(&id);
                }
                let Some(webhook) = webhook.filter(|_| current) else { return };
                match (webhook, self.by_id.get(id.as_str(), &self.entries)) {
                    (None, _) => self.unregister(&id),
                    (Some(w), Some(h)) => {
                        if let Some(e) = self.entries.get_mut(h) {
                            e.scopes = scopes_of(&w);
                        }
                        let now = now_ms();
                        self.feed(h, |m| m.on_update(w.state, now));
                    }
                    (Some(w), None) => {
                        self.register(user_id, &w);
                    }
                }
            }
        }
    }

    fn on_change(&mut self, c: &Change) {
        if c.kind == ChangeKind::Webhooks {
            for item in &c.items {
                if let ChangedItem::Webhook { id, active } = item {
                    // What the change says is applied now, before the next change is routed.
                    if c.change_type == herald_model::change::ChangeType::Delete {
                        self.unregister(id);
                        if let Some(p) = self.reloads.get_mut(id.as_str()) {
                            p.deleted = true;
                        }
                        continue;
                    }
                    if let (Some(active), Some(h)) = (active, self.by_id.get(id.as_str(), &self.entries)) {
                        let state = if *active {
                            herald_model::webhook::WebhookState::Active
                        } else {
                            herald_model::webhook::WebhookState::Inactive
                        };
                        let now = now_ms();
                        self.feed(h, |m| m.on_update(state, now));
                    }
                    // Scopes (and a webhook this node does not hold yet) come from storage.
                    self.reload_seq += 1;
                    let seq = self.reload_seq;
                    let p = self.reloads.entry(id.clone()).or_insert(PendingReload { latest: seq, outstanding: 0, deleted: false });
                    p.latest = seq;
                    p.outstanding += 1;
                    let (store, tx, user_id, id) = (self.store.clone(), self.inputs.clone(), c.user_id.clone(), id.clone());
                    tokio::spawn(async move {
                        let webhook = store.webhook(&user_id, &id).await.ok().map(|w| w.map(Box::new));
                        let _ = tx.send(Input::Reload { user_id: Arc::from(user_id.as_str()), id, seq, webhook });
                    });
                }
            }
            return;
        }
        let Some(handles) = self.by_user.get(c.user_id.as_str()).cloned() else { return };
        let now = now_ms();
        let mut scoped = Vec::new();
        for h in handles {
            match self.entries.get(h).and_then(|e| e.scopes.clone()) {
                None => self.feed(h, |m| m.on_message(c.kind.message(), now)),
                Some(s) => scoped.push((h, s)),
            }
        }
        if scoped.is_empty() {
            return;
        }
        // Scopes match against the stream tree as it is now: load it off the loop.
        let (store, tx, change) = (self.store.clone(), self.inputs.clone(), c.clone());
        tokio::spawn(async move {
            let Ok(streams) = store.streams(&change.user_id).await else { return };
            let tree = StreamTree::new(&streams);
            let list: Vec<(Handle, Vec<String>)> = scoped
                .into_iter()
                .map(|(h, s)| (h, matched_keys(&s, &change, &tree).into_iter().map(str::to_owned).collect::<Vec<_>>()))
                .filter(|(_, keys)| !keys.is_empty())
                .collect();
            if !list.is_empty() {
                let _ = tx.send(Input::Messages(list));
            }
        });
    }

    /// Changes were dropped for us: tell every webhook that anything may have changed.
    fn on_lagged(&mut self, n: u64) {
        tracing::warn!(dropped = n, "the dispatcher lagged behind the change bus; notifying every webhook");
        let now = now_ms();
        for h in self.entries.handles() {
            let msgs: Vec<String> = match self.entries.get(h).and_then(|e| e.scopes.clone()) {
                Some(s) => s.iter().map(|s| s.key.clone()).collect(),
                None => [ChangeKind::Events, ChangeKind::Streams, ChangeKind::Accesses].iter().map(|k| k.message().to_string()).collect(),
            };
            self.feed(h, |m| m.on_messages(&msgs, now));
        }
    }

    fn on_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, h))) = self.timers.peek().copied() {
            if at as f64 > now {
                break;
            }
            self.timers.pop();
            self.feed(h, |m| m.on_timer(at as f64, now));
        }
    }
}

fn record(user_id: &Arc<str>, id: &Arc<str>, m: &Machine, run: Option<herald_model::webhook::Run>, runs_size: usize) -> DeliveryRecord {
    DeliveryRecord {
        user_id: user_id.clone(),
        webhook_id: id.clone(),
        state: m.state(),
        run_count: m.run_count,
        fail_count: m.fail_count,
        current_retries: m.current_retries,
        run,
        runs_size,
        pending: m.pending().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::webhook::Webhook;

    fn entry(id: &str) -> Entry {
        let w = Webhook::new(id.into(), "a", "http://x", 10, 5, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), 0.0);
        Entry {
            user_id: Arc::from("u"),
            id: Arc::from(id),
            url: w.url.as_str().into(),
            key: crate::sender::SigningKey::from_secret(&w.secret),
            scopes: None,
            machine: Machine::new(&w),
            delivery_id: None,
        }
    }

    #[test]
    fn slab_handles_are_not_reused_by_stale_holders() {
        let mut slab = Slab::default();
        let a = slab.insert(entry("a"));
        assert!(slab.remove(a).is_some());
        let b = slab.insert(entry("b"));
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "the slot is reused");
        assert!(slab.get(a).is_none(), "but the old handle no longer reaches it");
        assert_eq!(&*slab.get(b).unwrap().id, "b");
    }

    #[test]
    fn id_index_finds_inserts_and_removes() {
        let mut slab = Slab::default();
        let mut index = IdIndex::default();
        let (a, b) = (slab.insert(entry("a")), slab.insert(entry("b")));
        index.insert(Arc::from("a"), a, &slab);
        index.insert(Arc::from("b"), b, &slab);
        assert_eq!(index.get("a", &slab), Some(a));
        assert_eq!(index.get("b", &slab), Some(b));
        assert_eq!(index.get("c", &slab), None);
        assert_eq!(index.remove("a", &slab), Some(a));
        slab.remove(a);
        assert_eq!(index.get("a", &slab), None);
        assert_eq!(index.remove("a", &slab), None);
        assert_eq!(index.get("b", &slab), Some(b));
    }

    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<(u32, Option<Entry>)>() <= 184, "{}", std::mem::size_of::<(u32, Option<Entry>)>());
    }
}
