//! `events.*`: read and write events, with the access's stream permissions.

use std::sync::Arc;

use herald_model::change::{ChangeKind, ChangeType, ChangedItem};
use herald_model::event::{self, Event};
use herald_model::id::{new_event_id, new_id};

use herald_model::query::EventsQuery;
use herald_model::stream::StreamTree;
use herald_model::ApiError;
use herald_storage::{EventBatch, StoreError, StoreResult};
use serde_json::{json, Value};

use super::{id_param, update_param, MethodResult};
use crate::context::{store_error, Context};

fn item(e: &Event) -> ChangedItem {
    ChangedItem::Event { id: e.id.clone(), stream_ids: e.stream_ids.clone(), event_type: e.event_type.clone() }
}

/// Every stream of the event must exist.
fn check_streams_exist(tree: &StreamTree, stream_ids: &[String]) -> Result<(), ApiError> {
    let unknown: Vec<&String> = stream_ids.iter().filter(|s| !tree.contains(s)).collect();
    if !unknown.is_empty() {
        return Err(ApiError::unknown_referenced("stream(s)", json!({ "streamIds": unknown })));
    }
    Ok(())
}

pub(crate) async fn load(ctx: &Context, id: &str) -> Result<Event, ApiError> {
    ctx.app.store.event(&ctx.user.id, id).await.map_err(store_error)?.ok_or_else(|| ApiError::unknown("event", id))
}

pub async fn get(ctx: Arc<Context>, params: Value) -> MethodResult {
    let mut q = EventsQuery::parse(&params)?;
    q.apply_defaults(ctx.now);
    let tree = ctx.tree().await?;
    let filter = q.resolve(&ctx.access, &tree)?;
    let events = ctx.app.store.find_events(&ctx.user.id, &filter).await.map_err(store_error)?;
    let mut out = json!({ "events": events.iter().map(|e| ctx.event_json(e)).collect::<Vec<_>>() });
    if let (true, Some(since)) = (q.include_deletions, q.modified_since) {
        let deletions = ctx.app.store.event_deletions(&ctx.user.id, &filter, since).await.map_err(store_error)?;
        out["eventDeletions"] = deletions.into_iter().map(|(id, deleted)| json!({ "id": id, "deleted": deleted })).collect();
    }
    Ok(out)
}

/// `events.get` for HTTP: the store's batches as they are read, to be written out as they come
/// (see `http::stream_events`). Batch calls and socket.io use [`get`].
/// The flag says whether the answer carries `eventDeletions` (even empty).
pub async fn get_streamed(ctx: &Context, params: Value) -> Result<(tokio::sync::mpsc::Receiver<StoreResult<EventBatch>>, bool), ApiError> {
    let mut q = EventsQuery::parse(&params)?;
    q.apply_defaults(ctx.now);
    let tree = ctx.tree().await?;
    let filter = q.resolve(&ctx.access, &tree)?;
    let since = if q.include_deletions { q.modified_since } else { None };
    let rx = ctx.app.store.stream_events(&ctx.user.id, &filter, since, STREAM_BATCH).await.map_err(store_error)?;
    Ok((rx, since.is_some()))
}

/// Events per part of a streamed answer.
const STREAM_BATCH: usize = 1000;

/// `events.getOne`; with `includeHistory`, the event's kept versions (oldest first, with the
/// event's id and no read tokens), `[]` when none was kept.
pub async fn get_one(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let include_history = match params.get("includeHistory") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" => false,
        Some(_) => return Err(ApiError::param("includeHistory", "\"includeHistory\" must be a boolean.")),
    };
    let e = load(&ctx, &id).await?;
    if !ctx.access.is_personal() && !ctx.access.can_read_event(&ctx.tree().await?.tree, &e.stream_ids) {
        return Err(ApiError::forbidden("The access has no permission to read this event."));
    }
    let mut out = json!({ "event": ctx.event_json(&e) });
    if include_history {
        out["history"] = Value::Array(ctx.app.store.event_history(&ctx.user.id, &id).await.map_err(store_error)?);
    }
    Ok(out)
}

pub async fn create(ctx: Arc<Context>, params: Value) -> MethodResult {
    create_event(&ctx, &params, vec![]).await
}

/// `events.create` of a JSON body, or of a multipart one whose files are already stored.
pub(crate) async fn create_event(ctx: &Context, params: &Value, attachments: Vec<event::Attachment>) -> MethodResult {
    let Some(seen) = ctx.fresh_since else {
        return create_checked(ctx, params, attachments, None).await.map_err(ApiError::from);
    };
    // Authorised from caches not yet checked against the change log: a refusal may come from a
    // stale cache (a stream created through another node), and the write is refused (`Stale`)
    // if the log shows the caches changed; either way, start over as a request that catches up
    // first. Nothing was written then. A store failure is final (the commit's outcome may be
    // unknown: no second write).
    match create_checked(ctx, params, attachments.clone(), Some(seen)).await {
        Ok(v) => Ok(v),
        Err(Retry::Final(e)) => Err(e),
        Err(Retry::Stale | Retry::Refused(_)) => {
            let app = ctx.app.clone();
            let fresh = Context::authenticate(app.clone(), app.begin_request(), &ctx.user.username, Some(&ctx.access.token)).await?;
            Box::pin(create_event(&fresh, params, attachments)).await
        }
    }
}

/// Why [`create_checked`] wrote nothing.
enum Retry {
    /// The change log shows the caches the write relied on changed.
    Stale,
    /// A check made from the caches refused it.
    Refused(ApiError),
    /// The store failed, or refused it on its own data (a duplicate id).
    Final(ApiError),
}

impl From<Retry> for ApiError {
    fn from(r: Retry) -> ApiError {
        match r {
            Retry::Stale => ApiError::unexpected(StoreError::Stale),
            Retry::Refused(e) | Retry::Final(e) => e,
        }
    }
}

async fn create_checked(ctx: &Context, params: &Value, attachments: Vec<event::Attachment>, seen: Option<u64>) -> Result<Value, Retry> {
    let mut e = event::parse_create(params, new_event_id(), ctx.now, ctx.author()).map_err(Retry::Final)?;
    e.attachments = attachments;
    let tree = ctx.tree().await.map_err(Retry::Final)?;
    check_streams_exist(&tree, &e.stream_ids).map_err(Retry::Refused)?;
    if !ctx.access.can_create_event(&tree, &e.stream_ids) {
        return Err(Retry::Refused(ApiError::forbidden("The access has no permission to create events in these streams.")));
    }
    let log = vec![ctx.change(ChangeKind::Events, ChangeType::Create, vec![item(&e)])];
    let store = &ctx.app.store;
    let written = match seen {
        Some(seen) => store.insert_event_fresh(&ctx.user.id, &e, log, seen).await,
        None => store.insert_event(&ctx.user.id, &e, log).await,
    };
    let logged = written.map_err(|err| match err {
        StoreError::Stale => Retry::Stale,
        StoreError::Conflict { .. } => Retry::Final(ApiError::exists("event", "id", &json!(e.id))),
        other => Retry::Final(store_error(other)),
    })?;
    if seen.is_some() {
        ctx.app.keep_log_seen_near(logged.last().map(|c| c.seq));
    }
    ctx.announce(logged);
    Ok(json!({ "event": ctx.event_json(&e) }))
}

/// A batch call's run of `events.create`, each checked as [`create`] checks it, all written in
/// one transaction (one commit) and each answered on its own, in order: the event written, or
/// why not. Its answer's form is the caller's (`{"event": …}`, see `utility::BatchAnswer`).
pub async fn create_many(ctx: &Context, calls: Vec<Value>) -> Vec<Result<Event, ApiError>> {
    let tree = match ctx.tree().await {
        Ok(t) => t,
        Err(e) => return calls.iter().map(|_| Err(e.clone())).collect(),
    };
    // `None`: to be written.
    let mut refused: Vec<Option<ApiError>> = Vec::with_capacity(calls.len());
    // Sized once: grown call by call, a batch of 1,000 reallocated into fresh (huge) pages
    // that the kernel had to zero (`clear_page_erms`, 9 % of a batch's CPU in the profile).
    let mut writes = Vec::with_capacity(calls.len());
    for params in &calls {
        let checked = event::parse_create(params, new_event_id(), ctx.now, ctx.author()).and_then(|e| {
            check_streams_exist(&tree, &e.stream_ids)?;
            if !ctx.access.can_create_event(&tree, &e.stream_ids) {
                return Err(ApiError::forbidden("The access has no permission to create events in these streams."));
            }
            Ok(e)
        });
        match checked {
            Ok(e) => {
                let log = vec![ctx.change(ChangeKind::Events, ChangeType::Create, vec![item(&e)])];
                writes.push((e, log));
                refused.push(None);
            }
            Err(err) => refused.push(Some(err)),
        }
    }
    let events: Vec<Event> = writes.iter().map(|(e, _)| e.clone()).collect();
    let written = match ctx.app.store.insert_events_each(&ctx.user.id, writes).await {
        Ok(w) => w,
        Err(err) => {
            let err = store_error(err);
            return refused.into_iter().map(|r| Err(r.unwrap_or_else(|| err.clone()))).collect();
        }
    };
    let mut outcomes = events.into_iter().zip(written).map(|(e, w)| match w {
        Ok(logged) => {
            ctx.announce(logged);
            Ok(e)
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::exists("event", "id", &json!(e.id))),
        Err(other) => Err(store_error(other)),
    });
    refused
        .into_iter()
        .map(|r| match r {
            Some(err) => Err(err),
            None => outcomes.next().unwrap_or_else(|| Err(ApiError::unexpected("batch"))),
        })
        .collect()
}

pub async fn update(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let update = update_param(&params)?;
    let mut e = load(&ctx, &id).await?;
    let previous = e.clone();
    let tree = ctx.tree().await?;
    if !ctx.access.can_update_event(&tree, &e.stream_ids) {
        return Err(ApiError::forbidden("The access has no permission to update this event."));
    }
    event::apply_update(&mut e, &update, ctx.now, ctx.author())?;
    check_streams_exist(&tree, &e.stream_ids)?;
    if !ctx.access.can_update_event(&tree, &e.stream_ids) {
        return Err(ApiError::forbidden("The access has no permission to move this event to these streams."));
    }
    save_update(&ctx, &previous, &e, ChangeType::Update).await?;
    Ok(json!({ "event": ctx.event_json(&e) }))
}

/// Write an updated event (its change logged with it). With `versioning.forceKeepHistory`, the
/// state it replaces is kept first as a version: a failure between the two leaves a version of
/// a state that was real, never an update without its version.
pub(crate) async fn save_update(ctx: &Context, previous: &Event, e: &Event, change: ChangeType) -> Result<(), ApiError> {
    if ctx.app.settings.extras.force_keep_history {
        ctx.app
            .store
            .insert_event_version(&ctx.user.id, &previous.id, &new_id(), previous.modified, &previous.to_json())
            .await
            .map_err(store_error)?;
    }
    let log = vec![ctx.change(ChangeKind::Events, change, vec![item(e)])];
    ctx.announce(ctx.app.store.update_event(&ctx.user.id, e, log).await.map_err(store_error)?);
    Ok(())
}

/// The first call trashes the event, the second deletes it.
pub async fn delete(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let mut e = load(&ctx, &id).await?;
    if !ctx.access.can_update_event(&ctx.tree().await?.tree, &e.stream_ids) {
        return Err(ApiError::forbidden("The access has no permission to delete this event."));
    }
    if !e.trashed {
        let previous = e.clone();
        e.trashed = true;
        e.modified = ctx.now;
        e.modified_by = ctx.author().to_string();
        save_update(&ctx, &previous, &e, ChangeType::Trash).await?;
        return Ok(json!({ "event": ctx.event_json(&e) }));
    }
    // Under `keep-everything` the last state is kept as a version even without
    // `forceKeepHistory`: Herald's deleted event keeps only a tombstone, so the version is what
    // keeps its content (and lists its files).
    let extras = &ctx.app.settings.extras;
    if extras.force_keep_history || extras.deletion_mode == crate::settings::DeletionMode::KeepEverything {
        let version = e.to_json();
        ctx.app.store.insert_event_version(&ctx.user.id, &id, &new_id(), e.modified, &version).await.map_err(store_error)?;
    }
    let log = vec![ctx.change(ChangeKind::Events, ChangeType::Delete, vec![item(&e)])];
    ctx.announce(ctx.app.store.delete_event(&ctx.user.id, &id, ctx.now, log).await.map_err(store_error)?);
    forget_deleted(&ctx, &e).await?;
    Ok(json!({ "eventDeletion": { "id": id, "deleted": ctx.now } }))
}

/// What `versioning.deletionMode` removes once an event is deleted: its files (unless
/// `keep-everything`) and its history (all of it, or all but the authors).
pub(crate) async fn forget_deleted(ctx: &Context, e: &Event) -> Result<(), ApiError> {
    use crate::settings::DeletionMode;
    let mode = ctx.app.settings.extras.deletion_mode;
    if mode != DeletionMode::KeepEverything {
        ctx.app.store.delete_event_history(&ctx.user.id, &e.id, mode == DeletionMode::KeepAuthors).await.map_err(store_error)?;
        let files: Vec<String> = e.attachments.iter().map(|a| a.id.clone()).collect();
        super::attachments::remove_files(&ctx.app, &ctx.user.id, &files).await;
    }
    Ok(())
}
