//! Users and sessions: registration, login, logout, and the service info that Pryv clients read
//! first. Login and registration have no access yet, so the HTTP layer calls them directly;
//! `auth.logout` is in the method table.

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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

fn hash_password(password: String, memory_kib: u32, iterations: u32) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    let params = argon2::Params::new(memory_kib.max(8), iterations.max(1), 1, None).map_err(ApiError::unexpected)?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::unexpected)
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
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
pub async fn register(app: Arc<App>, body: Value) -> MethodResult {
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
    let (mem, iter) = (app.settings.argon2_memory_kib, app.settings.argon2_iterations);
    let password_hash = tokio::task::spawn_blocking(move || hash_password(password, mem, iter)).await.map_err(ApiError::unexpected)??;
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
pub async fn login(app: Arc<App>, username: &str, body: Value, origin: &str) -> MethodResult {
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
    let user = app.user(username).await?;
    let hash = user.password_hash.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.map_err(ApiError::unexpected)?;
    if !ok {
        return Err(invalid());
    }
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
        "access": format!("{base}access/"),
        "register": format!("{base}reg/"),
        "home": base,
        "support": base,
        "terms": base,
        "eventTypes": "https://pryv.github.io/event-types/flat.json",
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
        return Err(ApiError::param("username", "Invalid username."));
    }
    let reserved = app.store.user_by_name(username).await.map_err(store_error)?.is_some();
    Ok(json!({ "reserved": reserved }))
}

/// `POST /reg/{username}/server` (the client's `service.userExists`): the server that hosts the
/// user, or Pryv's 404.
pub async fn user_server(app: Arc<App>, username: &str) -> MethodResult {
    app.user(username).await?;
    let host = url::Url::parse(&app.settings.public_url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    Ok(json!({ "server": host, "alias": host }))
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

    #[test]
    fn passwords_are_hashed() {
        let h = hash_password("secret-pw".into(), 1024, 1).unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(!h.contains("secret-pw"));
        assert!(verify_password("secret-pw", &h));
        assert!(!verify_password("wrong", &h));
    }
}
