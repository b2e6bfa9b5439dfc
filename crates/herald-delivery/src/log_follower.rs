//! Puts the changes the dispatcher hears into the change log's order, each exactly once.
//!
//! Changes reach the dispatcher twice over: from the bus, fast but not always in `seq` order
//! (requests committed in one group publish in whatever order their tasks run) and not always
//! at all (a request cancelled between its commit and its publish, a subscriber that lagged),
//! and from reading the change log, which is complete and ordered. The follower keeps the
//! highest `seq` up to which every change has been handed on (`applied`) and holds changes that
//! came early until the gap before them fills, from the bus or from a log read. A change seen a
//! second time is dropped.
//!
//! It relies on one property of the store: once a log read shows a record, every record with a
//! lower `seq` is either visible to that read too or will never exist. SQLite gives it (one
//! writer; numbers are taken in commit order). A store that cannot must make its log reads wait
//! for the transactions still open below the highest number they return.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_model::change::Change;

/// How long a gap may stay open before the log is read to fill it. On one node a gap closes in
/// microseconds (the other request publishes right after); one that does not is a change whose
/// publish was lost.
pub const GAP_WAIT: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct LogFollower {
    applied: u64,
    held: BTreeMap<u64, Arc<Change>>,
    gap_since: Option<Instant>,
}

impl LogFollower {
    /// Follow the log from after `applied` (a saved cursor, or the end of a replay).
    pub fn new(applied: u64) -> Self {
        LogFollower { applied, ..Default::default() }
    }

    /// Every change up to this `seq` has been handed on.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// When the log should be read because a gap stayed open too long.
    pub fn gap_deadline(&self) -> Option<Instant> {
        self.gap_since.map(|t| t + GAP_WAIT)
    }

    /// A change from the bus: the changes now ready, in order (maybe none, maybe several).
    pub fn offer(&mut self, change: Arc<Change>, now: Instant) -> Vec<Arc<Change>> {
        let mut out = vec![];
        if change.seq == 0 {
            // Not from the log (nothing publishes such a change today): pass it on as it is.
            out.push(change);
            return out;
        }
        if change.seq > self.applied {
            self.held.entry(change.seq).or_insert(change);
        }
        self.release(&mut out, now);
        out
    }

    /// What a log read returned: every record after some point, in order, as committed when the
    /// read ran. Numbers below the last one that the read did not return do not exist (they were
    /// rolled back, or trimmed), so nothing waits for them any more.
    pub fn offer_read(&mut self, changes: Vec<Change>, now: Instant) -> Vec<Arc<Change>> {
        let mut out = vec![];
        let Some(last) = changes.last().map(|c| c.seq) else {
            return out;
        };
        for c in changes {
            if c.seq > self.applied {
                self.held.entry(c.seq).or_insert_with(|| Arc::new(c));
            }
        }
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > last {
                break;
            }
            let (seq, c) = entry.remove_entry();
            self.applied = seq;
            out.push(c);
        }
        self.applied = self.applied.max(last);
        // Whatever is still held committed after this read: give the bus its usual time again.
        self.gap_since = None;
        self.release(&mut out, now);
        out
    }

    fn release(&mut self, out: &mut Vec<Arc<Change>>, now: Instant) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.applied + 1 {
                break;
            }
            let (seq, c) = entry.remove_entry();
            self.applied = seq;
            out.push(c);
        }
        if self.held.is_empty() {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::change::{ChangeKind, ChangeType};

    fn c(seq: u64) -> Change {
        Change { seq, ..Change::new("u", "alice", ChangeKind::Events, ChangeType::Create, vec![]) }
    }
    fn seqs(v: &[Arc<Change>]) -> Vec<u64> {
        v.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn early_changes_wait_for_the_gap_before_them() {
        let now = Instant::now();
        let mut f = LogFollower::new(10);
        assert_eq!(seqs(&f.offer(Arc::new(c(12)), now)), Vec::<u64>::new());
        assert_eq!(f.gap_deadline(), Some(now + GAP_WAIT));
        assert_eq!(seqs(&f.offer(Arc::new(c(13)), now)), Vec::<u64>::new());
        assert_eq!(seqs(&f.offer(Arc::new(c(11)), now)), vec![11, 12, 13]);
        assert_eq!(f.applied(), 13);
        assert_eq!(f.gap_deadline(), None);
    }

    #[test]
    fn a_change_seen_twice_counts_once() {
        let now = Instant::now();
        let mut f = LogFollower::new(0);
        assert_eq!(seqs(&f.offer(Arc::new(c(1)), now)), vec![1]);
        assert!(f.offer(Arc::new(c(1)), now).is_empty(), "the bus again");
        assert!(f.offer_read(vec![c(1)], now).is_empty(), "the log again");
        assert_eq!(seqs(&f.offer(Arc::new(c(3)), now)), Vec::<u64>::new());
        assert!(f.offer(Arc::new(c(3)), now).is_empty(), "held already");
        assert_eq!(seqs(&f.offer_read(vec![c(2), c(3), c(4)], now)), vec![2, 3, 4]);
        assert!(f.offer(Arc::new(c(4)), now).is_empty(), "the bus after the log");
    }

    #[test]
    fn a_log_read_fills_gaps_and_skips_numbers_that_never_committed() {
        let now = Instant::now();
        let mut f = LogFollower::new(5);
        f.offer(Arc::new(c(9)), now);
        // 6 and 8 exist; 7 was rolled back; 9 came from the bus already.
        assert_eq!(seqs(&f.offer_read(vec![c(6), c(8), c(9)], now)), vec![6, 8, 9]);
        assert_eq!(f.applied(), 9);
        assert_eq!(f.gap_deadline(), None);
        // A read that saw nothing new changes nothing.
        assert!(f.offer_read(vec![], now).is_empty());
        assert_eq!(f.applied(), 9);
    }

    #[test]
    fn changes_committed_after_a_read_stay_held_until_their_turn() {
        let now = Instant::now();
        let mut f = LogFollower::new(0);
        f.offer(Arc::new(c(5)), now);
        assert_eq!(seqs(&f.offer_read(vec![c(1), c(2)], now)), vec![1, 2]);
        assert_eq!(f.applied(), 2);
        assert!(f.gap_deadline().is_some_and(|d| d >= now + GAP_WAIT), "3 and 4 are still missing; the bus gets its time again");
        assert_eq!(seqs(&f.offer_read(vec![c(3), c(4), c(5)], now)), vec![3, 4, 5]);
    }

    #[test]
    fn unlogged_changes_pass_through() {
        let mut f = LogFollower::new(3);
        assert_eq!(seqs(&f.offer(Arc::new(c(0)), Instant::now())), vec![0]);
        assert_eq!(f.applied(), 3);
    }
}
