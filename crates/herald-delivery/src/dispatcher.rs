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
use std::time::{Duration, Instant};

use herald_bus::{ChangeBus, Received};
use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_model::partition::PARTITIONS;
use herald_model::scope::{matched_keys, parse_scopes, Scope};
use herald_model::stream::StreamTree;
use herald_model::webhook::Webhook;
use herald_model::webhook_machine::{Machine, Outcome, Save, Step};
use herald_storage::{DeliveryRecord, Store};
use tokio::sync::mpsc;

use crate::log_follower::LogFollower;
use crate::sender::Sender;

pub use herald_model::webhook_machine::BOOT_MESSAGE;

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub runs_size: usize,
    /// POSTs in flight at once over all webhooks.
    pub concurrency: usize,
    /// Told which users' webhooks had a run or a state saved, once it is saved (the webhooks
    /// console updates live from it).
    pub on_saved: Option<crate::persister::SavedWatcher>,
    /// Which webhooks this dispatcher delivers.
    pub ownership: Ownership,
    /// Greet the active webhooks with `webhooksServiceBoot` once loaded (a node starting on
    /// its own, or a cluster starting): not when taking over from another node of a running
    /// cluster, whose change log leaves nothing missed to announce.
    pub greet: bool,
}

/// The webhooks a dispatcher delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Every webhook: one node.
    All,
    /// The webhooks of the users in one of the `herald_model::partition::PARTITIONS` of a
    /// cluster, held with a lease; each partition has its own cursor in the change log.
    Partition(u32),
}

impl Ownership {
    fn owns(&self, user_id: &str) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Partition(index) => herald_model::partition::of(user_id, PARTITIONS) == *index,
        }
    }

    /// This dispatcher's name among the change log's consumers.
    pub fn consumer(&self) -> &'static str {
        match self {
            Ownership::All => LOG_CONSUMER,
            Ownership::Partition(index) => herald_model::partition::consumer(*index),
        }
    }
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
}

enum Input {
    Result {
        handle: Handle,
        outcome: Outcome,
        /// When the POST started, for the commit-to-answer time of what is still owed.
        started: Instant,
    },
    /// What a change waiting in the backlog needed from storage.
    Fetched { ticket: u64, fetch: Fetch },
    /// A read of the change log after `applied`; `None` if it failed.
    LogRead(Option<Vec<Change>>),
    /// Save everything decided so far, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Flush, then stop for good (the partition goes to another node).
    Stop(tokio::sync::oneshot::Sender<()>),
}

/// What applying a change needs from storage, read off the loop before the change's turn.
enum Fetch {
    Nothing,
    Waiting,
    /// The user's stream tree, for scoped webhooks (`None`: it could not be read).
    Tree(Option<Arc<StreamTree>>),
    /// The webhooks a `webhooks` change names, as stored now (`Ok(None)`: deleted since).
    Webhooks(Vec<(String, StoredWebhook)>),
}

/// A webhook row read again after a change: `Ok(None)` when it was deleted since, `Err` when
/// the read failed.
type StoredWebhook = Result<Option<Box<Webhook>>, ()>;

/// A change in log order, waiting for its turn and for what it needs from storage.
struct Queued {
    ticket: u64,
    change: Arc<Change>,
    fetch: Fetch,
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

    /// Stop for good: no new POST starts, the ones running finish, everything decided is saved
    /// with the cursor, and only then does this return. After it, another node may take the
    /// webhooks over from the saved state without repeating a POST.
    pub async fn stop(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inputs.send(Input::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The dispatcher's name among the change log's consumers.
pub const LOG_CONSUMER: &str = "dispatcher";
/// Records read from the log at a time.
const LOG_PAGE: usize = 1000;
/// How often the log is read even when the bus seems complete: a change whose publish was lost
/// (its request cancelled right after the commit) is found within this time.
const LOG_POLL: Duration = Duration::from_millis(500);
/// Longest time the cursor waits when no record carries it.
const CURSOR_EVERY: Duration = Duration::from_millis(250);

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
    /// Changes in log order, each applied when its turn comes and what it needs is read.
    follower: LogFollower,
    backlog: VecDeque<Queued>,
    next_ticket: u64,
    /// The last change applied to every machine; the persister saves it as the cursor once the
    /// records before it are saved.
    done: u64,
    cursor_sent: u64,
    /// When the cursor was last handed to the persister, and whether records went to it since.
    cursor_sent_at: Instant,
    records_since_cursor: bool,
    log_reading: bool,
    next_poll: Instant,
    /// False until the boot greeting: replayed changes then only fill `pending`, so that each
    /// webhook's first POST carries `webhooksServiceBoot` with them.
    greeted: bool,
    /// While replaying: webhooks created within the replayed part of the log, with the `seq`
    /// of their creation; older changes are not theirs.
    created_in_replay: HashMap<String, u64>,
    /// Operators' figures, kept as machines change and published as gauges with each read of
    /// the log (twice a second): counting a million machines on every scrape would stall the loop.
    gauges: Gauges,
    /// Webhooks owed something, since when (the first change they were not yet told of reached
    /// the dispatcher): the commit-to-answer time.
    owed_since: HashMap<Handle, Instant>,
    /// Stop asked: no new POST, no more changes taken; the loop ends once all is saved.
    stopping: bool,
    stopped: bool,
}

/// Webhooks by state and the messages they are owed. A node runs one dispatcher per
/// partition it holds (in a cluster), so each adds what changed since it last published rather
/// than setting the gauges, and takes its share back when it stops.
#[derive(Default)]
struct Gauges {
    active: i64,
    inactive: i64,
    pending: i64,
    published: [i64; 3],
}

impl Gauges {
    fn add(&mut self, m: &Machine, sign: i64) {
        if m.active {
            self.active += sign;
        } else {
            self.inactive += sign;
        }
        self.pending += sign * m.pending().len() as i64;
    }

    fn publish(&mut self) {
        let now = [self.active, self.inactive, self.pending];
        let [a, i, p] = [0, 1, 2].map(|k| (now[k] - self.published[k]) as f64);
        if a != 0.0 {
            metrics::gauge!("herald_webhooks", "state" => "active").increment(a);
        }
        if i != 0.0 {
            metrics::gauge!("herald_webhooks", "state" => "inactive").increment(i);
        }
        if p != 0.0 {
            metrics::gauge!("herald_webhook_pending_messages").increment(p);
        }
        self.published = now;
    }

    /// The dispatcher stops (its partition goes to another node): its webhooks are no longer
    /// this node's.
    fn retract(&mut self) {
        (self.active, self.inactive, self.pending) = (0, 0, 0);
        self.publish();
    }
}

/// Whether the machine owes its receiver anything (pending, or a POST not answered yet).
fn owes(m: &Machine) -> bool {
    !m.pending().is_empty() || m.is_sending()
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0
}

fn scopes_of(w: &Webhook) -> Option<Arc<[Scope]>> {
    let s = parse_scopes(w.scopes.as_ref()?).ok()?;
    (!s.is_empty()).then(|| Arc::from(s))
}

/// Read what applying `change` needs: the stored webhooks a `webhooks` change names, or the
/// user's stream tree when scoped webhooks will match the change against it.
async fn fetch(store: Arc<dyn Store>, change: Arc<Change>, needs_tree: bool) -> Fetch {
    if change.kind == ChangeKind::Webhooks {
        let mut out = vec![];
        for item in &change.items {
            if let ChangedItem::Webhook { id, .. } = item {
                let w = store.webhook(&change.user_id, id).await.map(|w| w.map(Box::new)).map_err(|e| {
                    tracing::error!(error = %e, webhook = %id, "cannot read a changed webhook");
                });
                out.push((id.clone(), w));
            }
        }
        return Fetch::Webhooks(out);
    }
    if !needs_tree {
        return Fetch::Nothing;
    }
    match store.streams(&change.user_id).await {
        Ok(streams) => Fetch::Tree(Some(Arc::new(StreamTree::new(&streams)))),
        Err(e) => {
            tracing::error!(error = %e, user = %change.user_id, "cannot read the stream tree; scoped webhooks get every key");
            Fetch::Tree(None)
        }
    }
}

/// Start the dispatcher: subscribe to the bus first (so nothing published during start-up is
/// missed), load every webhook, replay the change log after the saved cursor, greet the active
/// webhooks with `webhooksServiceBoot` plus whatever they are owed, then serve.
pub fn start(store: Arc<dyn Store>, bus: Arc<dyn ChangeBus>, sender: Arc<Sender>, settings: DispatcherSettings) -> DispatcherHandle {
    let mut sub = bus.subscribe();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let saves = crate::persister::start_watched(store.clone(), settings.ownership.consumer(), settings.on_saved.clone());
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
        follower: LogFollower::default(),
        backlog: VecDeque::new(),
        next_ticket: 0,
        done: 0,
        cursor_sent: 0,
        cursor_sent_at: Instant::now(),
        records_since_cursor: false,
        log_reading: false,
        next_poll: Instant::now() + LOG_POLL,
        greeted: false,
        created_in_replay: HashMap::new(),
        gauges: Gauges::default(),
        owed_since: HashMap::new(),
        stopping: false,
        stopped: false,
    };
    tokio::spawn(async move {
        d.boot().await;
        d.gauges.publish();
        ready.notify_waiters();
        ready.notify_one();
        while !d.stopped {
            let sleep = match d.timers.peek() {
                Some(Reverse((at, _))) => Duration::from_millis((*at as f64 - now_ms()).max(0.0) as u64),
                None => Duration::from_secs(3600),
            };
            // While a read is under way, the next one waits for its answer.
            let read_at = if d.log_reading || d.stopping {
                Instant::now() + Duration::from_secs(3600)
            } else {
                d.follower.gap_deadline().map_or(d.next_poll, |g| g.min(d.next_poll))
            };
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(i) => d.on_input(i),
                    None => break,
                },
                change = sub.recv(), if !d.stopping => match change {
                    Some(Received::Change(c)) => {
                        let ready = d.follower.offer(c, Instant::now());
                        d.enqueue(ready);
                    }
                    Some(Received::Lagged(n)) => {
                        tracing::warn!(dropped = n, "the dispatcher lagged behind the change bus; reading the change log");
                        d.read_log();
                    }
                    None => break,
                },
                _ = tokio::time::sleep(sleep), if !d.stopping => d.on_timers(),
                _ = tokio::time::sleep_until(read_at.into()) => d.read_log(),
            }
        }
        d.gauges.retract();
    });
    handle
}

impl Dispatcher {
    /// Load every webhook, replay what the log holds after the cursor, then greet the active
    /// ones. Loading first keeps the million entries' long-lived allocations together, apart
    /// from the short-lived ones of a million POSTs, so the memory those POSTs used goes back
    /// to the system.
    async fn boot(&mut self) {
        // Webhook changes up to here are in the rows loaded next.
        let loaded_upto = self.store.last_seq().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the change log's end");
            0
        });
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
                if !self.settings.ownership.owns(&user_id) {
                    continue;
                }
                let h = self.register(Arc::from(user_id.as_str()), &w);
                if w.state == herald_model::webhook::WebhookState::Active {
                    active.push(h);
                }
            }
        }
        self.entries.slots.shrink_to_fit();
        self.by_id.by_hash.shrink_to_fit();
        self.replay(loaded_upto).await;
        self.greeted = true;
        let now = now_ms();
        for h in active {
            if self.settings.greet {
                self.feed(h, |m| m.on_boot(now));
            } else {
                self.feed(h, |m| m.on_resume(now));
            }
        }
        self.send_cursor(true);
    }

    /// Apply every change logged after the saved cursor: those whose effect on the webhooks'
    /// `pending` a crash kept from being saved. What was saved already is not applied twice.
    async fn replay(&mut self, loaded_upto: u64) {
        let cursor = match self.store.log_cursor(self.settings.ownership.consumer()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the dispatcher's cursor; replaying the whole change log");
                0
            }
        };
        // First pass: webhooks created within the replayed part, so that the changes before
        // their creation do not reach them.
        let mut after = cursor;
        while let Ok(page) = self.store.changes_after(after, LOG_PAGE).await {
            let Some(last) = page.last().map(|c| c.seq) else { break };
            for c in page.iter().filter(|c| c.kind == ChangeKind::Webhooks && c.change_type == ChangeType::Create) {
                for item in &c.items {
                    if let ChangedItem::Webhook { id, .. } = item {
                        self.created_in_replay.insert(id.clone(), c.seq);
                    }
                }
            }
            after = last;
        }
        let mut replayed = 0u64;
        // Each user's stream tree is read once per replay: a read gives the tree as it is now
        // whichever change it is for (as live matching does), so reading again adds nothing.
        let mut trees: HashMap<String, Arc<StreamTree>> = HashMap::new();
        let mut after = cursor;
        loop {
            let page = match self.store.changes_after(after, LOG_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    // The periodic log read takes over from `after` once serving.
                    tracing::error!(error = %e, "cannot read the change log; replay stops here");
                    break;
                }
            };
            let Some(last) = page.last().map(|c| c.seq) else { break };
            for c in page {
                let c = Arc::new(c);
                // The loaded rows already show the webhook changes up to `loaded_upto`.
                if !(c.kind == ChangeKind::Webhooks && c.seq <= loaded_upto) && self.settings.ownership.owns(&c.user_id) {
                    let needs_tree = self.needs_tree(&c);
                    let f = match trees.get(&c.user_id) {
                        Some(t) if needs_tree => Fetch::Tree(Some(t.clone())),
                        _ => fetch(self.store.clone(), c.clone(), needs_tree).await,
                    };
                    if let Fetch::Tree(Some(t)) = &f {
                        trees.insert(c.user_id.clone(), t.clone());
                    }
                    self.apply(&c, f);
                }
                self.done = self.done.max(c.seq);
                replayed += 1;
            }
            after = last;
        }
        self.created_in_replay = HashMap::new();
        self.follower = LogFollower::new(after);
        self.done = after;
        if replayed > 0 {
            tracing::info!(cursor, replayed, upto = after, "replayed the change log after the dispatcher's cursor");
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
        if let Some(e) = self.entries.get(h) {
            self.gauges.add(&e.machine, 1);
            if owes(&e.machine) {
                self.owed_since.insert(h, Instant::now());
            }
        }
        self.by_id.insert(id, h, &self.entries);
        self.by_user.entry(user_id).or_default().push(h);
        h
    }

    fn unregister(&mut self, id: &str) {
        let Some(h) = self.by_id.remove(id, &self.entries) else { return };
        self.owed_since.remove(&h);
        if let Some(e) = self.entries.remove(h) {
            self.gauges.add(&e.machine, -1);
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
        self.gauges.add(&e.machine, -1);
        let owed_before = owes(&e.machine);
        let step = f(&mut e.machine);
        self.gauges.add(&e.machine, 1);
        match (owed_before, owes(&e.machine)) {
            (false, true) => {
                self.owed_since.insert(h, Instant::now());
            }
            (true, false) => {
                self.owed_since.remove(&h);
            }
            _ => {}
        }
        if let Some(at) = step.wake_at {
            self.timers.push(Reverse((at.ceil() as u64, h)));
        }
        match step.save {
            Save::Nothing => {}
            Save::Pending => {
                self.records_since_cursor = true;
                let _ = self.saves.send(crate::persister::Persist::Record(record(
                    &e.user_id,
                    &e.id,
                    &e.machine,
                    None,
                    self.settings.runs_size,
                )));
            }
            Save::Run(run) => {
                self.records_since_cursor = true;
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
                e.delivery_id = Some(Box::new((delivery_id(&e.id, e.machine.delivery_number(), messages).into(), hash)));
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
            // Everything is handed to the persister, which answers the stop once saved.
            if self.stopping {
                self.stopped = true;
            }
        }
    }

    /// Start queued POSTs while there is room.
    fn start_ready(&mut self) {
        while self.flush_waiters.is_empty() && !self.stopping && self.running < self.settings.concurrency.max(1) {
            let Some(h) = self.ready.pop_front() else { return };
            let Some(e) = self.entries.get(h) else { continue };
            let Some(messages) = e.machine.in_flight().map(<[String]>::to_vec) else { continue };
            self.running += 1;
            metrics::gauge!("herald_webhook_posts_in_flight").increment(1.0);
            let (sender, tx) = (self.sender.clone(), self.inputs.clone());
            let (url, key, msg_id) = (e.url.clone(), e.key.clone(), e.delivery_id.as_ref().map(|d| d.0.clone()).unwrap_or_default());
            tokio::spawn(async move {
                let started = Instant::now();
                let (outcome, answer) = sender.deliver(&url, &key, &msg_id, &messages).await;
                metrics::histogram!("herald_webhook_delivery_duration_seconds").record(started.elapsed().as_secs_f64());
                metrics::counter!("herald_webhook_deliveries_total", "outcome" => answer.label()).increment(1);
                let _ = tx.send(Input::Result { handle: h, outcome, started });
            });
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Result { handle, outcome, started } => {
                self.running -= 1;
                metrics::gauge!("herald_webhook_posts_in_flight").decrement(1.0);
                let owed_since = self.owed_since.get(&handle).copied();
                let now = now_ms();
                self.feed(handle, |m| m.on_result(outcome, now));
                if outcome.is_success() {
                    if let Some(since) = owed_since {
                        metrics::histogram!("herald_webhook_commit_to_answer_seconds").record(since.elapsed().as_secs_f64());
                    }
                    // Still owed: what arrived while the POST ran, so no earlier than its start.
                    if let Some(since) = self.owed_since.get_mut(&handle) {
                        *since = (*since).max(started);
                    }
                } else {
                    self.log_failure(handle, outcome);
                }
                self.start_ready();
                self.maybe_flush();
            }
            Input::Flush(ack) => {
                self.send_cursor(true);
                self.flush_waiters.push(ack);
                self.maybe_flush();
            }
            Input::Stop(ack) => {
                self.stopping = true;
                self.send_cursor(true);
                self.flush_waiters.push(ack);
                self.maybe_flush();
            }
            Input::Fetched { ticket, fetch } => {
                // Tickets are consecutive along the backlog: the entry is found by subtraction.
                let front = self.backlog.front().map_or(0, |q| q.ticket);
                if let Some(q) = ticket.checked_sub(front).and_then(|i| self.backlog.get_mut(i as usize)) {
                    if q.ticket == ticket {
                        q.fetch = fetch;
                    }
                }
                self.drain();
            }
            Input::LogRead(read) => {
                self.log_reading = false;
                let now = Instant::now();
                match read {
                    Some(changes) => {
                        let full = changes.len() >= LOG_PAGE;
                        let ready = self.follower.offer_read(changes, now);
                        self.enqueue(ready);
                        // A full page: more is waiting, read on at once.
                        self.next_poll = if full { now } else { now + LOG_POLL };
                    }
                    None => self.next_poll = now + LOG_POLL,
                }
            }
        }
    }

    /// One line per failed delivery, and one when it turns the webhook inactive: ids and
    /// numbers only, never the URL's credentials, the secret or any content.
    fn log_failure(&self, h: Handle, outcome: Outcome) {
        let Some(e) = self.entries.get(h) else { return };
        let m = &e.machine;
        if m.active {
            tracing::warn!(
                webhook = %e.id,
                user = %e.user_id,
                status = outcome.status,
                attempt = m.current_retries,
                retry_in_ms = m.delay_ms() as u64,
                "webhook delivery failed; it will be retried"
            );
        } else {
            metrics::counter!("herald_webhook_deactivations_total").increment(1);
            tracing::warn!(
                webhook = %e.id,
                user = %e.user_id,
                status = outcome.status,
                failures = m.current_retries,
                "webhook delivery failed; the webhook is now inactive (reactivate it with webhooks.update)"
            );
        }
    }

    /// Read the change log after what was applied (a gap stayed open, the bus lagged, or the
    /// periodic check): the log, not the bus, is the truth.
    fn read_log(&mut self) {
        // Also the moment to hand on a cursor that no record carried, and to publish the gauges.
        self.send_cursor(true);
        self.gauges.publish();
        if self.log_reading {
            self.next_poll = Instant::now() + LOG_POLL;
            return;
        }
        self.log_reading = true;
        self.next_poll = Instant::now() + LOG_POLL;
        let (store, tx, after) = (self.store.clone(), self.inputs.clone(), self.follower.applied());
        tokio::spawn(async move {
            let read = match store.changes_after(after, LOG_PAGE).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the change log");
                    None
                }
            };
            let _ = tx.send(Input::LogRead(read));
        });
    }

    /// Does applying `c` need the user's stream tree (a scoped webhook will match it)?
    fn needs_tree(&self, c: &Change) -> bool {
        c.kind != ChangeKind::Webhooks
            && self
                .by_user
                .get(c.user_id.as_str())
                .is_some_and(|hs| hs.iter().any(|h| self.entries.get(*h).is_some_and(|e| e.scopes.is_some())))
    }

    fn start_fetch(&mut self, ticket: u64, change: Arc<Change>, needs_tree: bool) {
        let (store, tx) = (self.store.clone(), self.inputs.clone());
        tokio::spawn(async move {
            let fetch = fetch(store, change, needs_tree).await;
            let _ = tx.send(Input::Fetched { ticket, fetch });
        });
    }

    /// Changes now in log order join the backlog; what each will need is read at once, in
    /// parallel, and the backlog is applied in order as far as it can be.
    fn enqueue(&mut self, changes: Vec<Arc<Change>>) {
        for change in changes {
            self.next_ticket += 1;
            let ticket = self.next_ticket;
            let needs_tree = self.needs_tree(&change);
            let mine = self.settings.ownership.owns(&change.user_id);
            let fetch = if mine && (change.kind == ChangeKind::Webhooks || needs_tree) {
                self.start_fetch(ticket, change.clone(), needs_tree);
                Fetch::Waiting
            } else {
                Fetch::Nothing
            };
            self.backlog.push_back(Queued { ticket, change, fetch });
        }
        self.drain();
    }

    /// Apply the backlog's changes in order until one still waits for storage.
    fn drain(&mut self) {
        while let Some(head) = self.backlog.front() {
            if matches!(head.fetch, Fetch::Waiting) {
                break;
            }
            // A scoped webhook registered since the change was queued: read its tree now.
            if matches!(head.fetch, Fetch::Nothing) && self.needs_tree(&head.change) {
                let (ticket, change) = (head.ticket, head.change.clone());
                if let Some(h) = self.backlog.front_mut() {
                    h.fetch = Fetch::Waiting;
                }
                self.start_fetch(ticket, change, true);
                break;
            }
            let Some(q) = self.backlog.pop_front() else { break };
            self.apply(&q.change, q.fetch);
            self.done = self.done.max(q.change.seq);
        }
        self.send_cursor(false);
    }

    /// Tell the persister how far the changes are applied: it saves this cursor with (or after)
    /// the records queued before it. Sent along with records, else at most every
    /// `CURSOR_EVERY`: changes that touch no webhook (most of them) cost the persister nothing,
    /// and a lagging cursor only means a little more to replay after a crash.
    fn send_cursor(&mut self, force: bool) {
        if self.done > self.cursor_sent && (force || self.records_since_cursor || self.cursor_sent_at.elapsed() >= CURSOR_EVERY) {
            self.cursor_sent = self.done;
            self.cursor_sent_at = Instant::now();
            self.records_since_cursor = false;
            let _ = self.saves.send(crate::persister::Persist::Cursor(self.done));
        }
    }

    /// Apply one change to the machines of the webhooks it concerns.
    fn apply(&mut self, c: &Change, fetch: Fetch) {
        if !self.settings.ownership.owns(&c.user_id) {
            return;
        }
        if c.kind == ChangeKind::Webhooks {
            self.apply_webhooks(c, fetch);
            return;
        }
        let Some(handles) = self.by_user.get(c.user_id.as_str()).cloned() else { return };
        let tree = match fetch {
            Fetch::Tree(t) => t,
            _ => None,
        };
        let now = now_ms();
        for h in handles {
            let Some(e) = self.entries.get(h) else { continue };
            if self.created_in_replay.get(&*e.id).is_some_and(|created| *created > c.seq) {
                continue;
            }
            let scopes = e.scopes.clone();
            let greeted = self.greeted;
            match scopes {
                None if greeted => self.feed(h, |m| m.on_message(c.kind.message(), now)),
                None => self.feed(h, |m| m.on_replayed(&[c.kind.message()])),
                Some(s) => {
                    let keys: Vec<&str> = match &tree {
                        Some(t) => matched_keys(&s, c, t),
                        // The tree could not be read: every key rather than a lost one.
                        None => s.iter().map(|s| s.key.as_str()).collect(),
                    };
                    if keys.is_empty() {
                        continue;
                    }
                    if greeted {
                        self.feed(h, |m| m.on_messages(&keys, now));
                    } else {
                        self.feed(h, |m| m.on_replayed(&keys));
                    }
                }
            }
        }
    }

    /// A webhook was created, updated or deleted: the state the change carries applies now,
    /// scopes (and a webhook this node does not hold yet) come from the stored row.
    fn apply_webhooks(&mut self, c: &Change, fetch: Fetch) {
        let mut stored = match fetch {
            Fetch::Webhooks(list) => list,
            _ => vec![],
        };
        for item in &c.items {
            let ChangedItem::Webhook { id, active } = item else { continue };
            if c.change_type == ChangeType::Delete {
                self.unregister(id);
                continue;
            }
            let row = stored.iter().position(|(i, _)| i == id).map(|p| stored.swap_remove(p).1);
            let h = match (self.by_id.get(id.as_str(), &self.entries), row) {
                // Deleted since: its deletion follows in the log.
                (_, Some(Ok(None))) => {
                    self.unregister(id);
                    continue;
                }
                (Some(h), Some(Ok(Some(w)))) => {
                    if let Some(e) = self.entries.get_mut(h) {
                        e.scopes = scopes_of(&w);
                    }
                    h
                }
                (Some(h), _) => h,
                (None, Some(Ok(Some(w)))) => self.register(Arc::from(c.user_id.as_str()), &w),
                (None, _) => continue,
            };
            if let Some(active) = active {
                let state =
                    if *active { herald_model::webhook::WebhookState::Active } else { herald_model::webhook::WebhookState::Inactive };
                let now = now_ms();
                self.feed(h, |m| m.on_update(state, now));
            }
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

/// The `webhook-id` of a delivery: the same for its retries and for its repetition by another
/// node after a failover (same webhook, same delivery number, same messages), so receivers can
/// drop the repeat; different for any other delivery.
fn delivery_id(webhook_id: &str, number: u64, messages: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(webhook_id.as_bytes());
    h.update(number.to_be_bytes());
    for m in messages {
        h.update([0u8]);
        h.update(m.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(36);
    out.push_str("msg_");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
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
        pending: m.owed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::webhook::Webhook;

    #[test]
    fn a_delivery_id_is_the_same_for_the_same_delivery_only() {
        let m = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = delivery_id("w1", 4, &m(&["eventsChanged"]));
        assert_eq!(a, delivery_id("w1", 4, &m(&["eventsChanged"])), "a repeat after a failover");
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert_ne!(a, delivery_id("w1", 5, &m(&["eventsChanged"])), "the next delivery");
        assert_ne!(a, delivery_id("w2", 4, &m(&["eventsChanged"])), "another webhook");
        assert_ne!(a, delivery_id("w1", 4, &m(&["eventsChanged", "streamsChanged"])), "more messages");
        assert_ne!(delivery_id("w1", 4, &m(&["ab", "c"])), delivery_id("w1", 4, &m(&["a", "bc"])));
    }

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
