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
    /// Attachments, history, email (issue 10).
    pub extras: ExtraSettings,
    pub access: AccessSettings,
}

/// What `versioning.deletionMode` keeps of a deleted event (Pryv's three modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionMode {
    /// The event's files and history go with it.
    KeepNothing,
    /// Its files go; of its history only `id`, `modified` and `modifiedBy` are kept.
    KeepAuthors,
    /// Its files and history are kept.
    KeepEverything,
}

/// Settings of attachments, event history and the emails of password resets.
#[derive(Debug, Clone)]
pub struct ExtraSettings {
    /// Largest attached file, in bytes: above it the upload answers 413 and stores nothing.
    pub attachments_max_bytes: u64,
    /// Key of attachments' read tokens; empty: one is made at the first start and kept in the
    /// store, so every node of a cluster and every restart agrees on it.
    pub read_token_secret: String,
    /// Keep each past state of an event (`events.getOne` with `includeHistory`).
    pub force_keep_history: bool,
    pub deletion_mode: DeletionMode,
    /// The SMTP relay of password-reset emails (`smtp://host:port`, `smtps://user:pass@host`);
    /// empty: the password-reset routes answer `api-unavailable`.
    pub smtp_url: String,
    /// `From:` of the emails.
    pub email_from: String,
    /// The page a reset email links to, with `?resetToken=…`; empty: `{public_url}reset-password`.
    pub reset_page_url: String,
    /// How long a password-reset token is valid.
    pub reset_max_age: Duration,
}

impl Default for ExtraSettings {
    fn default() -> Self {
        ExtraSettings {
            attachments_max_bytes: 100 * 1024 * 1024,
            read_token_secret: String::new(),
            force_keep_history: false,
            deletion_mode: DeletionMode::KeepNothing,
            smtp_url: String::new(),
            email_from: "Herald <no-reply@localhost>".into(),
            reset_page_url: String::new(),
            reset_max_age: Duration::from_secs(3600),
        }
    }
}

impl ExtraSettings {
    /// The settings' keys (TOML path, environment variable), for the binary's table.
    pub const KEYS: &'static [(&'static str, &'static str)] = &[
        ("attachments.max_bytes", "HERALD_ATTACHMENTS_MAX_BYTES"),
        ("attachments.read_token_secret", "HERALD_ATTACHMENTS_READ_TOKEN_SECRET"),
        ("versioning.force_keep_history", "HERALD_VERSIONING_FORCE_KEEP_HISTORY"),
        ("versioning.deletion_mode", "HERALD_VERSIONING_DELETION_MODE"),
        ("email.smtp_url", "HERALD_EMAIL_SMTP_URL"),
        ("email.from", "HERALD_EMAIL_FROM"),
        ("email.reset_page_url", "HERALD_EMAIL_RESET_PAGE_URL"),
        ("email.reset_max_age_ms", "HERALD_EMAIL_RESET_MAX_AGE_MS"),
    ];

    /// Apply one of [`ExtraSettings::KEYS`] given as text; `Ok(false)` for a key not of these.
    pub fn set(&mut self, key: &str, v: &str) -> Result<bool, String> {
        let num = |v: &str| v.trim().parse::<u64>().map_err(|_| format!("{key}: \"{v}\" is not a valid number"));
        match key {
            "attachments.max_bytes" => self.attachments_max_bytes = num(v)?,
            "attachments.read_token_secret" => self.read_token_secret = v.to_string(),
            "versioning.force_keep_history" => {
                self.force_keep_history = match v.trim() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" | "" => false,
                    _ => return Err(format!("{key}: \"{v}\" is not true or false")),
                }
            }
            "versioning.deletion_mode" => {
                self.deletion_mode = match v.trim() {
                    "keep-nothing" => DeletionMode::KeepNothing,
                    "keep-authors" => DeletionMode::KeepAuthors,
                    "keep-everything" => DeletionMode::KeepEverything,
                    _ => return Err(format!("{key}: \"{v}\" must be keep-nothing, keep-authors or keep-everything")),
                }
            }
            "email.smtp_url" => self.smtp_url = v.trim().to_string(),
            "email.from" => self.email_from = v.to_string(),
            "email.reset_page_url" => self.reset_page_url = v.trim().to_string(),
            "email.reset_max_age_ms" => self.reset_max_age = Duration::from_millis(num(v)?.max(1)),
            _ => return Ok(false),
        }
        Ok(true)
    }
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
            extras: ExtraSettings::default(),
            access: AccessSettings::default(),
        }
    }
}
