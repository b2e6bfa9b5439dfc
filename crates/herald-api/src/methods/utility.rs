//! `getAccessInfo` and `callBatch`.

use std::sync::Arc;

use herald_model::ApiError;
use serde_json::{json, Value};

use super::{dispatch, MethodResult};
use crate::context::Context;

pub async fn get_access_info(ctx: Arc<Context>, _params: Value) -> MethodResult {
    let mut info = ctx.access.to_json(&ctx.api_endpoint(&ctx.access.token));
    info["user"] = json!({ "username": ctx.user.username });
    Ok(info)
}

/// Calls run one after the other with the caller's access; a failing call does not stop the
/// batch, its result is its error.
pub async fn call_batch(ctx: Arc<Context>, params: Value) -> MethodResult {
    let calls = params.as_array().ok_or_else(|| ApiError::structure("A batch call must be a JSON array of {method, params}."))?;
    let max = herald_model::params::MAX_BATCH_CALLS;
    if calls.len() > max {
        return Err(ApiError::new(herald_model::ErrorId::TooLarge, format!("A batch call may hold at most {max} calls."))
            .with_data(json!({ "max": max })));
    }
    let mut results = Vec::with_capacity(calls.len());
    let is_create = |c: &Value| c.get("method").and_then(Value::as_str) == Some("events.create");
    let mut i = 0;
    while i < calls.len() {
        // A run of `events.create` is written in one transaction: one commit for the run.
        let run = calls[i..].iter().take_while(|c| is_create(c)).count();
        if run > 1 {
            let params = calls[i..i + run].iter().map(|c| c.get("params").cloned().unwrap_or(json!({}))).collect();
            for r in super::events::create_many(ctx.clone(), params).await {
                results.push(r.unwrap_or_else(|e| json!({ "error": e.to_json() })));
            }
            i += run;
            continue;
        }
        let call = &calls[i];
        i += 1;
        let r = match (call.get("method").and_then(Value::as_str), call) {
            (Some("callBatch"), _) => Err(ApiError::new(herald_model::ErrorId::InvalidMethod, "callBatch cannot be nested.")),
            (Some(method), _) => match call.get("params") {
                None | Some(Value::Null) => dispatch(ctx.clone(), method, json!({})).await,
                Some(p @ Value::Object(_)) => dispatch(ctx.clone(), method, p.clone()).await,
                Some(_) => Err(ApiError::structure("The \"params\" of a batch call must be an object.")),
            },
            (None, _) => Err(ApiError::structure("Each batch call needs a string \"method\".")),
        };
        results.push(match r {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_json() }),
        });
    }
    Ok(json!({ "results": results }))
}
