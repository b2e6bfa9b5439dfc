//! Identifiers and tokens: cuid2-shaped strings (a lowercase letter, then lowercase letters and
//! digits), 25 characters, from a cryptographic random source so tokens cannot be guessed.

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(len: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(len);
    s.push((b'a' + rng.gen_range(0..26u8)) as char);
    for _ in 1..len {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

/// A new item id (events, streams, accesses, webhooks).
pub fn new_id() -> String {
    random_string(25)
}

/// A new event id, shaped like Pryv's own (cuid v1): `c`, the time in milliseconds (8 base-36
/// digits), a per-process counter (4), then 12 random characters: 25 characters of the same
/// alphabet as [`new_id`]. Ids made one after the other sort one after the other, so the stores'
/// primary-key indexes (`events`, `event_streams`) take new events at their end: a random id
/// lands on a random leaf page of those B-trees, and a batch of 1,000 creates then dirtied (and
/// wrote to the WAL, and checkpointed) one page per event per index on a user with 50,000
/// events. Event ids are not secrets (the token is); 62 random bits keep them unique.
pub fn new_event_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut s = String::with_capacity(25);
    s.push('c');
    push_base36(&mut s, ms, 8);
    push_base36(&mut s, u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)), 4);
    let mut rng = rand::thread_rng();
    for _ in 0..12 {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

/// The `width` low base-36 digits of `n`, most significant first.
fn push_base36(s: &mut String, n: u64, width: u32) {
    let mut n = n % 36u64.pow(width);
    let mut digits = [b'0'; 8];
    for d in digits[..width as usize].iter_mut().rev() {
        *d = DIGITS36[(n % 36) as usize];
        n /= 36;
    }
    s.extend(digits[..width as usize].iter().map(|&b| b as char));
}

/// Base-36 digits in their order (for ids that sort by time).
const DIGITS36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new access token. Same alphabet as ids; 25 characters give ~128 bits of randomness.
pub fn new_token() -> String {
    random_string(25)
}

/// Pryv accepts client-supplied ids for streams and events: letters, digits, `-` and `_`.
pub fn is_valid_item_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Pryv's stream-id slugification of a name, used when `streams.create` gets no `id`.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars().flat_map(|c| c.to_lowercase()) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_cuid_shape() {
        let id = new_id();
        assert_eq!(id.len(), 25);
        assert!(id.as_bytes()[0].is_ascii_lowercase());
        assert!(is_valid_item_id(&id));
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn event_ids_have_cuid_shape_and_sort_by_creation() {
        let ids: Vec<String> = (0..2000).map(|_| new_event_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 25);
            assert!(id.starts_with('c'));
            assert!(is_valid_item_id(id));
            assert!(id.bytes().all(|b| ALPHABET.contains(&b)));
        }
        // The time part never goes back; within a millisecond the counter orders them (it
        // wraps only after 36^4 ids).
        let sorted = ids.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(sorted >= ids.len() - 2, "{sorted} of {} in order", ids.len() - 1);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn slugs() {
        assert_eq!(slugify("My Diary!"), "my-diary");
        assert_eq!(slugify("  Heart rate  "), "heart-rate");
        assert!(!is_valid_item_id("a b"));
        assert!(!is_valid_item_id(""));
    }
}
