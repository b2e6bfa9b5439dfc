//! `webhooks.*` (spec 2, contract 3). A webhook belongs to the access that created it: only that
//! access or a personal one may see and manage it. Personal accesses cannot create webhooks; app
//! and shared accesses can, whatever their permissions. Every change is announced to the
//! dispatcher at once (a `webhooks` change on the bus), so updates take effect immediately.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_model::id::new_id;
use herald_model::params::{as_object, opt_u64, reject_unknown};
use herald_model::scope::{check_scopes, parse_scopes};
use herald_model::webhook::{validate_url, Webhook, WebhookState};
use herald_model::{ApiError, ErrorId};
use herald_storage::StoreError;
use rand::RngCore;
use serde_json::{json, Value};

use super::{id_param, update_param, MethodResult};
use crate::context::{store_error, Context};

/// Sends the synchronous `webhooks.test` POST (implemented by the delivery engine).
#[async_trait]
pub trait WebhookTester: Send + Sync {
    /// `Ok(status)` for a 2xx answer; `Err(reason)` otherwise.
    async fn test(&self, webhook: &Webhook) -> Result<u16, String>;
}

/// Fields the server owns: sending them is `forbidden` (contract 3.4).
const SERVER_FIELDS: &[&str] = &[
    "id",
    "accessId",
    "state",
    "runCount",
    "failCount",
    "lastRun",
    "runs",
    "currentRetries",
    "created",
    "createdBy",
    "modified",
    "modifiedBy",
    "secret",
];

fn forbidden_fields(keys: &[&str]) -> ApiError {
    ApiError::forbidden(format!("Forbidden update was attempted on the following protected field(s): [{}].", keys.join(",")))
}

/// The change that tells the dispatcher (on every node) that a webhook was created, updated or
/// deleted; it carries the webhook's state after the change.
pub(crate) fn dispatcher_change(ctx: &Context, w: &Webhook, change_type: ChangeType) -> Change {
    let active = (change_type != ChangeType::Delete).then_some(w.state == WebhookState::Active);
    ctx.change(ChangeKind::Webhooks, change_type, vec![ChangedItem::Webhook { id: w.id.clone(), active }])
}

fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Spec 2.2: a personal access handles any webhook, others only their own.
async fn load_in_scope(ctx: &Context, id: &str) -> Result<Webhook, ApiError> {
    let w = ctx.app.store.webhook(&ctx.user.id, id).await.map_err(store_error)?.ok_or_else(|| ApiError::unknown("webhook", id))?;
    if !ctx.access.is_personal() && w.access_id != ctx.access.id {
        return Err(ApiError::forbidden("The webhook was not created by this app access."));
    }
    Ok(w)
}

/// Parse and permission-check `scopes`; `null` or `{}` mean unscoped.
async fn checked_scopes(ctx: &Context, v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let scopes = parse_scopes(v)?;
    if scopes.is_empty() {
        return Ok(None);
    }
    check_scopes(&scopes, &ctx.access, &ctx.tree().await?.tree)?;
    Ok(Some(v.clone()))
}

pub async fn get(ctx: Arc<Context>, _params: Value) -> MethodResult {
    let only = (!ctx.access.is_personal()).then_some(ctx.access.id.as_str());
    let list = ctx.app.store.webhooks(&ctx.user.id, only).await.map_err(store_error)?;
    Ok(json!({ "webhooks": list.iter().map(Webhook::to_json).collect::<Vec<_>>() }))
}

pub async fn get_one(ctx: Arc<Context>, params: Value) -> MethodResult {
    let w = load_in_scope(&ctx, &id_param(&params)?).await?;
    Ok(json!({ "webhook": w.to_json() }))
}

pub async fn create(ctx: Arc<Context>, params: Value) -> MethodResult {
    if ctx.access.is_personal() {
        return Err(ApiError::forbidden("You cannot access webhooks.create resource using the given access"));
    }
    let m = as_object(&params)?;
    let server: Vec<&str> = m.keys().map(String::as_str).filter(|k| SERVER_FIELDS.contains(k)).collect();
    if !server.is_empty() {
        return Err(forbidden_fields(&server));
    }
    reject_unknown(&m, &["url", "scopes", "minIntervalMs", "maxRetries"])?;
    let settings = &ctx.app.settings.webhooks;
    let url = match m.get("url") {
        Some(Value::String(u)) => u.clone(),
        Some(_) => return Err(ApiError::param("url", "\"url\" must be a string.")),
        None => return Err(ApiError::param("url", "\"url\" is required.")),
    };
    validate_url(&url, settings.allow_private_urls).map_err(|msg| ApiError::param("url", msg))?;
    let min_interval_ms = match opt_u64(&m, "minIntervalMs")? {
        Some(v) if v < settings.min_interval_ms => {
            return Err(ApiError::param("minIntervalMs", format!("\"minIntervalMs\" cannot be below {}.", settings.min_interval_ms)))
        }
        Some(v) if v > 24 * 3600 * 1000 => return Err(ApiError::param("minIntervalMs", "\"minIntervalMs\" cannot exceed one day.")),
        Some(v) => v,
        None => settings.min_interval_ms,
    };
    let max_retries = match opt_u64(&m, "maxRetries")? {
        Some(v) if v > settings.max_retries as u64 => {
            return Err(ApiError::param("maxRetries", format!("\"maxRetries\" cannot be above {}.", settings.max_retries)))
        }
        Some(v) => v as u32,
        None => settings.max_retries,
    };
    let scopes = checked_scopes(&ctx, m.get("scopes")).await?;
    let count = ctx.app.store.count_webhooks(&ctx.user.id, &ctx.access.id).await.map_err(store_error)?;
    if count >= settings.max_per_access {
        return Err(ApiError::new(ErrorId::InvalidOperation, format!("An access may own at most {} webhooks.", settings.max_per_access)));
    }
    let w = Webhook { scopes, ..Webhook::new(new_id(), ctx.author(), &url, min_interval_ms, max_retries, new_secret(), ctx.now) };
    let log = vec![dispatcher_change(&ctx, &w, ChangeType::Create)];
    let logged = ctx.app.store.insert_webhook(&ctx.user.id, &w, log).await.map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::exists("webhook", "url", &json!(url)),
        other => store_error(other),
    })?;
    ctx.announce(logged);
    Ok(json!({ "webhook": w.to_json() }))
}

pub async fn update(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let update = update_param(&params)?;
    let u = as_object(&update)?;
    let known_fixed: Vec<&str> = u
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "state" && (SERVER_FIELDS.contains(k) || ["url", "minIntervalMs", "maxRetries"].contains(k)))
        .collect();
    reject_unknown(&u, &[SERVER_FIELDS, &["url", "scopes", "minIntervalMs", "maxRetries"]].concat())?;
    if !known_fixed.is_empty() {
        return Err(forbidden_fields(&known_fixed));
    }
    let state = match u.get("state") {
        None => None,
        Some(Value::String(s)) => {
            Some(WebhookState::parse(s).ok_or_else(|| ApiError::param("state", "\"state\" must be active or inactive."))?)
        }
        Some(_) => return Err(ApiError::param("state", "\"state\" must be a string.")),
    };
    let mut w = load_in_scope(&ctx, &id).await?;
    if u.contains_key("scopes") {
        w.scopes = checked_scopes(&ctx, u.get("scopes")).await?;
    }
    if let Some(s) = state {
        w.state = s;
        if s == WebhookState::Active {
            w.current_retries = 0;
        }
    }
    w.modified = ctx.now;
    w.modified_by = ctx.author().into();
    let log = vec![dispatcher_change(&ctx, &w, ChangeType::Update)];
    ctx.announce(ctx.app.store.update_webhook(&ctx.user.id, &w, log).await.map_err(store_error)?);
    Ok(json!({ "webhook": w.to_json() }))
}

pub async fn delete(ctx: Arc<Context>, params: Value) -> MethodResult {
    let w = load_in_scope(&ctx, &id_param(&params)?).await?;
    let log = vec![dispatcher_change(&ctx, &w, ChangeType::Delete)];
    ctx.announce(ctx.app.store.delete_webhook(&ctx.user.id, &w.id, ctx.now, log).await.map_err(store_error)?);
    Ok(json!({ "webhookDeletion": { "id": w.id, "deleted": ctx.now } }))
}

/// POST `{messages: ["test"], meta}` now; counts no run. A failing endpoint is
/// `unknown-referenced-resource` (spec 2.7).
pub async fn test(ctx: Arc<Context>, params: Value) -> MethodResult {
    let w = load_in_scope(&ctx, &id_param(&params)?).await?;
    let tester = ctx.app.webhook_tester.clone().ok_or_else(|| ApiError::unexpected("no webhook sender configured"))?;
    match tester.test(&w).await {
        Ok(_) => Ok(json!({ "webhook": w.to_json() })),
        Err(reason) => {
            Err(ApiError::new(ErrorId::UnknownReferencedResource, format!("Unknown referenced webhook \"{}\" ({reason})", w.url))
                .with_data(json!({ "url": w.url })))
        }
    }
}
