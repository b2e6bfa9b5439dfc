//! Where the throttling state lives: the [`Throttle`] trait, and [`MemoryThrottle`], its
//! implementation on one node. The rule itself (free attempts, doubling blocks, quiet time) is
//! `herald_model::throttle`.
//!
//! The state is in memory: a restart starts with every record empty. Several nodes would share
//! it through the cluster's own engines; such an implementation answers from node-local state
//! fed by the other nodes (the calls here never wait on the network, they sit on the login
//! path before any hashing).
//!
//! Why not a crate: `governor` (GCRA) limits a *rate* of requests per key; here a key is blocked
//! after a number of *failures*, for a time that doubles with each further failure, and a success
//! clears it — a different rule. What remains is a map with a bound and an age order, which
//! `hashlink::LinkedHashMap` (already in the build through rusqlite) gives.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use herald_bus::Gossip;
use herald_model::throttle::{Record, ThrottlePolicy};

/// Throttled attempts per key (a username, a client address).
pub trait Throttle: Send + Sync {
    /// `Err(wait)` when `key` is blocked now. Refused attempts are not counted.
    fn check(&self, key: &str) -> Result<(), Duration>;
    /// Count an attempt of `key` (a failed login, a registration): the block it starts, if any.
    fn count(&self, key: &str) -> Option<Duration>;
    /// Forget `key` (a successful login).
    fn clear(&self, key: &str);
}

/// [`Throttle`] on one node. At most `capacity` keys are remembered: records are kept in the
/// order of their last counted attempt, forgotten ones are dropped from the front as attempts
/// are counted, and when the map is full the oldest record goes.
pub struct MemoryThrottle {
    policy: ThrottlePolicy,
    capacity: usize,
    records: Mutex<LinkedHashMap<String, Record>>,
}

impl MemoryThrottle {
    pub fn new(policy: ThrottlePolicy, capacity: usize) -> Self {
        MemoryThrottle { policy, capacity: capacity.max(1), records: Mutex::new(LinkedHashMap::new()) }
    }

    pub fn len(&self) -> usize {
        self.records.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count_at(&self, key: &str, now: Instant) -> Option<Duration> {
        if self.policy.is_off() {
            return None;
        }
        let mut m = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let prev = m.remove(key);
        let r = self.policy.count(prev, now);
        m.insert(key.to_string(), r);
        // The front holds the oldest counted attempts: drop what no longer matters, then
        // whatever exceeds the capacity.
        while let Some((_, front)) = m.front() {
            if self.policy.is_stale(front, now) || m.len() > self.capacity {
                m.pop_front();
            } else {
                break;
            }
        }
        r.blocked_until.filter(|_| r.count >= self.policy.free).and_then(|until| until.checked_duration_since(now))
    }
}

impl Throttle for MemoryThrottle {
    fn check(&self, key: &str) -> Result<(), Duration> {
        if self.policy.is_off() {
            return Ok(());
        }
        let m = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.policy.check(m.get(key), Instant::now())
    }

    fn count(&self, key: &str) -> Option<Duration> {
        self.count_at(key, Instant::now())
    }

    fn clear(&self, key: &str) {
        if let Ok(mut m) = self.records.lock() {
            m.remove(key);
        }
    }
}

/// [`Throttle`] shared by the nodes of a cluster: this node's [`MemoryThrottle`], told of the
/// attempts the other nodes count and clear (through the cluster's NATS, [`Gossip`]), and
/// telling them its own. Calls still answer from memory at once; a guess counted on one node
/// reaches the others within the bus's latency, so a guesser spreading over the nodes behind
/// a load balancer meets the same limits as on one.
pub struct SharedThrottle {
    local: Arc<MemoryThrottle>,
    gossip: Arc<dyn Gossip>,
    topic: &'static str,
}

impl SharedThrottle {
    /// Share `local` on `topic`; the other nodes' notes are applied as they come.
    pub fn new(local: MemoryThrottle, gossip: Arc<dyn Gossip>, topic: &'static str) -> Arc<Self> {
        let local = Arc::new(local);
        let mut notes = gossip.listen(topic);
        let apply = Arc::downgrade(&local);
        tokio::spawn(async move {
            while let Some(note) = notes.recv().await {
                let Some(local) = apply.upgrade() else { break };
                match note.split_first() {
                    Some((b'c', key)) => {
                        local.count(&String::from_utf8_lossy(key));
                    }
                    Some((b'x', key)) => local.clear(&String::from_utf8_lossy(key)),
                    _ => {}
                }
            }
        });
        Arc::new(SharedThrottle { local, gossip, topic })
    }

    fn tell(&self, op: u8, key: &str) {
        let mut note = Vec::with_capacity(key.len() + 1);
        note.push(op);
        note.extend_from_slice(key.as_bytes());
        self.gossip.tell(self.topic, note);
    }
}

impl Throttle for SharedThrottle {
    fn check(&self, key: &str) -> Result<(), Duration> {
        self.local.check(key)
    }

    fn count(&self, key: &str) -> Option<Duration> {
        self.tell(b'c', key);
        self.local.count(key)
    }

    fn clear(&self, key: &str) {
        self.tell(b'x', key);
        self.local.clear(key)
    }
}

/// The key of a client address: IPv4 addresses as they are; IPv6 ones by their /64 prefix (one
/// site usually holds a whole /64, and could otherwise rotate through it).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// The client's address: from the value of the header a trusted proxy sets, when the settings
/// name one (the last address of a comma-separated list such as `X-Forwarded-For`: the one the
/// proxy in front of Herald appended), else the peer of the connection.
pub fn client_address(trusted_header: Option<&str>, peer: Option<SocketAddr>) -> String {
    let from_header = trusted_header.and_then(|v| {
        let last = v.rsplit(',').next()?.trim();
        last.parse::<IpAddr>().ok().or_else(|| last.parse::<SocketAddr>().ok().map(|s| s.ip()))
    });
    match from_header.or(peer.map(|p| p.ip())) {
        Some(ip) => address_key(ip),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(free: u32) -> ThrottlePolicy {
        ThrottlePolicy { free, delay: Duration::from_secs(60), max_delay: Duration::from_secs(600), quiet: Duration::from_secs(600) }
    }

    #[test]
    fn blocks_and_clears() {
        let t = MemoryThrottle::new(policy(2), 100);
        assert!(t.check("a").is_ok());
        assert_eq!(t.count("a"), None);
        assert!(t.check("a").is_ok());
        let block = t.count("a").expect("blocked");
        assert!(block > Duration::from_secs(59));
        assert!(t.check("a").is_err());
        assert!(t.check("b").is_ok());
        t.clear("a");
        assert!(t.check("a").is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let t = MemoryThrottle::new(policy(2), 10);
        for i in 0..1000 {
            t.count(&format!("k{i}"));
        }
        assert_eq!(t.len(), 10);
        // The newest are kept.
        t.count("k999");
        assert!(t.check("k999").is_err());
    }

    #[test]
    fn stale_records_are_dropped() {
        let t = MemoryThrottle::new(ThrottlePolicy { quiet: Duration::from_secs(1), ..policy(5) }, 100);
        let now = Instant::now();
        for i in 0..10 {
            t.count_at(&format!("k{i}"), now);
        }
        assert_eq!(t.len(), 10);
        t.count_at("late", now + Duration::from_secs(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn off_keeps_nothing() {
        let t = MemoryThrottle::new(policy(0), 100);
        for _ in 0..10 {
            assert_eq!(t.count("a"), None);
        }
        assert!(t.is_empty());
    }

    #[test]
    fn addresses() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        assert_eq!(client_address(None, Some(peer)), "10.0.0.9");
        assert_eq!(client_address(Some("1.2.3.4, 5.6.7.8"), Some(peer)), "5.6.7.8");
        assert_eq!(client_address(Some("garbage"), Some(peer)), "10.0.0.9");
        assert_eq!(client_address(None, Some(peer)), "10.0.0.9");
        assert_eq!(client_address(Some("[2001:db8::1]:80"), None), "2001:db8::/64");
        assert_eq!(client_address(None, Some("[2001:db8:1:2:3:4:5:6]:1".parse().unwrap())), "2001:db8:1:2::/64");
        assert_eq!(client_address(None, Some("[::ffff:1.2.3.4]:1".parse().unwrap())), "1.2.3.4");
        assert_eq!(client_address(None, None), "unknown");
    }
}
