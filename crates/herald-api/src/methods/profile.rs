//! `profile.*`: free JSON objects kept per user: `public` (any access reads it), `private`
//! (personal only) and one per app (the app access's `name`). An update is a shallow merge:
//! each top-level key replaces the stored one, `null` removes it. No change is notified.

use std::sync::Arc;

use herald_model::{ApiError, ErrorId};
use serde_json::{json, Map, Value};

use super::MethodResult;
use crate::context::{store_error, Context};

async fn read(ctx: &Context, id: &str) -> MethodResult {
    let p = ctx.app.store.profile(&ctx.user.id, id).await.map_err(store_error)?;
    Ok(json!({ "profile": p.unwrap_or_else(|| json!({})) }))
}

async fn merge(ctx: &Context, id: &str, params: &Value) -> MethodResult {
    let update = match params.get("update") {
        Some(Value::Object(u)) => u.clone(),
        Some(_) => return Err(ApiError::param("update", "\"update\" must be object.")),
        None => return Err(ApiError::param("update", "\"update\" is required.")),
    };
    // Read, merge, write: two updates of one profile at the same instant keep the last one.
    let stored = ctx.app.store.profile(&ctx.user.id, id).await.map_err(store_error)?;
    let mut p: Map<String, Value> = stored.and_then(|v| v.as_object().cloned()).unwrap_or_default();
    for (k, v) in update {
        if v.is_null() {
            p.remove(&k);
        } else {
            p.insert(k, v);
        }
    }
    let p = Value::Object(p);
    ctx.app.store.put_profile(&ctx.user.id, id, &p).await.map_err(store_error)?;
    Ok(json!({ "profile": p }))
}

/// The profile set of an app access, or Pryv's refusal for other accesses.
fn app_set(ctx: &Context) -> Result<String, ApiError> {
    if ctx.access.access_type != herald_model::access::AccessType::App {
        return Err(ApiError::new(ErrorId::InvalidOperation, "This resource is only available to app accesses."));
    }
    Ok(format!("app:{}", ctx.access.name))
}

/// The `id` of `profile.get` / `profile.update`: `public` or `private` over HTTP; Pryv takes any
/// id in a batch call, Herald only these two (other ids would be sets nothing else reads).
fn set_id(params: &Value) -> Result<String, ApiError> {
    match params.get("id").and_then(Value::as_str) {
        Some(id @ ("public" | "private")) => Ok(id.to_string()),
        Some(other) => Err(ApiError::unknown("profile", other)),
        None => Err(ApiError::param("id", "\"id\" is required.")),
    }
}

pub async fn get_public(ctx: Arc<Context>, _params: Value) -> MethodResult {
    read(&ctx, "public").await
}

pub async fn get_app(ctx: Arc<Context>, _params: Value) -> MethodResult {
    let id = app_set(&ctx)?;
    read(&ctx, &id).await
}

pub async fn update_app(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = app_set(&ctx)?;
    merge(&ctx, &id, &params).await
}

pub async fn get(ctx: Arc<Context>, params: Value) -> MethodResult {
    ctx.forbid_unless(ctx.access.is_personal(), "profile.get")?;
    read(&ctx, &set_id(&params)?).await
}

pub async fn update(ctx: Arc<Context>, params: Value) -> MethodResult {
    ctx.forbid_unless(ctx.access.is_personal(), "profile.update")?;
    merge(&ctx, &set_id(&params)?, &params).await
}
