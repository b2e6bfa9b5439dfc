//! Which partition of the webhooks a user's belong to, when several Herald nodes share the
//! delivery (the cluster). Each node holds some partitions with a lease and delivers exactly the
//! webhooks of the users in them.
//!
//! The rule must give the same answer on every node and in every release, so it is FNV-1a over
//! the user id's bytes, written out here, rather than `std`'s hasher (whose output may change
//! between Rust versions) or a crate for eight lines.

/// Partitions of a cluster. Fixed: nodes of one cluster must agree on it, and each partition's
/// position in the change log is saved under its number.
pub const PARTITIONS: u32 = 16;

/// The partition of `user_id` among `count`.
pub fn of(user_id: &str, count: u32) -> u32 {
    (fnv1a(user_id.as_bytes()) % count.max(1) as u64) as u32
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The change-log consumer of partition `index` (`dispatcher-p0` …): each partition keeps its
/// own position in the log, whichever node holds it.
pub fn consumer(index: u32) -> &'static str {
    consumers()[(index % PARTITIONS) as usize]
}

/// Every partition's consumer name, made once for the process's life: cursors name their
/// consumer with a `&'static str`.
pub fn consumers() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| (0..PARTITIONS).map(|i| &*Box::leak(format!("dispatcher-p{i}").into_boxed_str())).collect())
}

/// How many of `count` partitions the node of rank `rank` among `members` delivering nodes
/// holds: an even share, the first `count % members` nodes taking one more, so the shares add
/// up to `count` exactly.
pub fn share(members: usize, rank: usize, count: u32) -> usize {
    let members = members.max(1);
    let count = count as usize;
    count / members + usize::from(rank < count % members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_stable_and_spreads_users() {
        // Fixed values: a change here would move every user of a running cluster.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a's published test vector");
        assert_eq!(of("alice", 16), of("alice", 16));
        let mut counts = [0usize; PARTITIONS as usize];
        for i in 0..16_000 {
            counts[of(&format!("user{i}"), PARTITIONS) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }

    #[test]
    fn shares_add_up_to_every_partition() {
        for members in 1..40 {
            let total: usize = (0..members).map(|r| share(members, r, PARTITIONS)).sum();
            assert_eq!(total, PARTITIONS as usize, "{members} members");
        }
        assert_eq!((0..3).map(|r| share(3, r, 16)).collect::<Vec<_>>(), vec![6, 5, 5]);
        assert_eq!(share(0, 0, 16), 16);
    }
}
