//! Users: an account, identified by its username (the first segment of every API path).

use crate::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub language: String,
    pub created: Timestamp,
}

/// Names that would collide with Herald's own top-level routes.
const RESERVED: &[&str] = &["users", "service", "system", "herald", "admin", "socket-io", "access", "register"];

/// Pryv's username rule: 5-60 characters, lowercase letters, digits and `-`, not at either end.
pub fn is_valid_username(u: &str) -> bool {
    let b = u.as_bytes();
    let ok_end = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (5..=60).contains(&b.len())
        && ok_end(b[0])
        && ok_end(b[b.len() - 1])
        && b.iter().all(|&c| ok_end(c) || c == b'-')
        && !RESERVED.contains(&u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(is_valid_username("alice"));
        assert!(is_valid_username("a-b-c-9"));
        assert!(!is_valid_username("bob"));
        assert!(!is_valid_username("-alice"));
        assert!(!is_valid_username("Alice"));
        assert!(!is_valid_username("users"));
        assert!(!is_valid_username(&"a".repeat(61)));
    }
}
