//! `getAccessInfo` and `callBatch`.

use std::sync::Arc;

use herald_model::event::Event;
use herald_model::ApiError;
use serde_json::{json, Value};

use super::attachments::ReadTokens;
use super::{dispatch, MethodResult};
use crate::context::Context;

pub async fn get_access_info(ctx: Arc<Context>, _params: Value) -> MethodResult {
    let mut info = ctx.access.to_json(&ctx.api_endpoint(&ctx.access.token));
    info["user"] = json!({ "username": ctx.user.username });
    Ok(info)
}

/// One answer of a batch call: a method's result or error, or an event that a run of
/// `events.create` wrote. The HTTP layer writes the events straight out ([`write_results`]);
/// other callers take the whole answer as a `Value` ([`call_batch`]).
pub enum BatchAnswer {
    Result(Value),
    Created(Box<Event>),
    Error(ApiError),
}

/// Calls run one after the other with the caller's access; a failing call does not stop the
/// batch, its result is its error.
pub async fn call_batch(ctx: Arc<Context>, params: Value) -> MethodResult {
    let tokens = ctx.read_tokens();
    let results: Vec<Value> = batch_answers(ctx, params)
        .await?
        .into_iter()
        .map(|a| match a {
            BatchAnswer::Result(v) => v,
            BatchAnswer::Created(e) => json!({ "event": tokens.event_json(&e) }),
            BatchAnswer::Error(e) => json!({ "error": e.to_json() }),
        })
        .collect();
    Ok(json!({ "results": results }))
}

/// `{"results":[…]` of a batch call, written into `out` (the caller closes the object).
pub fn write_results(answers: &[BatchAnswer], tokens: &ReadTokens, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"results\":[");
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match a {
            BatchAnswer::Result(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            BatchAnswer::Created(e) => {
                out.extend_from_slice(b"{\"event\":");
                tokens.write_event(e, out);
                out.push(b'}');
            }
            BatchAnswer::Error(e) => {
                let _ = serde_json::to_writer(&mut *out, &json!({ "error": e.to_json() }));
            }
        }
    }
    out.push(b']');
}

/// The answers of a batch call's calls, in order.
pub async fn batch_answers(ctx: Arc<Context>, params: Value) -> Result<Vec<BatchAnswer>, ApiError> {
    let Value::Array(mut calls) = params else {
        return Err(ApiError::structure("A batch call must be a JSON array of {method, params}."));
    };
    let max = herald_model::params::MAX_BATCH_CALLS;
    if calls.len() > max {
        return Err(ApiError::new(herald_model::ErrorId::TooLarge, format!("A batch call may hold at most {max} calls."))
            .with_data(json!({ "max": max })));
    }
    let mut answers = Vec::with_capacity(calls.len());
    let is_create = |c: &Value| c.get("method").and_then(Value::as_str) == Some("events.create");
    let mut i = 0;
    while i < calls.len() {
        // A run of `events.create` is written in one transaction: one commit for the run.
        let run = calls[i..].iter().take_while(|c| is_create(c)).count();
        if run > 1 {
            let params = calls[i..i + run].iter_mut().map(|c| c.get_mut("params").map(Value::take).unwrap_or(json!({}))).collect();
            for r in super::events::create_many(&ctx, params).await {
                answers.push(match r {
                    Ok(e) => BatchAnswer::Created(Box::new(e)),
                    Err(e) => BatchAnswer::Error(e),
                });
            }
            i += run;
            continue;
        }
        let call = &mut calls[i];
        i += 1;
        let r = match call.get("method").and_then(Value::as_str) {
            Some("callBatch") => Err(ApiError::new(herald_model::ErrorId::InvalidMethod, "callBatch cannot be nested.")),
            Some(method) => {
                let method = method.to_string();
                match call.get_mut("params").map(Value::take) {
                    None | Some(Value::Null) => dispatch(ctx.clone(), &method, json!({})).await,
                    Some(p @ Value::Object(_)) => dispatch(ctx.clone(), &method, p).await,
                    Some(_) => Err(ApiError::structure("The \"params\" of a batch call must be an object.")),
                }
            }
            None => Err(ApiError::structure("Each batch call needs a string \"method\".")),
        };
        answers.push(match r {
            Ok(v) => BatchAnswer::Result(v),
            Err(e) => BatchAnswer::Error(e),
        });
    }
    Ok(answers)
}
