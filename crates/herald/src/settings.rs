//! Settings, from lowest to highest priority: built-in defaults, a TOML file (`--config`),
//! `HERALD_*` environment variables, command-line flags (contract section 1).
//!
//! Every setting is one row of [`KEYS`]: its TOML path (`section.name`) and environment name.
//! Each layer yields `(key, text)` pairs that [`Settings::set`] parses, so the four layers
//! cannot disagree on names or formats.

use std::path::PathBuf;

use herald_api::ApiSettings;
use herald_model::webhook::{OnAccessDeletion, WebhookSettings};
use herald_storage::sqlite::Durability;

/// (TOML key, environment variable).
pub const KEYS: &[(&str, &str)] = &[
    ("listen", "HERALD_LISTEN"),
    ("public_url", "HERALD_PUBLIC_URL"),
    ("data_dir", "HERALD_DATA_DIR"),
    ("database_url", "HERALD_DATABASE_URL"),
    ("bus_url", "HERALD_BUS_URL"),
    ("serial", "HERALD_SERIAL"),
    ("trusted_apps", "HERALD_TRUSTED_APPS"),
    ("body_limit", "HERALD_BODY_LIMIT"),
    ("durability", "HERALD_DURABILITY"),
    ("sqlite_memory_mib", "HERALD_SQLITE_MEMORY_MIB"),
    ("body_read_timeout_ms", "HERALD_BODY_READ_TIMEOUT_MS"),
    ("header_read_timeout_ms", "HERALD_HEADER_READ_TIMEOUT_MS"),
    ("max_connections", "HERALD_MAX_CONNECTIONS"),
    ("max_uri_length", "HERALD_MAX_URI_LENGTH"),
    ("max_headers", "HERALD_MAX_HEADERS"),
    ("max_header_bytes", "HERALD_MAX_HEADER_BYTES"),
    ("auth.argon2_memory_kib", "HERALD_AUTH_ARGON2_MEMORY_KIB"),
    ("auth.argon2_iterations", "HERALD_AUTH_ARGON2_ITERATIONS"),
    ("auth.hash_threads", "HERALD_AUTH_HASH_THREADS"),
    ("auth.hash_queue", "HERALD_AUTH_HASH_QUEUE"),
    ("auth.hash_nice", "HERALD_AUTH_HASH_NICE"),
    ("auth.login_failures_per_user", "HERALD_AUTH_LOGIN_FAILURES_PER_USER"),
    ("auth.login_failures_per_address", "HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS"),
    ("auth.registrations_per_address", "HERALD_AUTH_REGISTRATIONS_PER_ADDRESS"),
    ("auth.throttle_delay_ms", "HERALD_AUTH_THROTTLE_DELAY_MS"),
    ("auth.throttle_max_delay_ms", "HERALD_AUTH_THROTTLE_MAX_DELAY_MS"),
    ("auth.throttle_quiet_ms", "HERALD_AUTH_THROTTLE_QUIET_MS"),
    ("auth.throttle_capacity", "HERALD_AUTH_THROTTLE_CAPACITY"),
    ("auth.refusal_delay_ms", "HERALD_AUTH_REFUSAL_DELAY_MS"),
    ("auth.client_address_header", "HERALD_AUTH_CLIENT_ADDRESS_HEADER"),
    ("webhooks.min_interval_ms", "HERALD_WEBHOOKS_MIN_INTERVAL_MS"),
    ("webhooks.max_retries", "HERALD_WEBHOOKS_MAX_RETRIES"),
    ("webhooks.runs_size", "HERALD_WEBHOOKS_RUNS_SIZE"),
    ("webhooks.request_timeout_ms", "HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS"),
    ("webhooks.allow_private_urls", "HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS"),
    ("webhooks.max_per_access", "HERALD_WEBHOOKS_MAX_PER_ACCESS"),
    ("webhooks.on_access_deletion", "HERALD_WEBHOOKS_ON_ACCESS_DELETION"),
    ("webhooks.concurrency", "HERALD_WEBHOOKS_CONCURRENCY"),
    ("access.default_auth_url", "HERALD_ACCESS_DEFAULT_AUTH_URL"),
    ("access.trusted_auth_urls", "HERALD_ACCESS_TRUSTED_AUTH_URLS"),
    ("access.max_live_requests", "HERALD_ACCESS_MAX_LIVE_REQUESTS"),
    ("access.terminal_retention_ms", "HERALD_ACCESS_TERMINAL_RETENTION_MS"),
    ("change_log.retention_secs", "HERALD_CHANGE_LOG_RETENTION_SECS"),
    ("role", "HERALD_ROLE"),
    ("node_id", "HERALD_NODE_ID"),
    ("metrics_listen", "HERALD_METRICS_LISTEN"),
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    /// `None` until set: defaults to `http://{listen}/` once the address is bound.
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub bus_url: Option<String>,
    pub durability: Durability,
    /// What SQLite may hold in memory, page caches included, across all its connections (MiB).
    pub sqlite_memory_mib: u64,
    pub api: ApiSettings,
    /// Webhook POSTs in flight at once, over all webhooks.
    pub webhooks_concurrency: usize,
    /// How long change-log records are kept once every consumer has passed them.
    pub change_log_retention_secs: u64,
    /// Time to send a whole request head, from the moment a connection waits for one (also the
    /// idle keep-alive timeout).
    pub header_read_timeout: std::time::Duration,
    /// Connections served at once.
    pub max_connections: usize,
    pub role: Role,
    /// A name for this node in logs (optional).
    pub node_id: Option<String>,
    /// Where Prometheus metrics are served (`/metrics`); `None`: nowhere. Apart from the API's
    /// port so that they are never public by accident.
    pub metrics_listen: Option<String>,
}

/// What a node does: serve the API, deliver webhooks, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    All,
    Api,
    Delivery,
}

impl Role {
    pub fn serves_api(self) -> bool {
        self != Role::Delivery
    }
    pub fn delivers(self) -> bool {
        self != Role::Api
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:3000".into(),
            public_url: None,
            data_dir: PathBuf::from("./var"),
            database_url: None,
            bus_url: None,
            durability: Durability::Full,
            sqlite_memory_mib: 16,
            api: ApiSettings { webhooks: WebhookSettings::default(), ..ApiSettings::default() },
            webhooks_concurrency: 4096,
            change_log_retention_secs: 60,
            role: Role::All,
            node_id: None,
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 4096,
            metrics_listen: Some("127.0.0.1:9464".into()),
        }
    }
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("{key}: \"{v}\" is not a valid number"))
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(format!("{key}: \"{v}\" is not true or false")),
    }
}

impl Settings {
    /// Apply one setting given as text.
    pub fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        let w = &mut self.api.webhooks;
        let a = &mut self.api.auth;
        let ms = |v: &str| num::<u64>(key, v).map(std::time::Duration::from_millis);
        match key {
            "listen" => self.listen = v.into(),
            "public_url" => {
                let mut u = v.to_string();
                if !u.ends_with('/') {
                    u.push('/');
                }
                self.public_url = Some(u)
            }
            "data_dir" => self.data_dir = PathBuf::from(v),
            "database_url" => self.database_url = Some(v.into()).filter(|s: &String| !s.is_empty()),
            "bus_url" => self.bus_url = Some(v.into()).filter(|s: &String| !s.is_empty()),
            "serial" => self.api.serial = v.into(),
            "trusted_apps" => self.api.trusted_apps = v.into(),
            "body_limit" => self.api.body_limit = num(key, v)?,
            "body_read_timeout_ms" => self.api.body_read_timeout = ms(v)?.max(std::time::Duration::from_millis(1)),
            "header_read_timeout_ms" => self.header_read_timeout = ms(v)?.max(std::time::Duration::from_millis(1)),
            "max_connections" => self.max_connections = num::<usize>(key, v)?.max(1),
            "max_uri_length" => self.api.max_uri_length = num(key, v)?,
            "max_headers" => self.api.max_headers = num::<usize>(key, v)?.max(1),
            "max_header_bytes" => self.api.max_header_bytes = num(key, v)?,
            "sqlite_memory_mib" => self.sqlite_memory_mib = num::<u64>(key, v)?.max(1),
            "durability" => {
                self.durability = match v {
                    "full" => Durability::Full,
                    "normal" => Durability::Normal,
                    _ => return Err(format!("{key}: \"{v}\" must be full or normal")),
                }
            }
            "auth.argon2_memory_kib" => a.argon2_memory_kib = num(key, v)?,
            "auth.argon2_iterations" => a.argon2_iterations = num(key, v)?,
            "auth.hash_threads" => a.hash_threads = num(key, v)?,
            "auth.hash_queue" => a.hash_queue = num(key, v)?,
            "auth.hash_nice" => a.hash_nice = num::<i32>(key, v)?.clamp(0, 19),
            "auth.login_failures_per_user" => a.login_failures_per_user = num(key, v)?,
            "auth.login_failures_per_address" => a.login_failures_per_address = num(key, v)?,
            "auth.registrations_per_address" => a.registrations_per_address = num(key, v)?,
            "auth.throttle_delay_ms" => a.throttle_delay = ms(v)?,
            "auth.throttle_max_delay_ms" => a.throttle_max_delay = ms(v)?,
            "auth.throttle_quiet_ms" => a.throttle_quiet = ms(v)?,
            "auth.throttle_capacity" => a.throttle_capacity = num::<usize>(key, v)?.max(1),
            "auth.refusal_delay_ms" => a.refusal_delay = ms(v)?,
            "auth.client_address_header" => a.client_address_header = v.trim().to_ascii_lowercase(),
            "webhooks.min_interval_ms" => w.min_interval_ms = num(key, v)?,
            "webhooks.max_retries" => w.max_retries = num(key, v)?,
            "webhooks.runs_size" => w.runs_size = num::<usize>(key, v)?.max(1),
            "webhooks.request_timeout_ms" => w.request_timeout_ms = num::<u64>(key, v)?.max(1),
            "webhooks.allow_private_urls" => w.allow_private_urls = boolean(key, v)?,
            "webhooks.max_per_access" => w.max_per_access = num(key, v)?,
            "webhooks.on_access_deletion" => {
                w.on_access_deletion =
                    OnAccessDeletion::parse(v).ok_or_else(|| format!("{key}: \"{v}\" must be keep, deactivate or delete"))?
            }
            "webhooks.concurrency" => self.webhooks_concurrency = num::<usize>(key, v)?.max(1),
            "access.default_auth_url" => self.api.access.default_auth_url = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
            "access.trusted_auth_urls" => {
                self.api.access.trusted_auth_urls = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
            }
            "access.max_live_requests" => self.api.access.max_live_requests = num::<u64>(key, v)?.max(1),
            "access.terminal_retention_ms" => self.api.access.terminal_retention = ms(v)?,
            "change_log.retention_secs" => self.change_log_retention_secs = num(key, v)?,
            "role" => {
                self.role = match v.trim() {
                    "all" | "" => Role::All,
                    "api" => Role::Api,
                    "delivery" => Role::Delivery,
                    _ => return Err(format!("{key}: \"{v}\" must be all, api or delivery")),
                }
            }
            "node_id" => self.node_id = Some(v.to_string()).filter(|s| !s.is_empty()),
            "metrics_listen" => self.metrics_listen = Some(v.trim().to_string()).filter(|s| !s.is_empty() && s != "off"),
            // Attachments, history and email (issue 10): their own table in herald-api.
            _ if self.api.extras.set(key, v)? => {}
            _ => return Err(format!("unknown setting \"{key}\"")),
        }
        Ok(())
    }

    /// Apply a TOML document: top-level keys, `[auth]` and `[webhooks]` keys.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), String> {
        let doc: toml::Table = text.parse().map_err(|e| format!("config file: {e}"))?;
        fn flat(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match v {
                    toml::Value::Table(sub) => flat(&key, sub, out),
                    toml::Value::String(s) => out.push((key, s.clone())),
                    other => out.push((key, other.to_string())),
                }
            }
        }
        let mut pairs = vec![];
        flat("", &doc, &mut pairs);
        for (k, v) in pairs {
            self.set(&k, &v)?;
        }
        Ok(())
    }

    /// Apply `HERALD_*` variables from `get` (the process environment in practice).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for (key, env) in KEYS.iter().chain(herald_api::settings::ExtraSettings::KEYS) {
            if let Some(v) = get(env) {
                self.set(key, &v).map_err(|e| format!("{env}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_in_order() {
        let mut s = Settings::default();
        s.apply_toml("listen = \"0.0.0.0:1\"\nserial = \"x\"\n[webhooks]\nmax_retries = 3\nallow_private_urls = true\n").unwrap();
        assert_eq!(s.listen, "0.0.0.0:1");
        assert_eq!(s.api.webhooks.max_retries, 3);
        assert!(s.api.webhooks.allow_private_urls);
        s.apply_env(|k| (k == "HERALD_WEBHOOKS_MAX_RETRIES").then(|| "2".to_string())).unwrap();
        assert_eq!(s.api.webhooks.max_retries, 2);
        assert_eq!(s.api.serial, "x");
        assert!(s.set("webhooks.on_access_deletion", "nope").is_err());
        assert!(s.set("nope", "1").is_err());
        assert!(s.apply_toml("[webhooks]\nmax_retries = \"many\"").is_err());
        s.apply_toml("[auth]\nlogin_failures_per_user = 3\nthrottle_delay_ms = 250\nclient_address_header = \"X-Forwarded-For\"\n")
            .unwrap();
        assert_eq!(s.api.auth.login_failures_per_user, 3);
        assert_eq!(s.api.auth.throttle_delay, std::time::Duration::from_millis(250));
        assert_eq!(s.api.auth.client_address_header, "x-forwarded-for");
        s.apply_env(|k| (k == "HERALD_AUTH_HASH_QUEUE").then(|| "0".to_string())).unwrap();
        assert_eq!(s.api.auth.hash_queue, 0);
    }
}
