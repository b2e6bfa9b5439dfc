//! The outbound POST: one shared HTTP client (connection reuse), a whole-request timeout, no
//! redirects, Standard Webhooks signature headers, and no server-side request forgery — a
//! webhook never reaches a private or loopback address unless the operator allows it.
//!
//! The address check happens where the connection is made: host names go through a resolver
//! that drops non-public addresses (so DNS tricks cannot pass), and literal IP addresses, which
//! skip resolution, are checked before the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald_model::webhook::is_public_ip;
use herald_model::webhook_machine::Outcome;
use hmac::{Hmac, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::json;
use sha2::Sha256;

/// The settings of outbound POSTs.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub request_timeout_ms: u64,
    pub allow_private_urls: bool,
    pub api_version: String,
    pub serial: String,
}

/// Resolves host names, keeping only public addresses.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| is_public_ip(a.ip())).collect();
            if addrs.is_empty() {
                return Err(Box::new(NoPublicAddress(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The resolver's refusal, told apart from other connection failures by its type: a POST it
/// stops counts as `blocked` in the metrics, not as `connection`.
#[derive(Debug)]
struct NoPublicAddress(String);

impl std::fmt::Display for NoPublicAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to no public address", self.0)
    }
}

impl std::error::Error for NoPublicAddress {}

/// How a POST ended, for the operators' metrics: the machine only needs the status (0 when
/// there was no answer), people need to know why there was none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The receiver answered with this status.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// No connection (refused, reset, DNS failure, TLS) or an unreadable answer.
    Connection,
    /// Refused before any connection: a private address, or a URL Herald does not call.
    Blocked,
}

impl Answer {
    /// The `outcome` label of `herald_webhook_deliveries_total`.
    pub fn label(self) -> &'static str {
        match self {
            Answer::Status(s) => match s / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            },
            Answer::Timeout => "timeout",
            Answer::Connection => "connection",
            Answer::Blocked => "blocked",
        }
    }
}

fn classify(e: &reqwest::Error) -> Answer {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<NoPublicAddress>() {
            return Answer::Blocked;
        }
        source = s.source();
    }
    if e.is_timeout() {
        Answer::Timeout
    } else {
        Answer::Connection
    }
}

pub struct Sender {
    client: reqwest::Client,
    settings: SenderSettings,
}

/// A webhook's signing key: the decoded `whsec_` secret. Herald's secrets are 24 bytes and
/// stay inline (no allocation per webhook); others are kept on the heap.
#[derive(Clone, Debug, PartialEq)]
pub enum SigningKey {
    Inline([u8; 24]),
    Heap(Arc<[u8]>),
}

impl SigningKey {
    pub fn from_secret(secret: &str) -> Self {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap_or_else(|_| secret.as_bytes().to_vec());
        match <[u8; 24]>::try_from(key.as_slice()) {
            Ok(k) => SigningKey::Inline(k),
            Err(_) => SigningKey::Heap(Arc::from(key)),
        }
    }
    pub fn bytes(&self) -> &[u8] {
        match self {
            SigningKey::Inline(k) => k,
            SigningKey::Heap(k) => k,
        }
    }
}

/// `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed
/// with the decoded secret (Standard Webhooks).
pub fn sign(secret: &str, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    sign_with_key(&SigningKey::from_secret(secret), msg_id, timestamp, body)
}

pub fn sign_with_key(key: &SigningKey, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes()).expect("HMAC takes keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn retry_after_ms(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

impl Sender {
    pub fn new(settings: SenderSettings) -> Arc<Self> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .connect_timeout(Duration::from_millis(settings.request_timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private_urls {
            b = b.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let client = b.build().expect("HTTP client");
        Arc::new(Sender { client, settings })
    }

    /// The POST body: `{messages, meta}`.
    pub fn body(&self, messages: &[String]) -> Vec<u8> {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let body = json!({
            "messages": messages,
            "meta": { "apiVersion": self.settings.api_version, "serverTime": herald_model::round_ms(d.as_secs_f64()), "serial": self.settings.serial },
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Is this URL allowed right now? (Literal addresses; names are checked by the resolver.)
    fn blocked(&self, url: &reqwest::Url) -> bool {
        if self.settings.allow_private_urls {
            return false;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => !is_public_ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => !is_public_ip(ip.into()),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => true,
        }
    }

    /// POST `messages` to `url`, signed with the webhook's `whsec_` secret.
    pub async fn post(&self, url: &str, secret: &str, msg_id: &str, messages: &[String]) -> Outcome {
        self.post_signed(url, &SigningKey::from_secret(secret), msg_id, messages).await
    }

    /// POST `messages` to `url`. Never fails: no answer is status 0.
    pub async fn post_signed(&self, url: &str, key: &SigningKey, msg_id: &str, messages: &[String]) -> Outcome {
        self.deliver(url, key, msg_id, messages).await.0
    }

    /// POST `messages` to `url`: the outcome for the webhook's machine, and how it ended.
    pub async fn deliver(&self, url: &str, key: &SigningKey, msg_id: &str, messages: &[String]) -> (Outcome, Answer) {
        let none = Outcome { status: 0, retry_after_ms: None };
        let Ok(parsed) = reqwest::Url::parse(url) else { return (none, Answer::Blocked) };
        if !matches!(parsed.scheme(), "http" | "https") || self.blocked(&parsed) {
            return (none, Answer::Blocked);
        }
        let body = self.body(messages);
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let signature = sign_with_key(key, msg_id, ts, &body);
        let res = self
            .client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after_ms = retry_after_ms(r.headers());
                // Read (and drop) the body so the connection goes back to the pool; a receiver
                // that never finishes its body is cut by the request timeout.
                let _ = r.bytes().await;
                (Outcome { status, retry_after_ms }, Answer::Status(status))
            }
            Err(e) => (none, classify(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let sig = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
