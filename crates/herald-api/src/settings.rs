//! The settings the API needs (the binary reads them from defaults, TOML, environment, flags).

use std::time::Duration;

use herald_model::throttle::ThrottlePolicy;
use herald_model::webhook::WebhookSettings;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Base of apiEndpoints and service info, with a trailing `/`.
    pub public_url: String,
    /// `meta.serial`.
    pub serial: String,
    /// Pryv `auth.trustedApps`: comma-separated `appId@origin` patterns with `*` wildcards.
    pub trusted_apps: String,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// The whole body must arrive within this time once the headers are read (slow senders).
    pub body_read_timeout: Duration,
    /// Longest request URI (path and query string), in bytes: past it 414.
    pub max_uri_length: usize,
    /// Most request headers, and their total size in bytes (names and values): past either 431.
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub auth: AuthSettings,
    pub webhooks: WebhookSettings,
    /// Other nodes write to the same store: before using its caches, a request catches up with
    /// the change log (one `MAX(seq)` query), so a write acknowledged by any node is seen at once.
    pub shared_store: bool,
    pub access: AccessSettings,
}

/// Access requests (Pryv's consent flow, docs/access-requests.md).
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The consent page that `authUrl`s point at; `None`: Herald's own (`{public URL}auth`).
    /// Set it to run Pryv's consent web app instead.
    pub default_auth_url: Option<String>,
    /// Consent pages an app may name itself (`authUrl` of a request): Pryv's
    /// `access.trustedAuthUrls`.
    pub trusted_auth_urls: Vec<String>,
    /// Requests waiting at once, over all apps: past it, 429 (anybody may create one).
    pub max_live_requests: u64,
    /// How long a decided request stays readable after its first poll (the token it carries
    /// should not lie around for the request's whole lifetime).
    pub terminal_retention: Duration,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            default_auth_url: None,
            trusted_auth_urls: vec![],
            max_live_requests: 10_000,
            terminal_retention: Duration::from_secs(120),
        }
    }
}

/// Passwords: their hashing and the throttling of guesses (docs/security.md).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Argon2id cost of password hashes: memory in KiB and iterations (OWASP's first set by
    /// default). Lower only for benchmarks that register thousands of users.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Password-hashing threads; 0: half of the cores, at least one.
    pub hash_threads: usize,
    /// Hashing jobs that may wait for a thread; beyond, 503 with `Retry-After`.
    pub hash_queue: usize,
    /// Niceness of the hashing threads (Linux), so the rest of the server comes first.
    pub hash_nice: i32,
    /// Failed logins of one user before it is blocked; 0: no per-user limit.
    pub login_failures_per_user: u32,
    /// Failed logins from one client address before it is blocked; 0: no per-address limit.
    pub login_failures_per_address: u32,
    /// Registrations from one client address before it is blocked; 0: no limit.
    pub registrations_per_address: u32,
    /// The first block; each further failure doubles it, up to `throttle_max_delay`.
    pub throttle_delay: Duration,
    pub throttle_max_delay: Duration,
    /// A record with no failure for this long is forgotten.
    pub throttle_quiet: Duration,
    /// Users, or addresses, each throttle remembers at most (the oldest go first).
    pub throttle_capacity: usize,
    /// How long a refusal (429, or 503 of the hashing pool) waits before it is sent: a client
    /// that ignores `Retry-After` gets one refusal per connection per this delay.
    pub refusal_delay: Duration,
    /// A header set by a trusted reverse proxy with the client's address (`X-Forwarded-For`,
    /// `X-Real-IP`); empty: the address of the connection.
    pub client_address_header: String,
}

impl AuthSettings {
    pub fn policy(&self, free: u32) -> ThrottlePolicy {
        ThrottlePolicy { free, delay: self.throttle_delay, max_delay: self.throttle_max_delay, quiet: self.throttle_quiet }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            hash_threads: 0,
            hash_queue: 16,
            hash_nice: 10,
            login_failures_per_user: 5,
            login_failures_per_address: 20,
            registrations_per_address: 100,
            throttle_delay: Duration::from_secs(1),
            throttle_max_delay: Duration::from_secs(15 * 60),
            throttle_quiet: Duration::from_secs(15 * 60),
            throttle_capacity: 100_000,
            refusal_delay: Duration::from_millis(250),
            client_address_header: String::new(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            public_url: "http://127.0.0.1:3000/".into(),
            serial: "2026112701".into(),
            trusted_apps: "*@*".into(),
            body_limit: 10 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            max_uri_length: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            auth: AuthSettings::default(),
            webhooks: WebhookSettings::default(),
            shared_store: false,
            access: AccessSettings::default(),
        }
    }
}
