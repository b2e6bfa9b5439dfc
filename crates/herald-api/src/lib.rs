//! Herald's Pryv.io API.
//!
//! Every Pryv method lives in [`methods`], one module per resource, registered by its Pryv id
//! (`events.create`, `webhooks.update`, ...) in one table. The transports only translate:
//! [`http`] maps routes to method ids and params, batch calls (`POST /{username}/`) dispatch
//! each call by id, and socket.io does the same. Authentication and the response envelope
//! (`meta`, Pryv errors) are shared by all of them.

pub mod context;
pub mod http;
pub mod methods;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use herald_bus::ChangeBus;
use herald_model::user::User;
use herald_model::{ApiError, ErrorId};
use herald_storage::Store;
use serde_json::{json, Value};

pub use context::Context;
pub use settings::ApiSettings;

/// The API version Herald reports: the Pryv.io API it is compatible with.
pub const API_VERSION: &str = "1.9.2";

/// Shared state of the API: storage, bus, settings and the method table.
pub struct App {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn ChangeBus>,
    pub settings: ApiSettings,
    pub methods: methods::MethodTable,
    /// Users are never renamed, so a username resolves to the same user for the process's life.
    users: RwLock<HashMap<String, Arc<User>>>,
    /// Sends `webhooks.test` POSTs; set by the binary (it owns the delivery engine).
    pub webhook_tester: Option<Arc<dyn methods::webhooks::WebhookTester>>,
}

impl App {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn ChangeBus>, settings: ApiSettings) -> Self {
        App { store, bus, settings, methods: methods::table(), users: RwLock::new(HashMap::new()), webhook_tester: None }
    }

    pub fn with_webhook_tester(mut self, tester: Arc<dyn methods::webhooks::WebhookTester>) -> Self {
        self.webhook_tester = Some(tester);
        self
    }

    /// The user named in the path, or Pryv's 404.
    pub async fn user(&self, username: &str) -> Result<Arc<User>, ApiError> {
        if let Some(u) = self.users.read().ok().and_then(|m| m.get(username).cloned()) {
            return Ok(u);
        }
        let user = self.store.user_by_name(username).await.map_err(context::store_error)?.ok_or_else(|| {
            ApiError::new(ErrorId::UnknownResource, format!("Unknown user \"{username}\"")).with_data(json!({"username": username}))
        })?;
        let user = Arc::new(user);
        if let Ok(mut m) = self.users.write() {
            m.insert(username.to_string(), user.clone());
        }
        Ok(user)
    }

    /// `meta` of every response.
    pub fn meta(&self) -> Value {
        json!({ "apiVersion": API_VERSION, "serverTime": now(), "serial": self.settings.serial })
    }

    /// `http://{token}@host/{username}/`, Pryv's apiEndpoint form.
    pub fn api_endpoint(&self, username: &str, token: Option<&str>) -> String {
        let base = self.settings.public_url.trim_end_matches('/');
        let with_user = format!("{base}/{username}/");
        match (token, with_user.split_once("://")) {
            (Some(t), Some((scheme, rest))) => format!("{scheme}://{t}@{rest}"),
            _ => with_user,
        }
    }
}

/// Now, as a Pryv timestamp (seconds, millisecond precision).
pub fn now() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    herald_model::round_ms(d.as_secs_f64())
}
