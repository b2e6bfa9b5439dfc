//! The settings the API needs (the binary reads them from defaults, TOML, environment, flags).

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
    /// Argon2id cost of password hashes: memory in KiB and iterations (OWASP's first set by
    /// default). Lower only for benchmarks that register thousands of users.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub webhooks: WebhookSettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            public_url: "http://127.0.0.1:3000/".into(),
            serial: "2026112701".into(),
            trusted_apps: "*@*".into(),
            body_limit: 10 * 1024 * 1024,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            webhooks: WebhookSettings::default(),
        }
    }
}
