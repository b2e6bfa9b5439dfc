//! `/health/live` and `/health/ready`, for load balancers and orchestrators.
//!
//! Live: the process answers HTTP. Ready: it can do its work — what that needs (the store, the
//! webhook dispatcher, the change bus) is known to the binary that wired them, so it hands the
//! API a [`Readiness`] to ask.

use serde_json::{json, Map, Value};

/// One named check and whether it passes (`Err` says why not, without internals).
pub type Check = (&'static str, Result<(), String>);

#[async_trait::async_trait]
pub trait Readiness: Send + Sync {
    async fn checks(&self) -> Vec<Check>;
}

/// The answer of `/health/ready`: 200 when every check passes, 503 otherwise; the body names
/// each check either way.
pub async fn ready(readiness: Option<&dyn Readiness>) -> (u16, Value) {
    let checks = match readiness {
        Some(r) => r.checks().await,
        None => vec![],
    };
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let map: Map<String, Value> = checks
        .into_iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                match r {
                    Ok(()) => json!("ok"),
                    Err(why) => json!(why),
                },
            )
        })
        .collect();
    if ok {
        (200, json!({ "status": "ready", "checks": map }))
    } else {
        (503, json!({ "status": "not ready", "checks": map }))
    }
}
