//! Webhooks: the stored object and its API form (spec 1.1, contract 3).
//!
//! The READ form has exactly Pryv's fields plus `secret` (Standard Webhooks signing, contract
//! 3.10) and `scopes` when set. What the dispatcher still owes the receiver (`pending`) is stored
//! with the webhook so a crash loses nothing; it is never shown.

use serde_json::{json, Map, Value};

use crate::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Run {
    /// The HTTP status, or 0 when there was no response.
    pub status: u16,
    pub timestamp: Timestamp,
}

impl Run {
    pub fn to_json(&self) -> Value {
        json!({ "status": self.status, "timestamp": self.timestamp })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookState {
    Active,
    Inactive,
}

impl WebhookState {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookState::Active => "active",
            WebhookState::Inactive => "inactive",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub access_id: String,
    pub url: String,
    pub state: WebhookState,
    pub run_count: u64,
    pub fail_count: u64,
    pub last_run: Run,
    /// Newest first, at most the configured runs size.
    pub runs: Vec<Run>,
    pub current_retries: u32,
    pub max_retries: u32,
    pub min_interval_ms: u64,
    /// The client's scopes as given (`{key: {kind, query}}`), or none for an unscoped webhook.
    pub scopes: Option<Value>,
    /// `whsec_` + base64 of 24 random bytes.
    pub secret: String,
    /// Messages owed to the receiver, in order, de-duplicated.
    pub pending: Vec<String>,
    pub created: Timestamp,
    pub created_by: String,
    pub modified: Timestamp,
    pub modified_by: String,
}

impl Webhook {
    /// A new, active webhook with no runs, owned by (and tracked as created by) `access_id`.
    pub fn new(id: String, access_id: &str, url: &str, min_interval_ms: u64, max_retries: u32, secret: String, now: Timestamp) -> Self {
        Webhook {
            id,
            access_id: access_id.into(),
            url: url.into(),
            state: WebhookState::Active,
            run_count: 0,
            fail_count: 0,
            last_run: Run::default(),
            runs: vec![],
            current_retries: 0,
            max_retries,
            min_interval_ms,
            scopes: None,
            secret,
            pending: vec![],
            created: now,
            created_by: access_id.into(),
            modified: now,
            modified_by: access_id.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("accessId".into(), json!(self.access_id));
        m.insert("url".into(), json!(self.url));
        m.insert("state".into(), json!(self.state.as_str()));
        m.insert("runCount".into(), json!(self.run_count));
        m.insert("failCount".into(), json!(self.fail_count));
        m.insert("lastRun".into(), self.last_run.to_json());
        m.insert("runs".into(), Value::Array(self.runs.iter().map(Run::to_json).collect()));
        m.insert("currentRetries".into(), json!(self.current_retries));
        m.insert("maxRetries".into(), json!(self.max_retries));
        m.insert("minIntervalMs".into(), json!(self.min_interval_ms));
        if let Some(s) = &self.scopes {
            m.insert("scopes".into(), s.clone());
        }
        m.insert("secret".into(), json!(self.secret));
        m.insert("created".into(), json!(self.created));
        m.insert("createdBy".into(), json!(self.created_by));
        m.insert("modified".into(), json!(self.modified));
        m.insert("modifiedBy".into(), json!(self.modified_by));
        Value::Object(m)
    }
}

/// What happens to an access's webhooks when the access is deleted (contract 3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAccessDeletion {
    Keep,
    Deactivate,
    Delete,
}

impl OnAccessDeletion {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "keep" => Some(Self::Keep),
            "deactivate" => Some(Self::Deactivate),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// Platform settings of webhooks (contract section 1).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Default and floor of `minIntervalMs`.
    pub min_interval_ms: u64,
    /// Default and ceiling of `maxRetries`.
    pub max_retries: u32,
    pub runs_size: usize,
    pub request_timeout_ms: u64,
    pub allow_private_urls: bool,
    pub max_per_access: u64,
    pub on_access_deletion: OnAccessDeletion,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            min_interval_ms: 5000,
            max_retries: 5,
            runs_size: 50,
            request_timeout_ms: 10_000,
            allow_private_urls: false,
            max_per_access: 100,
            on_access_deletion: OnAccessDeletion::Keep,
        }
    }
}

/// May a webhook connect to this address? Loopback, private, link-local, multicast, unspecified,
/// shared, documentation and other reserved ranges are refused (contract 3.6), IPv4-mapped IPv6
/// is judged as the IPv4 inside it.
pub fn is_public_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
                || o[0] >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
            // IPv4-compatible
        }
    }
}

/// Contract 3.5-3.6: an absolute http(s) URL of at most 2048 characters, and (unless private
/// addresses are allowed) not a literal private address nor `localhost`.
pub fn validate_url(raw: &str, allow_private: bool) -> Result<(), String> {
    if raw.len() > 2048 {
        return Err("The webhook URL must have at most 2048 characters.".into());
    }
    // The URL parser drops tabs and newlines and guesses a host for `http:///x`: refuse what
    // it would repair, so the URL stored is the URL given.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("The webhook URL must not contain spaces or control characters.".into());
    }
    let u = url::Url::parse(raw).map_err(|_| format!("\"{raw}\" is not an absolute URL."))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err("The webhook URL must use http or https.".into());
    }
    let authority = raw.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if authority.is_empty() || authority.starts_with(['/', '?', '#', '@', ':']) {
        return Err("The webhook URL has no host.".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("The webhook URL must not contain credentials.".into());
    }
    let host = u
        .host()
        .filter(|h| !matches!(h, url::Host::Domain(d) if d.is_empty()))
        .ok_or_else(|| "The webhook URL has no host.".to_string())?;
    if allow_private {
        return Ok(());
    }
    let blocked = match host {
        url::Host::Ipv4(ip) => !is_public_ip(ip.into()),
        url::Host::Ipv6(ip) => !is_public_ip(ip.into()),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    };
    if blocked {
        return Err("The webhook URL points to a private or loopback address.".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules() {
        assert!(validate_url("https://example.com/hook", false).is_ok());
        assert!(validate_url("http://127.0.0.1:8080/x", false).is_err());
        assert!(validate_url("http://127.0.0.1:8080/x", true).is_ok());
        assert!(validate_url("http://localhost/x", false).is_err());
        assert!(validate_url("http://[::1]/x", false).is_err());
        assert!(validate_url("http://[::ffff:10.0.0.1]/x", false).is_err());
        assert!(validate_url("http://169.254.169.254/latest", false).is_err());
        assert!(validate_url("ftp://example.com/x", false).is_err());
        assert!(validate_url("yololo", true).is_err());
        assert!(validate_url("http:///x", true).is_err());
        assert!(validate_url("http:/x", true).is_err());
        assert!(validate_url("http://exa\nmple.com/x", true).is_err());
        assert!(validate_url("http://example.com/a\tb", true).is_err());
        assert!(validate_url("http://example.com/a\u{7f}", true).is_err());
        assert!(validate_url("http://user:pw@example.com/x", true).is_err());
        assert!(validate_url("http://user@example.com/x", true).is_err());
        assert!(validate_url("https://example.com:8443/x?y=1#z", true).is_ok());
        assert!(validate_url(&format!("https://e.com/{}", "a".repeat(2048)), false).is_err());
    }

    #[test]
    fn ip_classes() {
        for ip in
            ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "fe80::1", "fc00::1"]
        {
            assert!(!is_public_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public_ip(ip.parse().unwrap()), "{ip}");
        }
    }
}
