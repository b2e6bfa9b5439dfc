//! The attachments part of `events.*`: files attached to events (Pryv's `attachments`), their
//! read tokens, adding files (`events.create` / `events.update` as multipart, in
//! `http_files.rs`, which streams the bytes into the store), and `events.deleteAttachment`.
//!
//! Files live in the store's file storage (`Store::create_file`), outside the event rows; the
//! event row lists them. A file is written before the event row that lists it, and removed after
//! the row that stops listing it, so a listed file always exists; a crash in between can only
//! leave a file that nothing lists.

use std::sync::Arc;

use base64::Engine as _;
use herald_model::access::Access;
use herald_model::change::ChangeType;
use herald_model::event::{Attachment, Event};
use herald_model::params::{as_object, req_str};
use herald_model::{ApiError, ErrorId};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use super::MethodResult;
use crate::context::Context;
use crate::App;

/// Pryv's read token of a file for an access: `<access id>-<base64url(HMAC-SHA1(secret,
/// "<file id>-<access token>"))>`. It lives as long as the access keeps its token.
pub fn read_token(secret: &str, access_id: &str, access_token: &str, file_id: &str) -> String {
    format!("{access_id}-{}", token_mac(secret, access_token, file_id))
}

fn token_mac(secret: &str, access_token: &str, file_id: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(format!("{file_id}-{access_token}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A read token's access id and MAC, or `None` when it has no `-`.
pub fn split_read_token(t: &str) -> Option<(&str, &str)> {
    t.split_once('-')
}

/// Whether `mac` is the right one for this access and file (compared in constant time).
pub fn read_token_matches(secret: &str, access_token: &str, file_id: &str, mac: &str) -> bool {
    let want = token_mac(secret, access_token, file_id);
    want.len() == mac.len() && want.bytes().zip(mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Makes the read tokens of one access: events in their API form for that access.
#[derive(Clone)]
pub struct ReadTokens {
    secret: Arc<str>,
    access_id: String,
    token: String,
}

impl ReadTokens {
    pub fn new(app: &App, access: &Access) -> Self {
        ReadTokens { secret: app.loaded_read_token_secret(), access_id: access.id.clone(), token: access.token.clone() }
    }

    pub fn event_json(&self, e: &Event) -> Value {
        if e.attachments.is_empty() {
            return e.to_json();
        }
        e.to_json_with(&|file_id| read_token(&self.secret, &self.access_id, &self.token, file_id))
    }

    /// [`Self::event_json`] written straight into `out`, without building the `Value`.
    pub fn write_event(&self, e: &Event, out: &mut Vec<u8>) {
        let token = |file_id: &str| read_token(&self.secret, &self.access_id, &self.token, file_id);
        let _ = serde_json::to_writer(out, &herald_model::event::ApiEvent { event: e, read_token: Some(&token) });
    }
}

/// `events.deleteAttachment` `{id, fileId}`: the event without that file (200 `{event}`), the
/// file removed, `eventsChanged`.
pub async fn delete_attachment(ctx: Arc<Context>, params: Value) -> MethodResult {
    let m = as_object(&params)?;
    let id = req_str(&m, "id")?;
    let file_id = req_str(&m, "fileId")?;
    let mut e = super::events::load(&ctx, &id).await?;
    let tree = ctx.tree().await?;
    if !ctx.access.can_update_event(&tree, &e.stream_ids) {
        return Err(ApiError::forbidden("The given token's access permissions do not allow this operation."));
    }
    let Some(pos) = e.attachments.iter().position(|a| a.id == file_id) else {
        return Err(ApiError::unknown("attachment", &file_id));
    };
    let previous = e.clone();
    e.attachments.remove(pos);
    e.modified = ctx.now;
    e.modified_by = ctx.author().to_string();
    super::events::save_update(&ctx, &previous, &e, ChangeType::Update).await?;
    remove_files(&ctx.app, &ctx.user.id, &[file_id]).await;
    Ok(json!({ "event": ctx.event_json(&e) }))
}

/// Add stored files to an existing event (`POST /{username}/events/{id}` as multipart): the
/// method `events.update` with nothing else changed. Pryv ignores the non-file part there.
pub async fn add_to_event(ctx: &Arc<Context>, id: &str, files: Vec<Attachment>) -> MethodResult {
    let mut e = super::events::load(ctx, id).await?;
    let previous = e.clone();
    e.attachments.extend(files);
    e.modified = ctx.now;
    e.modified_by = ctx.author().to_string();
    super::events::save_update(ctx, &previous, &e, ChangeType::Update).await?;
    Ok(json!({ "event": ctx.event_json(&e) }))
}

/// Whether this access may add files to the event `id` (checked before any byte is stored).
pub async fn check_can_add(ctx: &Context, id: &str) -> Result<(), ApiError> {
    let e = super::events::load(ctx, id).await?;
    if !ctx.access.can_update_event(&ctx.tree().await?.tree, &e.stream_ids) {
        return Err(ApiError::forbidden("The given token's access permissions do not allow this operation."));
    }
    Ok(())
}

/// `events.create` with files already stored: the event part validated and checked as a JSON
/// create is, then written with its attachments.
pub async fn create_with_files(ctx: &Arc<Context>, params: Value, files: Vec<Attachment>) -> MethodResult {
    if as_object(&params)?.contains_key("attachments") {
        return Err(ApiError::param("attachments", "\"attachments\" cannot be set; send files as parts of a multipart request."));
    }
    super::events::create_event(ctx, &params, files).await
}

/// Remove files from the file storage once no event lists them: a failure is logged, never
/// reported (the event's change is already committed; the file is only an orphan).
pub async fn remove_files(app: &App, user_id: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    if let Err(e) = app.store.delete_files(user_id, ids).await {
        tracing::warn!(user_id, files = ids.len(), error = %e, "could not remove attachment files");
    }
}

/// Pryv's refusal of a token in `?auth=` on the download route.
pub fn auth_in_query_refused() -> ApiError {
    ApiError::new(
        ErrorId::MissingAccessToken,
        "Query parameter \"auth\" is forbidden here, please use the \"readToken\" instead or provide the auth token in \"Authorization\" header.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_tokens_round_trip() {
        let t = read_token("secret", "acc1", "tok", "file1");
        let (acc, mac) = split_read_token(&t).unwrap();
        assert_eq!(acc, "acc1");
        assert!(read_token_matches("secret", "tok", "file1", mac));
        assert!(!read_token_matches("secret", "tok", "file2", mac));
        assert!(!read_token_matches("other", "tok", "file1", mac));
        assert!(!mac.contains('=') && !mac.contains('+') && !mac.contains('/'));
    }
}
