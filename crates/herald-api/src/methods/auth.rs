//! Users and sessions: registration, login, logout, and the service info that Pryv clients read
//! first. Login and registration have no access yet, so the HTTP layer calls them directly;
//! `auth.logout` is in the method table.
//!
//! Passwords are hashed and checked only in the hashing pool (`crate::hashing`), and guesses are
//! throttled per user and per client address before any hash is computed (`crate::throttle`,
//! docs/security.md).

use std::sync::Arc;
use std::time::Duration;

use herald_model::access::{Access, AccessType};
use herald_model::change::{Change, ChangeKind, ChangeType};
use herald_model::id::{new_id, new_token};
use herald_model::params::{as_object, opt_str};
use herald_model::user::{is_valid_username, User};
use herald_model::{ApiError, ErrorId};
use herald_storage::StoreError;
use serde_json::{json, Value};

use super::MethodResult;
use crate::context::{store_error, Context};
use crate::{App, API_VERSION};

/// What a throttle counts, for the log and the error message.
#[derive(Clone, Copy)]
enum Guarded {
    Login,
    Registration,
}

impl Guarded {
    fn as_str(self) -> &'static str {
        match self {
            Guarded::Login => "login",
            Guarded::Registration => "registration",
        }
    }
}

/// Who a throttle keys on.
#[derive(Clone, Copy)]
enum Scope {
    User,
    Address,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Address => "address",
        }
    }
}

/// A request refused by a throttle: one log line, the refusal delay, then 429 with the wait.
/// Nothing was hashed.
async fn refuse(app: &App, what: Guarded, scope: Scope, username: &str, address: &str, wait: Duration) -> ApiError {
    let secs = herald_model::throttle::retry_after_secs(wait);
    tracing::info!(what = what.as_str(), scope = scope.as_str(), username = ?username, address, retry_after_s = secs, "throttled: refused");
    tokio::time::sleep(app.settings.auth.refusal_delay).await;
    let message = match (what, scope) {
        (Guarded::Login, Scope::User) => format!("Too many failed logins for this user; retry in {secs} s."),
        (Guarded::Login, Scope::Address) => format!("Too many failed logins from this address; retry in {secs} s."),
        (Guarded::Registration, _) => format!("Too many registrations from this address; retry in {secs} s."),
    };
    ApiError::retry_later(ErrorId::TooManyRequests, message, secs)
}

/// A counted attempt that starts a block: one log line.
fn log_block(what: Guarded, scope: Scope, username: &str, address: &str, block: Option<Duration>) {
    if let Some(block) = block {
        let secs = herald_model::throttle::retry_after_secs(block);
        tracing::warn!(what = what.as_str(), scope = scope.as_str(), username = ?username, address, blocked_s = secs, "throttled: blocking further attempts");
    }
}

/// The hashing pool's answer, with its refusal (503) logged and delayed like a throttle's.
async fn hashing<T>(app: &App, what: Guarded, username: &str, address: &str, r: Result<T, ApiError>) -> Result<T, ApiError> {
    match r {
        Err(e) if e.id == ErrorId::ApiUnavailable => {
            tracing::info!(what = what.as_str(), username = ?username, address, "password-hashing pool full: refused");
            tokio::time::sleep(app.settings.auth.refusal_delay).await;
            Err(e)
        }
        other => other,
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(idx) => rest = &rest[idx + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Pryv's `auth.trustedApps` check of (appId, Origin).
pub fn is_trusted(trusted: &str, app_id: &str, origin: &str) -> bool {
    trusted.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| match entry.split_once('@') {
        Some((a, o)) => glob(a, app_id) && glob(o, origin),
        None => glob(entry, app_id),
    })
}

fn personal_access(app_id: &str, now: f64, author: &str) -> Access {
    Access {
        id: new_id(),
        token: new_token(),
        access_type: AccessType::Personal,
        name: app_id.into(),
        device_name: None,
        permissions: vec![],
        expires: None,
        client_data: None,
        created: now,
        created_by: author.into(),
        modified: now,
        modified_by: author.into(),
        deleted: None,
    }
}

/// Save a new personal access with its change in the log, then announce the change.
async fn insert_personal_access(app: &App, user: &User, access: &Access) -> Result<(), ApiError> {
    let log = vec![Change::new(&user.id, &user.username, ChangeKind::Accesses, ChangeType::Create, vec![super::accesses::item(access)])];
    for change in app.store.insert_access(&user.id, access, log).await.map_err(store_error)? {
        app.publish(change);
    }
    Ok(())
}

/// `POST /users` (and `/reg/users`): create an account and a personal access for `appId`.
/// Registrations are limited per client `address`.
pub async fn register(app: Arc<App>, body: Value, address: &str) -> MethodResult {
    let throttle = &app.throttles.registration_address;
    if let Err(wait) = throttle.check(address) {
        return Err(refuse(&app, Guarded::Registration, Scope::Address, "", address, wait).await);
    }
    let m = as_object(&body)?;
    let app_id = opt_str(&m, "appId")?.or(opt_str(&m, "appid")?).unwrap_or_default();
    if !(6..=99).contains(&app_id.len()) {
        return Err(ApiError::param("appId", "\"appId\" is required (6 to 99 characters)."));
    }
    let username = opt_str(&m, "username")?.unwrap_or_default();
    if !is_valid_username(&username) {
        return Err(ApiError::param(
            "username",
            "\"username\" must be 5-60 lowercase letters, digits or '-', not starting or ending with '-'.",
        ));
    }
    let password = opt_str(&m, "password")?.unwrap_or_default();
    if !(6..=100).contains(&password.chars().count()) {
        return Err(ApiError::param("password", "\"password\" must have 6 to 100 characters."));
    }
    let email = opt_str(&m, "email")?.unwrap_or_default();
    if !email.contains('@') || email.len() > 300 {
        return Err(ApiError::param("email", "\"email\" must be an e-mail address."));
    }
    let language = opt_str(&m, "language")?.unwrap_or_else(|| "en".into());
    let hashed = app.hasher.hash(password).await;
    let password_hash = hashing(&app, Guarded::Registration, &username, address, hashed).await?;
    // Counted once the hash is paid for, whatever happens next (a taken username costs as much).
    log_block(Guarded::Registration, Scope::Address, &username, address, throttle.count(address));
    let now = crate::now();
    let user = User { id: new_id(), username: username.clone(), email: email.clone(), password_hash, language, created: now };
    app.store.create_user(&user).await.map_err(|e| match e {
        StoreError::Conflict { field } if field == "email" => ApiError::exists("user", "email", &json!(email)),
        StoreError::Conflict { .. } => ApiError::exists("user", "username", &json!(username)),
        other => store_error(other),
    })?;
    let mut access = personal_access(&app_id, now, "system");
    access.created_by = access.id.clone();
    access.modified_by = access.id.clone();
    insert_personal_access(&app, &user, &access).await?;
    Ok(json!({ "username": username, "apiEndpoint": app.api_endpoint(&username, Some(&access.token)) }))
}

/// `POST /{username}/auth/login`: a personal access for `appId`, if the app is trusted from
/// this origin and the password is right. Logging in again with the same app gives the same
/// session until it is logged out.
///
/// Failed logins are throttled per user and per client `address`: a blocked user or address
/// gets 429 before any hash is computed, even with the right password. A success clears the
/// user's record; the address's is cleared only by quiet time, so that logging into one's own
/// account does not wash an address that guesses at others'.
pub async fn login(app: Arc<App>, username: &str, body: Value, origin: &str, address: &str) -> MethodResult {
    let m = as_object(&body)?;
    let (Some(u), Some(password), Some(app_id)) = (opt_str(&m, "username")?, opt_str(&m, "password")?, opt_str(&m, "appId")?) else {
        return Err(ApiError::new(ErrorId::InvalidOperation, "Login needs \"username\", \"password\" and \"appId\"."));
    };
    let invalid = || ApiError::new(ErrorId::InvalidCredentials, "The given username/password pair is invalid.");
    if u != username {
        return Err(ApiError::new(ErrorId::InvalidOperation, "The username in the body does not match the one in the path."));
    }
    if !is_trusted(&app.settings.trusted_apps, &app_id, origin) {
        return Err(ApiError::new(ErrorId::InvalidCredentials, format!("The app \"{app_id}\" is not trusted from origin \"{origin}\".")));
    }
    let t = &app.throttles;
    if let Err(wait) = t.login_address.check(address) {
        return Err(refuse(&app, Guarded::Login, Scope::Address, username, address, wait).await);
    }
    let user = match app.user(username).await {
        Ok(u) => u,
        Err(e) => {
            // Guessing at usernames counts against the address.
            if e.id == ErrorId::UnknownResource {
                log_block(Guarded::Login, Scope::Address, username, address, t.login_address.count(address));
            }
            return Err(e);
        }
    };
    if let Err(wait) = t.login_user.check(&user.username) {
        return Err(refuse(&app, Guarded::Login, Scope::User, username, address, wait).await);
    }
    // The hash as stored now: the in-memory user may predate a password change (or another
    // node's).
    let stored = app.store.user_by_name(username).await.map_err(store_error)?.ok_or_else(invalid)?;
    let checked = app.hasher.verify(password, stored.password_hash).await;
    if !hashing(&app, Guarded::Login, username, address, checked).await? {
        log_block(Guarded::Login, Scope::User, username, address, t.login_user.count(&user.username));
        log_block(Guarded::Login, Scope::Address, username, address, t.login_address.count(address));
        return Err(invalid());
    }
    t.login_user.clear(&user.username);
    let existing = app.store.accesses(&user.id, false).await.map_err(store_error)?;
    let access = match existing.into_iter().find(|a| a.is_personal() && a.name == app_id) {
        Some(a) => a,
        None => {
            let mut a = personal_access(&app_id, crate::now(), "");
            a.created_by = a.id.clone();
            a.modified_by = a.id.clone();
            insert_personal_access(&app, &user, &a).await?;
            a
        }
    };
    Ok(json!({
        "token": access.token,
        "apiEndpoint": app.api_endpoint(&user.username, Some(&access.token)),
        "preferredLanguage": user.language,
    }))
}

/// `auth.logout`: ends the personal session (the access is deleted).
pub async fn logout(ctx: Arc<Context>, _params: Value) -> MethodResult {
    if !ctx.access.is_personal() {
        return Err(ApiError::forbidden("Only a personal access (a login session) can log out."));
    }
    let log = vec![ctx.change(ChangeKind::Accesses, ChangeType::Delete, vec![super::accesses::item(&ctx.access)])];
    ctx.announce(
        ctx.app.store.delete_accesses(&ctx.user.id, std::slice::from_ref(&ctx.access.id), ctx.now, log).await.map_err(store_error)?,
    );
    Ok(json!({}))
}

/// `GET /service/info`: what `pryv.Service` needs to find the API, registration and access pages.
pub fn service_info(app: &App) -> Value {
    let base = format!("{}/", app.settings.public_url.trim_end_matches('/'));
    json!({
        "name": "Herald",
        "version": API_VERSION,
        "serial": app.settings.serial,
        "api": format!("{base}{{username}}/"),
        "access": format!("{base}reg/access/"),
        "register": format!("{base}reg/"),
        "home": base,
        "support": base,
        "terms": base,
        "eventTypes": "https://pryv.github.io/event-types/flat.json",
        // Pryv's browser sign-in button reads its visuals from here (contract §4.5).
        "assets": { "definitions": format!("{base}www/assets/index.json") },
        "features": { "noHF": true },
    })
}

/// `GET /reg/hostings`: one region, one zone, one hosting (this server).
pub fn hostings(app: &App) -> Value {
    let base = format!("{}/", app.settings.public_url.trim_end_matches('/'));
    json!({
        "regions": { "local": { "name": "Local", "localizedName": { "en": "Local" }, "zones": { "local": {
            "name": "Local", "localizedName": { "en": "Local" }, "hostings": { "herald": {
                "url": base, "name": "Herald", "description": "This Herald server", "localizedDescription": {}, "available": true,
                "availableCore": base,
            }}
        }}}}
    })
}

/// `GET /reg/{username}/check_username`.
pub async fn check_username(app: Arc<App>, username: &str) -> MethodResult {
    if !is_valid_username(username) {
        return Err(ApiError::new(ErrorId::InvalidParametersFormat, "The parameters' format is invalid.").with_data(json!([{
            "code": "username-invalid",
            "message": "Username should have between 5 and 60 characters and contain lowercase letters or numbers or dashes",
            "path": "#/username",
            "param": "username",
        }])));
    }
    let reserved = app.store.user_by_name(username).await.map_err(store_error)?.is_some();
    Ok(json!({ "reserved": reserved }))
}

/// A register-style answer (Pryv's Express handlers under `/reg/`): no `meta`, and error ids
/// of their own. (status, body).
pub type RegAnswer = (u16, Value);

fn reg_error(status: u16, id: &str, message: &str) -> RegAnswer {
    (status, json!({ "error": { "id": id, "message": message } }))
}

/// `POST /reg/{username}/server` (the client's `service.userExists`): the server that hosts the
/// user, or 404 `unknown-user`.
pub async fn user_server(app: Arc<App>, username: &str) -> Result<RegAnswer, ApiError> {
    if !is_valid_username(username) || app.store.user_by_name(username).await.map_err(store_error)?.is_none() {
        return Ok(reg_error(404, "unknown-user", "Unknown user"));
    }
    Ok((200, json!({ "server": app.settings.public_url.trim_end_matches('/'), "alias": username })))
}

/// `GET /reg/{email}/uid` (`{uid}`, the client's `userIdForEmail`) and `GET /reg/{email}/username`
/// (`{username}`): the user of an email, or 404 `unknown-email`.
pub async fn user_for_email(app: Arc<App>, email: &str, key: &str) -> Result<RegAnswer, ApiError> {
    match app.store.user_by_email(email).await.map_err(store_error)? {
        Some(u) => Ok((200, json!({ key: u.username }))),
        None => Ok(reg_error(404, "unknown-email", "Unknown email")),
    }
}

/// `GET /reg/{email}/check_email`: `{reserved: false}` when free, 409 when taken.
pub async fn check_email(app: Arc<App>, email: &str) -> MethodResult {
    if app.store.user_by_email(email).await.map_err(store_error)?.is_some() {
        return Err(ApiError::new(ErrorId::ItemAlreadyExists, format!("An user with email \"{email}\" already exists"))
            .with_data(json!({ "email": email })));
    }
    Ok(json!({ "reserved": false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_apps_patterns() {
        assert!(is_trusted("*@*", "my-app", "https://x.com"));
        assert!(is_trusted("*@*", "my-app", ""));
        assert!(is_trusted("pryv-*@https://*.rec.la*", "pryv-test", "https://sw.rec.la:1234"));
        assert!(!is_trusted("pryv-*@https://*.rec.la*", "other", "https://sw.rec.la"));
        assert!(!is_trusted("pryv-*@https://*.rec.la*", "pryv-test", "https://evil.com"));
        assert!(is_trusted("a@x, b@y", "b", "y"));
        assert!(!is_trusted("", "b", "y"));
    }
}
