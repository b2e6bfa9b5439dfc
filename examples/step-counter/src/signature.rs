//! Standard Webhooks signatures, as Herald sends them.
//!
//! Every POST carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
//! `v1,` + base64 HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the
//! base64-decoded part of the webhook's secret after `whsec_`. The header may list several
//! space-separated signatures (during a secret rotation); one match is enough.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far `webhook-timestamp` may be from now, either way (Standard Webhooks' default).
pub const DEFAULT_TOLERANCE_SECS: u64 = 5 * 60;

/// A webhook secret, decoded: the HMAC key.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parse `whsec_<base64>` (the prefix is optional).
    pub fn parse(secret: &str) -> Result<Secret, String> {
        let b64 = secret.trim();
        let b64 = b64.strip_prefix("whsec_").unwrap_or(b64);
        let key = STANDARD.decode(b64).map_err(|e| format!("the webhook secret is not whsec_ + base64: {e}"))?;
        if key.is_empty() {
            return Err("the webhook secret is empty".into());
        }
        Ok(Secret(key))
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value Herald would send.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, &timestamp.to_string(), body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Check the three headers against the raw body. `now` is Unix seconds.
    pub fn verify(
        &self,
        msg_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
        tolerance_secs: u64,
    ) -> Result<(), SignatureError> {
        let msg_id = msg_id.filter(|s| !s.is_empty()).ok_or(SignatureError::Missing("webhook-id"))?;
        let timestamp = timestamp.filter(|s| !s.is_empty()).ok_or(SignatureError::Missing("webhook-timestamp"))?;
        let signature = signature.filter(|s| !s.is_empty()).ok_or(SignatureError::Missing("webhook-signature"))?;
        let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        if now.abs_diff(ts) > tolerance_secs {
            return Err(SignatureError::Expired { timestamp: ts, now });
        }
        let mac = self.mac(msg_id, timestamp.trim(), body);
        let matched =
            signature.split_whitespace().filter_map(|s| s.split_once(',')).filter(|(version, _)| *version == "v1").any(|(_, b64)| {
                // `verify_slice` compares in constant time.
                STANDARD.decode(b64).is_ok_and(|tag| mac.clone().verify_slice(&tag).is_ok())
            });
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// `webhook-signature` for `secret` (`whsec_…`), like Herald computes it. For tests and tools.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    Ok(Secret::parse(secret)?.sign(msg_id, timestamp, body))
}

/// Why a POST was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    Missing(&'static str),
    BadTimestamp,
    Expired { timestamp: i64, now: i64 },
    Mismatch,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Missing(h) => write!(f, "missing header {h}"),
            SignatureError::BadTimestamp => f.write_str("webhook-timestamp is not an integer"),
            SignatureError::Expired { timestamp, now } => write!(f, "webhook-timestamp {timestamp} is too far from now ({now})"),
            SignatureError::Mismatch => f.write_str("no valid v1 signature"),
        }
    }
}

impl std::error::Error for SignatureError {}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> Secret {
        Secret::parse(SECRET).unwrap()
    }

    fn verify(id: Option<&str>, ts: Option<&str>, sig: Option<&str>, body: &[u8], now: i64) -> Result<(), SignatureError> {
        secret().verify(id, ts, sig, body, now, DEFAULT_TOLERANCE_SECS)
    }

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIG);
        assert_eq!(verify(Some(ID), Some("1614265330"), Some(SIG), BODY, TS), Ok(()));
    }

    #[test]
    fn one_of_several_signatures_is_enough() {
        let header = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,whatever {SIG}");
        assert_eq!(verify(Some(ID), Some("1614265330"), Some(&header), BODY, TS), Ok(()));
    }

    #[test]
    fn missing_headers_are_refused() {
        assert_eq!(verify(None, Some("1614265330"), Some(SIG), BODY, TS), Err(SignatureError::Missing("webhook-id")));
        assert_eq!(verify(Some(ID), None, Some(SIG), BODY, TS), Err(SignatureError::Missing("webhook-timestamp")));
        assert_eq!(verify(Some(ID), Some("1614265330"), None, BODY, TS), Err(SignatureError::Missing("webhook-signature")));
        assert_eq!(verify(Some(ID), Some("1614265330"), Some(""), BODY, TS), Err(SignatureError::Missing("webhook-signature")));
    }

    #[test]
    fn anything_changed_is_refused() {
        let mismatch = Err(SignatureError::Mismatch);
        assert_eq!(verify(Some(ID), Some("1614265330"), Some(SIG), br#"{"test": 2432232315}"#, TS), mismatch);
        assert_eq!(verify(Some("msg_other"), Some("1614265330"), Some(SIG), BODY, TS), mismatch);
        assert_eq!(verify(Some(ID), Some("1614265331"), Some(SIG), BODY, TS), mismatch);
        assert_eq!(verify(Some(ID), Some("1614265330"), Some("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), BODY, TS), mismatch);
        assert_eq!(verify(Some(ID), Some("1614265330"), Some("v1,not base64!"), BODY, TS), mismatch);
        assert_eq!(verify(Some(ID), Some("1614265330"), Some("garbage"), BODY, TS), mismatch);
        let other = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(other.verify(Some(ID), Some("1614265330"), Some(SIG), BODY, TS, 300), mismatch);
    }

    #[test]
    fn timestamps_more_than_five_minutes_away_are_refused() {
        let ok = |now: i64| verify(Some(ID), Some("1614265330"), Some(SIG), BODY, now);
        assert_eq!(ok(TS + 300), Ok(()));
        assert_eq!(ok(TS - 300), Ok(()));
        assert_eq!(ok(TS + 301), Err(SignatureError::Expired { timestamp: TS, now: TS + 301 }));
        assert_eq!(ok(TS - 301), Err(SignatureError::Expired { timestamp: TS, now: TS - 301 }));
        assert_eq!(verify(Some(ID), Some("soon"), Some(SIG), BODY, TS), Err(SignatureError::BadTimestamp));
    }

    #[test]
    fn secrets_must_be_base64() {
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_").is_err());
        // The prefix is optional.
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap().sign(ID, TS, BODY), SIG);
    }
}
