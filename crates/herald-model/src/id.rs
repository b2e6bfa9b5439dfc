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
    fn slugs() {
        assert_eq!(slugify("My Diary!"), "my-diary");
        assert_eq!(slugify("  Heart rate  "), "heart-rate");
        assert!(!is_valid_item_id("a b"));
        assert!(!is_valid_item_id(""));
    }
}
