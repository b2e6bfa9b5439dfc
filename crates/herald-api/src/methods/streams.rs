//! `streams.*`: the stream tree. Creating, changing or deleting a stream needs `manage` on its
//! parent (on `*` for a root stream); listing shows what the access can read.

use std::collections::HashSet;
use std::sync::Arc;

use herald_model::change::{ChangeKind, ChangeType, ChangedItem};
use herald_model::id::{is_valid_item_id, new_id, slugify};
use herald_model::params::{as_object, opt_bool, opt_f64, opt_str, reject_unknown};
use herald_model::stream::{build_tree, Stream, StreamTree};
use herald_model::{ApiError, ErrorId};
use herald_storage::{StoreError, StreamDeletion};
use serde_json::{json, Value};

use super::{id_param, update_param, MethodResult};
use crate::context::{store_error, Context};

fn item(s: &Stream) -> ChangedItem {
    ChangedItem::Stream { id: s.id.clone(), parent_id: s.parent_id.clone() }
}

fn conflict(e: StoreError, s: &Stream) -> ApiError {
    match e {
        StoreError::Conflict { field } if field == "name" => ApiError::exists("stream", "name", &json!(s.name)),
        StoreError::Conflict { .. } => ApiError::exists("stream", "id", &json!(s.id)),
        other => store_error(other),
    }
}

/// May the access create, move or delete streams under `parent` (None = root)?
fn check_manage_parent(ctx: &Context, tree: &StreamTree, parent: Option<&str>) -> Result<(), ApiError> {
    let ok = match parent {
        Some(p) => ctx.access.can_manage_stream(tree, p),
        None => ctx.access.star_level().is_some_and(|l| l.can_manage()),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden("The access needs \"manage\" permission on the parent stream."))
    }
}

fn check_parent_exists(tree: &StreamTree, parent: Option<&str>) -> Result<(), ApiError> {
    match parent {
        Some(p) if !tree.contains(p) => Err(ApiError::unknown_referenced("parent stream", json!({ "parentId": p }))),
        _ => Ok(()),
    }
}

pub async fn get(ctx: Arc<Context>, params: Value) -> MethodResult {
    let m = as_object(&params)?;
    reject_unknown(&m, &["parentId", "state", "includeDeletionsSince", "auth"])?;
    let parent = opt_str(&m, "parentId")?;
    let all = match opt_str(&m, "state")?.as_deref() {
        None | Some("default") => false,
        Some("all") => true,
        Some(_) => return Err(ApiError::param("state", "\"state\" must be default or all.")),
    };
    let deletions_since = opt_f64(&m, "includeDeletionsSince")?;
    // The cached list and tree: listing copies only what it returns.
    let user_streams = ctx.tree().await?;
    let tree = &user_streams.tree;
    if let Some(p) = &parent {
        check_parent_exists(tree, Some(p))?;
        if !ctx.access.can_read_stream(tree, p) {
            return Err(ApiError::forbidden("The access cannot read this stream."));
        }
    }
    // Trashed streams hide their descendants too, unless state=all.
    let hidden = |s: &Stream| !all && tree.ancestry(&s.id).iter().any(|a| tree.is_trashed(a));
    let under: Option<HashSet<String>> = parent.as_ref().map(|p| tree.expand(p).into_iter().filter(|i| i != p).collect());
    let visible: Vec<Stream> = user_streams
        .list
        .iter()
        .filter(|s| ctx.access.can_read_stream(tree, &s.id))
        .filter(|s| !hidden(s))
        .filter(|s| under.as_ref().is_none_or(|u| u.contains(&s.id)))
        .cloned()
        .collect();
    let mut out = json!({ "streams": build_tree(&visible) });
    if let Some(since) = deletions_since {
        let d = ctx.app.store.stream_deletions(&ctx.user.id, since).await.map_err(store_error)?;
        out["streamDeletions"] = d.into_iter().map(|(id, deleted)| json!({ "id": id, "deleted": deleted })).collect();
    }
    Ok(out)
}

pub async fn create(ctx: Arc<Context>, params: Value) -> MethodResult {
    let m = as_object(&params)?;
    reject_unknown(&m, &["id", "name", "parentId", "clientData", "trashed", "singleActivity"])?;
    let name = opt_str(&m, "name")?.filter(|n| !n.trim().is_empty()).ok_or_else(|| ApiError::param("name", "\"name\" is required."))?;
    let parent_id = opt_str(&m, "parentId")?;
    // `singleActivity` (deprecated by Pryv.io, not kept): a boolean when given.
    opt_bool(&m, "singleActivity")?;
    let client_data = m.get("clientData").filter(|v| !v.is_null()).cloned();
    if client_data.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(ApiError::param("clientData", "\"clientData\" must be an object."));
    }
    let tree = ctx.tree().await?;
    check_parent_exists(&tree, parent_id.as_deref())?;
    check_manage_parent(&ctx, &tree, parent_id.as_deref())?;
    let id = match opt_str(&m, "id")? {
        Some(id) if !is_valid_item_id(&id) || id == "*" => {
            return Err(ApiError::new(ErrorId::InvalidItemId, format!("The stream id \"{id}\" is not valid.")).with_data(json!({"id": id})))
        }
        Some(id) => id,
        None => {
            let slug = slugify(&name);
            if slug.is_empty() {
                new_id()
            } else if !tree.contains(&slug) {
                slug
            } else {
                (2..).map(|n| format!("{slug}-{n}")).find(|c| !tree.contains(c)).unwrap_or_else(new_id)
            }
        }
    };
    let s = Stream {
        id,
        name,
        parent_id,
        client_data,
        trashed: opt_bool(&m, "trashed")?.unwrap_or(false),
        created: ctx.now,
        created_by: ctx.author().into(),
        modified: ctx.now,
        modified_by: ctx.author().into(),
    };
    let log = vec![ctx.change(ChangeKind::Streams, ChangeType::Create, vec![item(&s)])];
    ctx.announce(ctx.app.store.insert_stream(&ctx.user.id, &s, log).await.map_err(|e| conflict(e, &s))?);
    Ok(json!({ "stream": Value::Object({ let mut o = s.to_json(); o.insert("children".into(), json!([])); o }) }))
}

pub async fn update(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let update = update_param(&params)?;
    let u = as_object(&update)?;
    let protected: Vec<&str> =
        u.keys().map(String::as_str).filter(|k| ["id", "children", "created", "createdBy", "modified", "modifiedBy"].contains(k)).collect();
    if !protected.is_empty() {
        return Err(ApiError::forbidden(format!(
            "Forbidden update was attempted on the following protected field(s): [{}].",
            protected.join(",")
        )));
    }
    reject_unknown(&u, &["name", "parentId", "clientData", "trashed", "singleActivity"])?;
    opt_bool(&u, "singleActivity")?;
    let user_streams = ctx.tree().await?;
    let tree = &user_streams.tree;
    let mut s = user_streams.list.iter().find(|s| s.id == id).cloned().ok_or_else(|| ApiError::unknown("stream", &id))?;
    if !ctx.access.can_manage_stream(tree, &s.id) {
        return Err(ApiError::forbidden("The access needs \"manage\" permission on this stream."));
    }
    if let Some(n) = opt_str(&u, "name")? {
        if n.trim().is_empty() {
            return Err(ApiError::param("name", "\"name\" cannot be empty."));
        }
        s.name = n;
    }
    if u.contains_key("parentId") {
        let p = opt_str(&u, "parentId")?;
        if p != s.parent_id {
            check_parent_exists(tree, p.as_deref())?;
            if let Some(pp) = &p {
                if tree.is_descendant_or_self(pp, &s.id) {
                    return Err(ApiError::new(ErrorId::InvalidOperation, "A stream cannot be moved under itself or its descendants."));
                }
            }
            check_manage_parent(&ctx, tree, p.as_deref())?;
            s.parent_id = p;
        }
    }
    if let Some(cd) = u.get("clientData") {
        match cd {
            Value::Null => s.client_data = None,
            Value::Object(patch) => {
                let mut base = s.client_data.take().and_then(|v| v.as_object().cloned()).unwrap_or_default();
                for (k, v) in patch {
                    if v.is_null() {
                        base.remove(k);
                    } else {
                        base.insert(k.clone(), v.clone());
                    }
                }
                s.client_data = (!base.is_empty()).then_some(Value::Object(base));
            }
            _ => return Err(ApiError::param("clientData", "\"clientData\" must be an object.")),
        }
    }
    if let Some(t) = opt_bool(&u, "trashed")? {
        s.trashed = t;
    }
    s.modified = ctx.now;
    s.modified_by = ctx.author().into();
    let log = vec![ctx.change(ChangeKind::Streams, ChangeType::Update, vec![item(&s)])];
    ctx.announce(ctx.app.store.update_stream(&ctx.user.id, &s, log).await.map_err(|e| conflict(e, &s))?);
    Ok(json!({ "stream": s.to_json() }))
}

/// The first call trashes the stream; the second deletes it with its descendants. Their events
/// then move to the parent (`mergeEventsWithParent: true`) or go with them (`false`); the
/// parameter is required when there are events.
pub async fn delete(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let m = as_object(&params)?;
    let merge = opt_bool(&m, "mergeEventsWithParent")?;
    let user_streams = ctx.tree().await?;
    let (streams, tree) = (&user_streams.list, &user_streams.tree);
    let mut s = streams.iter().find(|s| s.id == id).cloned().ok_or_else(|| ApiError::unknown("stream", &id))?;
    if !ctx.access.can_manage_stream(tree, &s.id) {
        return Err(ApiError::forbidden("The access needs \"manage\" permission on this stream."));
    }
    if !s.trashed {
        s.trashed = true;
        s.modified = ctx.now;
        s.modified_by = ctx.author().into();
        let log = vec![ctx.change(ChangeKind::Streams, ChangeType::Trash, vec![item(&s)])];
        ctx.announce(ctx.app.store.update_stream(&ctx.user.id, &s, log).await.map_err(store_error)?);
        return Ok(json!({ "stream": s.to_json() }));
    }
    let doomed = tree.expand(&s.id);
    let events = ctx.app.store.events_in_streams(&ctx.user.id, &doomed).await.map_err(store_error)?;
    let mut deletion = StreamDeletion { stream_ids: doomed.clone(), ..Default::default() };
    if !events.is_empty() {
        let merge = merge.ok_or_else(|| {
            ApiError::param("mergeEventsWithParent", "\"mergeEventsWithParent\" is required: the stream or its descendants have events.")
        })?;
        if merge && s.parent_id.is_none() {
            return Err(ApiError::new(ErrorId::InvalidOperation, "A root stream has no parent to merge its events into."));
        }
        for mut e in events.iter().cloned() {
            let mut ids: Vec<String> = e.stream_ids.iter().filter(|x| !doomed.contains(x)).cloned().collect();
            if merge {
                if let Some(p) = &s.parent_id {
                    if !ids.contains(p) {
                        ids.push(p.clone());
                    }
                }
            }
            if ids.is_empty() {
                deletion.events_to_delete.push(e.id.clone());
            } else {
                e.stream_ids = ids;
                e.modified = ctx.now;
                e.modified_by = ctx.author().into();
                deletion.events_to_update.push(e);
            }
        }
    }
    // The events' change and the streams' change commit with the deletion, in this order.
    let mut log = vec![];
    if !events.is_empty() {
        let items = events
            .iter()
            .map(|e| ChangedItem::Event { id: e.id.clone(), stream_ids: e.stream_ids.clone(), event_type: e.event_type.clone() })
            .collect();
        log.push(ctx.change(ChangeKind::Events, ChangeType::Update, items));
    }
    let items = streams.iter().filter(|x| doomed.contains(&x.id)).map(item).collect();
    log.push(ctx.change(ChangeKind::Streams, ChangeType::Delete, items));
    ctx.announce(ctx.app.store.delete_streams(&ctx.user.id, &deletion, ctx.now, log).await.map_err(store_error)?);
    // Events deleted with their streams lose their files and history as a deleted event does.
    for e in events.iter().filter(|e| deletion.events_to_delete.contains(&e.id)) {
        super::events::forget_deleted(&ctx, e).await?;
    }
    Ok(json!({ "streamDeletion": { "id": id, "deleted": ctx.now } }))
}
