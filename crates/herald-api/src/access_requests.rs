//! `/reg/access…`: access requests, the way Pryv.io serves them (`pryv-api-extras.md` §1) with
//! Herald's choices (contract §4): an app creates a request, polls it, and a consent page
//! (Herald's own at `/auth`, or Pryv's consent app) posts the outcome.
//!
//! These are register-style routes: no authentication, no `meta`, Pryv's own error ids. The
//! rules are in `herald_model::access_request`; this module adds what needs the store and the
//! settings: keys, expiry, the cap on live requests, and the check that an ACCEPTED token
//! really grants what was asked.

use std::sync::Arc;

use base64::Engine as _;
use herald_model::access::{AccessType, Permission};
use herald_model::access_request::{self as model, AccessRequest, Outcome, RegError, Status};
use rand::RngCore as _;
use serde_json::{json, Value};

use crate::App;

/// An answer: HTTP status and body (already without `meta`).
pub type Answer = (u16, Value);

fn err(e: RegError) -> Answer {
    (e.status, e.to_json())
}

fn unexpected(e: impl std::fmt::Display) -> Answer {
    // The details go to the log, never to the client.
    tracing::error!(error = %e, "access request: storage failure");
    (500, json!({ "error": { "id": "unexpected-error", "message": "Unexpected error; it was logged." } }))
}

fn base(app: &App) -> String {
    format!("{}/", app.settings.public_url.trim_end_matches('/'))
}

/// The consent page of Herald (or the one the settings name).
pub fn auth_url(app: &App) -> String {
    app.settings.access.default_auth_url.clone().unwrap_or_else(|| format!("{}auth", base(app)))
}

/// The service block a waiting request shows its consent page: what `Service.setServiceInfo`
/// needs (`name`, `api`, `access`, `register`), without `features` or `version`, as Pryv.
fn service_block(app: &App) -> Value {
    let mut info = crate::methods::auth::service_info(app);
    if let Some(m) = info.as_object_mut() {
        m.remove("features");
        m.remove("version");
    }
    info
}

/// `scheme://host[:port]` of a URL: what `auth.trustedApps` patterns match.
fn origin(url: &str) -> String {
    url::Url::parse(url).map(|u| u.origin().ascii_serialization()).unwrap_or_default()
}

fn new_key() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)[..16].to_string()
}

/// `POST /reg/access`: a new request, waiting for sign-in.
pub async fn create(app: Arc<App>, body: Result<Value, String>) -> Answer {
    let body = match body {
        Ok(b) => b,
        Err(m) => return err(RegError::invalid(m)),
    };
    let creation = match model::parse_creation(&body) {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    if let Some(custom) = &creation.custom_auth_url {
        if !model::is_trusted_auth_url(custom, &app.settings.access.trusted_auth_urls) {
            let none = if app.settings.access.trusted_auth_urls.is_empty() { " (none configured)" } else { "" };
            return err(RegError::invalid(format!("authUrl does not match any access:trustedAuthUrls entry{none}")));
        }
    }
    // The consent page sends the browser to `returnURL` with the request's key: only to an
    // origin the platform trusts for this app (Pryv's `auth.trustedApps`), so Herald is never
    // an open redirect.
    if let Value::String(r) = &creation.return_url {
        if !crate::methods::auth::is_trusted(&app.settings.trusted_apps, &creation.requesting_app_id, &origin(r)) {
            return err(RegError::invalid("returnURL is not trusted for this app (auth.trustedApps)"));
        }
    }
    let b = base(&app);
    let (auth, access_base, service_info) = (auth_url(&app), format!("{b}reg/access/"), format!("{b}reg/service/info"));
    let urls = model::Urls { auth_url: &auth, access_base: &access_base, service_info: &service_info };
    let now = crate::now();
    let request = model::new_request(&creation, &new_key(), &urls, now);
    if Value::Object(request.state.clone()).to_string().len() > model::MAX_STATE_BYTES {
        return err(RegError::invalid(format!("The request is larger than {} bytes", model::MAX_STATE_BYTES)));
    }
    match app.store.insert_access_request(&request, now, app.settings.access.max_live_requests).await {
        Ok(true) => (201, model::creation_answer(&request)),
        Ok(false) => {
            (429, json!({ "error": { "id": "too-many-requests", "message": "Too many access requests are waiting; retry later." } }))
        }
        Err(e) => unexpected(e),
    }
}

/// The live request with this key, or Pryv's `unknown-access-key`. An expired one is deleted.
async fn live(app: &App, key: &str, now: f64) -> Result<AccessRequest, Answer> {
    if !model::is_valid_key(key) {
        return Err(err(RegError::unknown_key()));
    }
    match app.store.access_request(key).await {
        Ok(Some(r)) if r.is_live(now) => Ok(r),
        Ok(Some(_)) => {
            let _ = app.store.delete_access_request(key).await;
            Err(err(RegError::unknown_key()))
        }
        Ok(None) => Err(err(RegError::unknown_key())),
        Err(e) => Err(unexpected(e)),
    }
}

/// `GET /reg/access/{key}`: the state, with the status code of the state. A decided request is
/// kept `terminal_retention` after its first poll, then forgotten.
pub async fn poll(app: Arc<App>, key: &str) -> Answer {
    let now = crate::now();
    let r = match live(&app, key, now).await {
        Ok(r) => r,
        Err(a) => return a,
    };
    if r.status != Status::NeedSignin {
        let until = herald_model::round_ms(now + app.settings.access.terminal_retention.as_secs_f64());
        if until < r.expires {
            if let Err(e) = app.store.shorten_access_request(key, until).await {
                return unexpected(e);
            }
        }
    }
    (r.status.http_status(), model::poll_answer(&r, &service_block(&app)))
}

/// `POST /reg/access/{key}`: the consent page's outcome. Only a waiting request may be decided,
/// and an ACCEPTED one only with a token that grants exactly what was asked (contract §4.2).
pub async fn set_outcome(app: Arc<App>, key: &str, body: Result<Value, String>) -> Answer {
    let now = crate::now();
    let body = match body {
        Ok(b) => b,
        Err(m) => return err(RegError::invalid(m)),
    };
    let mut r = match live(&app, key, now).await {
        Ok(r) => r,
        Err(a) => return a,
    };
    let outcome = match model::parse_outcome(&body) {
        Ok(o) => o,
        Err(e) => return err(e),
    };
    if r.status != Status::NeedSignin {
        return err(RegError::invalid(format!("This access request is already decided ({})", r.status.as_str())));
    }
    let endpoint = match &outcome {
        Outcome::Accepted { username, token, .. } => match verify_grant(&app, &r, username, token, now).await {
            Ok(()) => app.api_endpoint(username, Some(token)),
            Err(a) => return a,
        },
        Outcome::Refused { .. } => String::new(),
    };
    r.decide(&outcome, endpoint);
    match app.store.decide_access_request(&r).await {
        Ok(true) => (r.status.http_status(), model::poll_answer(&r, &Value::Null)),
        Ok(false) => err(RegError::invalid("This access request is already decided")),
        Err(e) => unexpected(e),
    }
}

/// The token must be a live app access of `username` whose stream permissions are exactly the
/// requested ones (names and `defaultName`s aside).
async fn verify_grant(app: &App, r: &AccessRequest, username: &str, token: &str, now: f64) -> Result<(), Answer> {
    let invalid = || err(RegError::consent("token-invalid", "The token is not a live access of this user"));
    let user = match app.user(username).await {
        Ok(u) => u,
        Err(_) => return Err(invalid()),
    };
    let access = match app.store.access_by_token(&user.id, token).await {
        Ok(Some(a)) if !a.is_expired(now) => a,
        Ok(_) => return Err(invalid()),
        Err(e) => return Err(unexpected(e)),
    };
    if access.access_type != AccessType::App {
        return Err(err(RegError::consent("not-app-access", "The token must be an app access")));
    }
    let requested = r.state.get("requestedPermissions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut granted: Vec<(String, String)> = access
        .permissions
        .iter()
        .filter_map(|p| match p {
            Permission::Stream { stream_id, level, .. } => Some((stream_id.clone(), level.as_str().to_string())),
            _ => None,
        })
        .collect();
    granted.sort();
    granted.dedup();
    if granted != model::requested_stream_levels(&requested) {
        return Err(err(RegError::consent("permissions-mismatch", "The access does not grant exactly the requested permissions")));
    }
    Ok(())
}
