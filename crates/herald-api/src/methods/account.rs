//! `account.*`: the user's own account (email, language, storage used, password), and the
//! password reset by email. All but the reset are personal-only; the reset has no access (the
//! HTTP layer calls it directly, as it does login) and is for trusted apps only.

use std::sync::Arc;

use herald_model::id::new_token;
use herald_model::params::{as_object, opt_str, reject_unknown};
use herald_model::user::User;
use herald_model::{ApiError, ErrorId};
use herald_storage::StoreError;
use serde_json::{json, Value};

use super::MethodResult;
use crate::context::{store_error, Context};
use crate::App;

/// The user as stored now: the in-memory map of users only resolves names (password and email
/// change, and other nodes may change them).
async fn fresh_user(app: &App, username: &str) -> Result<User, ApiError> {
    app.user(username).await?;
    app.store
        .user_by_name(username)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::new(ErrorId::UnknownResource, format!("Unknown user \"{username}\"")))
}

async fn account_json(app: &App, user: &User) -> MethodResult {
    let used = app.store.storage_used(&user.id).await.map_err(store_error)?;
    Ok(json!({ "account": {
        "username": user.username,
        "email": user.email,
        "language": user.language,
        "storageUsed": { "dbDocuments": used.db_documents, "attachedFiles": used.attached_files },
    }}))
}

pub async fn get(ctx: Arc<Context>, _params: Value) -> MethodResult {
    ctx.forbid_unless(ctx.access.is_personal(), "account.get")?;
    let user = fresh_user(&ctx.app, &ctx.user.username).await?;
    account_json(&ctx.app, &user).await
}

fn email_taken(email: &str) -> ApiError {
    ApiError::new(ErrorId::ItemAlreadyExists, format!("An user with email \"{email}\" already exists")).with_data(json!({ "email": email }))
}

fn is_email(s: &str) -> bool {
    s.len() <= 300 && s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !s.contains(char::is_whitespace))
}

/// `account.update` `{update: {email?, language?}}`: anything else is refused.
pub async fn update(ctx: Arc<Context>, params: Value) -> MethodResult {
    ctx.forbid_unless(ctx.access.is_personal(), "account.update")?;
    let update = super::update_param(&params)?;
    let m = as_object(&update)?;
    reject_unknown(&m, &["email", "language"])?;
    let mut user = fresh_user(&ctx.app, &ctx.user.username).await?;
    if let Some(email) = opt_str(&m, "email")? {
        if !is_email(&email) {
            return Err(ApiError::param("email", "\"email\" must be an e-mail address."));
        }
        user.email = email;
    }
    if let Some(language) = opt_str(&m, "language")? {
        if !(1..=5).contains(&language.len()) {
            return Err(ApiError::param("language", "\"language\" must be a language code."));
        }
        user.language = language;
    }
    ctx.app.store.update_user(&user).await.map_err(|e| match e {
        StoreError::Conflict { .. } => email_taken(&user.email),
        other => store_error(other),
    })?;
    account_json(&ctx.app, &user).await
}

fn new_password(m: &serde_json::Map<String, Value>, key: &str) -> Result<String, ApiError> {
    let p = opt_str(m, key)?.ok_or_else(|| ApiError::param(key, format!("\"{key}\" is required.")))?;
    if !(6..=100).contains(&p.chars().count()) {
        return Err(ApiError::param(key, format!("\"{key}\" must have 6 to 100 characters.")));
    }
    Ok(p)
}

/// `account.changePassword` `{oldPassword, newPassword}`. A wrong old password counts as a
/// failed login of the user (the same throttle): a stolen session cannot guess it at will.
/// Existing sessions stay valid, as in Pryv.
pub async fn change_password(ctx: Arc<Context>, params: Value) -> MethodResult {
    ctx.forbid_unless(ctx.access.is_personal(), "account.changePassword")?;
    let m = as_object(&params)?;
    reject_unknown(&m, &["oldPassword", "newPassword"])?;
    let old = opt_str(&m, "oldPassword")?.ok_or_else(|| ApiError::param("oldPassword", "\"oldPassword\" is required."))?;
    let new = new_password(&m, "newPassword")?;
    let app = &ctx.app;
    let mut user = fresh_user(app, &ctx.user.username).await?;
    let throttle = &app.throttles.login_user;
    if let Err(wait) = throttle.check(&user.username) {
        let secs = herald_model::throttle::retry_after_secs(wait);
        tokio::time::sleep(app.settings.auth.refusal_delay).await;
        return Err(ApiError::retry_later(ErrorId::TooManyRequests, format!("Too many failed attempts; retry in {secs} s."), secs));
    }
    if !app.hasher.verify(old, user.password_hash.clone()).await? {
        throttle.count(&user.username);
        return Err(ApiError::new(ErrorId::InvalidOperation, "The given password does not match."));
    }
    user.password_hash = app.hasher.hash(new).await?;
    app.store.update_user(&user).await.map_err(store_error)?;
    Ok(json!({}))
}

/// Pryv's check of the app of a password reset: `appId` with the request's `Origin`.
fn check_trusted(app: &App, m: &serde_json::Map<String, Value>, origin: &str) -> Result<(), ApiError> {
    let app_id = opt_str(m, "appId")?.ok_or_else(|| ApiError::param("appId", "\"appId\" is required."))?;
    if !super::auth::is_trusted(&app.settings.trusted_apps, &app_id, origin) {
        return Err(ApiError::new(ErrorId::InvalidCredentials, "The app id (\"appId\") is either missing or not trusted."));
    }
    Ok(())
}

/// Both reset routes answer this when no SMTP relay is set: no token could ever reach the user.
fn no_relay(app: &App) -> Result<(), ApiError> {
    if app.settings.extras.smtp_url.is_empty() {
        return Err(ApiError::new(
            ErrorId::ApiUnavailable,
            "Password reset is not available: this server has no email relay (setting HERALD_EMAIL_SMTP_URL).",
        ));
    }
    Ok(())
}

/// `account.requestPasswordReset` (`POST /{username}/account/request-password-reset`, no
/// token): makes a single-use reset token and emails its link to the account's address.
pub async fn request_password_reset(app: Arc<App>, username: &str, body: Value, origin: &str) -> MethodResult {
    let user = fresh_user(&app, username).await?;
    let m = as_object(&body)?;
    check_trusted(&app, &m, origin)?;
    no_relay(&app)?;
    let extras = &app.settings.extras;
    let token = new_token();
    let expires = crate::now() + extras.reset_max_age.as_secs_f64();
    app.store.insert_password_reset(&user.id, &token, expires).await.map_err(store_error)?;
    let page =
        if extras.reset_page_url.is_empty() { format!("{}reset-password", app.settings.public_url) } else { extras.reset_page_url.clone() };
    let sep = if page.contains('?') { '&' } else { '?' };
    let link = format!("{page}{sep}resetToken={token}");
    crate::mail::send_reset(&app.settings.extras, &user, &link, &token).await?;
    Ok(json!({}))
}

/// `account.resetPassword` `{appId, resetToken, newPassword}` (no token): the token is used
/// once, within its validity.
pub async fn reset_password(app: Arc<App>, username: &str, body: Value, origin: &str) -> MethodResult {
    let mut user = fresh_user(&app, username).await?;
    let m = as_object(&body)?;
    check_trusted(&app, &m, origin)?;
    no_relay(&app)?;
    let token = opt_str(&m, "resetToken")?.ok_or_else(|| ApiError::param("resetToken", "\"resetToken\" is required."))?;
    let password = new_password(&m, "newPassword")?;
    let invalid = || ApiError::new(ErrorId::MissingAccessToken, "The reset token is invalid or expired");
    let owner = app.store.take_password_reset(&token, crate::now()).await.map_err(store_error)?;
    if owner.as_deref() != Some(user.id.as_str()) {
        return Err(invalid());
    }
    user.password_hash = app.hasher.hash(password).await?;
    app.store.update_user(&user).await.map_err(store_error)?;
    Ok(json!({}))
}
