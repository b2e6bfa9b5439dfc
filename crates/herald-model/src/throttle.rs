//! Throttling of repeated attempts per key (failed logins per user or per client address,
//! registrations per client address): the rule, pure. Callers pass `now`; the state lives in
//! the API layer (`herald_api::throttle`).
//!
//! A key may make `free` counted attempts. The attempt that reaches `free` blocks the key for
//! `delay`; each further counted attempt (possible once the block is over) blocks it twice as
//! long as the one before, up to `max_delay`. A record is forgotten after `quiet` with no counted
//! attempt, counted from the end of its last block if it had one (so a block as long as the
//! quiet time does not hand out a fresh set of free attempts), and a success may clear it at
//! once. While a key is blocked,
//! attempts are refused before any work is done and are not counted: the block does not grow
//! while an attacker keeps knocking.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Counted attempts allowed before the first block; 0 turns this throttle off.
    pub free: u32,
    /// The first block.
    pub delay: Duration,
    /// The longest block.
    pub max_delay: Duration,
    /// A record is forgotten after this long with no counted attempt, counted from the end of
    /// its last block.
    pub quiet: Duration,
}

/// What is known about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Counted attempts since the record started.
    pub count: u32,
    /// The last counted attempt.
    pub last: Instant,
    /// Refuse attempts until then.
    pub blocked_until: Option<Instant>,
}

impl ThrottlePolicy {
    pub fn is_off(&self) -> bool {
        self.free == 0
    }

    /// Whether a record no longer matters at `now`.
    pub fn is_stale(&self, r: &Record, now: Instant) -> bool {
        let quiet_from = r.blocked_until.map_or(r.last, |b| b.max(r.last));
        now >= quiet_from + self.quiet
    }

    /// `Err(wait)` when the key is blocked at `now`.
    pub fn check(&self, r: Option<&Record>, now: Instant) -> Result<(), Duration> {
        match r {
            Some(r) if !self.is_off() && !self.is_stale(r, now) => match r.blocked_until {
                Some(until) if until > now => Err(until - now),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The block that the `count`-th counted attempt starts, if any.
    pub fn block_for(&self, count: u32) -> Option<Duration> {
        if self.is_off() || count < self.free {
            return None;
        }
        let doublings = (count - self.free).min(31);
        Some(self.delay.saturating_mul(1u32 << doublings).min(self.max_delay))
    }

    /// Count an attempt at `now`: the new record (a stale one starts over).
    pub fn count(&self, r: Option<Record>, now: Instant) -> Record {
        let prev = r.filter(|r| !self.is_stale(r, now));
        let count = prev.map_or(0, |r| r.count).saturating_add(1);
        let blocked_until = self.block_for(count).map(|d| now + d).or(prev.and_then(|r| r.blocked_until));
        Record { count, last: now, blocked_until }
    }
}

/// A retry-after in whole seconds, as `Retry-After` carries it (rounded up, at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy { free: 3, delay: Duration::from_secs(1), max_delay: Duration::from_secs(10), quiet: Duration::from_secs(60) }
    }

    #[test]
    fn blocks_after_free_attempts_and_doubles() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = None;
        for i in 1..=2 {
            r = Some(p.count(r, t0));
            assert_eq!(r.unwrap().count, i);
            assert!(p.check(r.as_ref(), t0).is_ok());
        }
        r = Some(p.count(r, t0));
        assert_eq!(p.check(r.as_ref(), t0), Err(Duration::from_secs(1)));
        assert!(p.check(r.as_ref(), t0 + Duration::from_secs(1)).is_ok());
        let t1 = t0 + Duration::from_secs(2);
        r = Some(p.count(r, t1));
        assert_eq!(p.check(r.as_ref(), t1), Err(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        r = Some(p.count(r, t2));
        assert_eq!(p.check(r.as_ref(), t2), Err(Duration::from_secs(4)));
        // Capped.
        assert_eq!(p.block_for(20), Some(Duration::from_secs(10)));
        assert_eq!(p.block_for(u32::MAX), Some(Duration::from_secs(10)));
    }

    #[test]
    fn quiet_time_forgets() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = None;
        for _ in 0..3 {
            r = Some(p.count(r, t0));
        }
        let later = t0 + Duration::from_secs(61);
        assert!(p.is_stale(&r.unwrap(), later));
        assert!(p.check(r.as_ref(), later).is_ok());
        let r = p.count(r, later);
        assert_eq!(r.count, 1);
        assert_eq!(r.blocked_until, None);
    }

    #[test]
    fn quiet_time_counts_from_the_end_of_the_block() {
        let p = ThrottlePolicy {
            quiet: Duration::from_secs(10),
            max_delay: Duration::from_secs(100),
            delay: Duration::from_secs(50),
            ..policy()
        };
        let t0 = Instant::now();
        let mut r = None;
        for _ in 0..3 {
            r = Some(p.count(r, t0));
        }
        assert!(p.check(r.as_ref(), t0 + Duration::from_secs(20)).is_err());
        let after_block = t0 + Duration::from_secs(50);
        assert!(p.check(r.as_ref(), after_block).is_ok());
        assert!(!p.is_stale(&r.unwrap(), after_block));
        // One more failure right after the block: blocked twice as long, not a fresh start.
        let next = p.count(r, after_block);
        assert_eq!((next.count, next.blocked_until), (4, Some(after_block + Duration::from_secs(100))));
        assert!(p.is_stale(&r.unwrap(), after_block + Duration::from_secs(10)));
    }

    #[test]
    fn off_never_blocks() {
        let p = ThrottlePolicy { free: 0, ..policy() };
        let t0 = Instant::now();
        let mut r = None;
        for _ in 0..100 {
            r = Some(p.count(r, t0));
        }
        assert!(p.check(r.as_ref(), t0).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
