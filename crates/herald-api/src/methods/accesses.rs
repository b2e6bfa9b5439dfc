//! `accesses.*`: tokens and their permissions (spec 5.4). Personal accesses come from login;
//! app accesses are created by personal ones; app accesses create shared ones within their own
//! permissions; shared accesses create none.

use std::sync::Arc;

use herald_model::access::{Access, AccessType, Permission};
use herald_model::change::{ChangeKind, ChangeType, ChangedItem};
use herald_model::id::{is_valid_item_id, new_id, new_token};
use herald_model::params::{as_object, opt_bool, opt_f64, opt_str, reject_unknown};
use herald_model::stream::Stream;
use herald_model::webhook::{OnAccessDeletion, WebhookState};
use herald_model::{ApiError, ErrorId};
use herald_storage::StoreError;
use serde_json::{json, Value};

use super::{id_param, MethodResult};
use crate::context::{store_error, Context};

pub(crate) fn item(a: &Access) -> ChangedItem {
    ChangedItem::Access {
        id: a.id.clone(),
        access_type: Some(a.access_type.as_str().into()),
        stream_ids: a
            .permissions
            .iter()
            .filter_map(|p| match p {
                Permission::Stream { stream_id, .. } => Some(stream_id.clone()),
                _ => None,
            })
            .collect(),
    }
}

pub async fn get(ctx: Arc<Context>, params: Value) -> MethodResult {
    let m = as_object(&params)?;
    reject_unknown(&m, &["includeExpired", "includeDeletions", "auth"])?;
    if !ctx.access.can_manage_accesses() {
        return Err(ApiError::forbidden("A shared access cannot list accesses."));
    }
    let include_expired = opt_bool(&m, "includeExpired")?.unwrap_or(false);
    let include_deletions = opt_bool(&m, "includeDeletions")?.unwrap_or(false);
    let all = ctx.app.store.accesses(&ctx.user.id, include_deletions).await.map_err(store_error)?;
    let mine = |a: &Access| ctx.access.is_personal() || a.created_by == ctx.access.id;
    let endpoint = |a: &Access| ctx.api_endpoint(&a.token);
    let accesses: Vec<Value> = all
        .iter()
        .filter(|a| a.deleted.is_none() && mine(a) && (include_expired || !a.is_expired(ctx.now)))
        .map(|a| a.to_json(&endpoint(a)))
        .collect();
    let mut out = json!({ "accesses": accesses });
    if include_deletions {
        out["accessDeletions"] = all.iter().filter(|a| a.deleted.is_some() && mine(a)).map(|a| a.to_json(&endpoint(a))).collect();
    }
    Ok(out)
}

pub async fn create(ctx: Arc<Context>, params: Value) -> MethodResult {
    let m = as_object(&params)?;
    reject_unknown(&m, &["name", "type", "permissions", "deviceName", "token", "expireAfter", "clientData"])?;
    if !ctx.access.can_manage_accesses() {
        return Err(ApiError::forbidden("A shared access cannot create accesses."));
    }
    let name = opt_str(&m, "name")?.filter(|n| !n.is_empty()).ok_or_else(|| ApiError::param("name", "\"name\" is required."))?;
    let access_type = match opt_str(&m, "type")?.as_deref() {
        None => AccessType::Shared,
        Some(t) => AccessType::parse(t).ok_or_else(|| ApiError::param("type", "\"type\" must be app or shared."))?,
    };
    if access_type == AccessType::Personal {
        return Err(ApiError::forbidden("Personal accesses are created by logging in (auth.login)."));
    }
    let permissions: Vec<Permission> = match m.get("permissions") {
        Some(Value::Array(a)) => a.iter().map(Permission::from_json).collect::<Result<_, _>>()?,
        _ => return Err(ApiError::param("permissions", "\"permissions\" must be an array.")),
    };
    let token = match opt_str(&m, "token")? {
        Some(t) if !is_valid_item_id(&t) => {
            return Err(ApiError::param("token", "\"token\" may only have letters, digits, '-', '_' and '.'."))
        }
        Some(t) => t,
        None => new_token(),
    };
    let expires = match opt_f64(&m, "expireAfter")? {
        Some(s) if s < 0.0 => return Err(ApiError::param("expireAfter", "\"expireAfter\" must be a non-negative number of seconds.")),
        Some(s) => Some(ctx.now + s),
        None => None,
    };
    let client_data = match m.get("clientData") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(ApiError::param("clientData", "\"clientData\" must be an object.")),
    };
    let access = Access {
        id: new_id(),
        token,
        access_type,
        name,
        device_name: opt_str(&m, "deviceName")?,
        permissions,
        expires,
        client_data,
        created: ctx.now,
        created_by: ctx.author().into(),
        modified: ctx.now,
        modified_by: ctx.author().into(),
        deleted: None,
    };
    // Streams named by permissions must exist; `defaultName` creates a missing root stream.
    let mut tree_streams = ctx.streams().await?;
    for p in &access.permissions {
        if let Permission::Stream { stream_id, default_name, .. } = p {
            if stream_id == "*" || tree_streams.iter().any(|s| &s.id == stream_id) {
                continue;
            }
            match default_name {
                Some(n) if ctx.access.is_personal() || ctx.access.star_level().is_some_and(|l| l.can_manage()) => {
                    let s = Stream {
                        id: stream_id.clone(),
                        name: n.clone(),
                        parent_id: None,
                        client_data: None,
                        trashed: false,
                        created: ctx.now,
                        created_by: ctx.author().into(),
                        modified: ctx.now,
                        modified_by: ctx.author().into(),
                    };
                    let log = vec![ctx.change(
                        ChangeKind::Streams,
                        ChangeType::Create,
                        vec![ChangedItem::Stream { id: s.id.clone(), parent_id: None }],
                    )];
                    let logged = ctx.app.store.insert_stream(&ctx.user.id, &s, log).await.map_err(|e| match e {
                        StoreError::Conflict { .. } => ApiError::exists("stream", "name", &json!(n)),
                        other => store_error(other),
                    })?;
                    ctx.announce(logged);
                    tree_streams.push(s);
                }
                _ => return Err(ApiError::unknown_referenced("stream", json!({ "streamId": stream_id }))),
            }
        }
    }
    // As Pryv: `defaultName` only names a stream to create; the access does not keep it.
    let mut access = access;
    for p in &mut access.permissions {
        if let Permission::Stream { default_name, .. } = p {
            *default_name = None;
        }
    }
    let tree = herald_model::stream::StreamTree::new(&tree_streams);
    ctx.access.check_can_create_access(&access, &tree)?;
    let log = vec![ctx.change(ChangeKind::Accesses, ChangeType::Create, vec![item(&access)])];
    let logged = ctx.app.store.insert_access(&ctx.user.id, &access, log).await.map_err(|e| match e {
        StoreError::Conflict { field } if field == "token" => ApiError::exists("access", "token", &json!(access.token)),
        StoreError::Conflict { .. } => ApiError::new(
            ErrorId::ItemAlreadyExists,
            format!("An access with type \"{}\" and name \"{}\" already exists", access.access_type.as_str(), access.name),
        )
        .with_data(json!({ "type": access.access_type.as_str(), "name": access.name, "deviceName": access.device_name })),
        other => store_error(other),
    })?;
    ctx.announce(logged);
    Ok(json!({ "access": access.to_json(&ctx.api_endpoint(&access.token)) }))
}

pub async fn update(_ctx: Arc<Context>, _params: Value) -> MethodResult {
    Err(ApiError::new(ErrorId::RemovedMethod, "accesses.update has been removed: delete the access and create a new one."))
}

/// Deleting an app or shared access also deletes the live accesses it created
/// (`relatedDeletions`). Their webhooks follow `HERALD_WEBHOOKS_ON_ACCESS_DELETION`.
pub async fn delete(ctx: Arc<Context>, params: Value) -> MethodResult {
    let id = id_param(&params)?;
    let all = ctx.app.store.accesses(&ctx.user.id, false).await.map_err(store_error)?;
    let target = all.iter().find(|a| a.id == id).ok_or_else(|| ApiError::unknown("access", &id))?;
    ctx.access.check_can_delete_access(target)?;
    let related: Vec<&Access> = if target.is_personal() {
        vec![]
    } else {
        all.iter().filter(|a| a.created_by == target.id && a.id != target.id && !a.is_expired(ctx.now)).collect()
    };
    let mut ids = vec![target.id.clone()];
    ids.extend(related.iter().map(|a| a.id.clone()));
    let mut items = vec![item(target)];
    items.extend(related.iter().map(|a| item(a)));
    let log = vec![ctx.change(ChangeKind::Accesses, ChangeType::Delete, items)];
    let logged = ctx.app.store.delete_accesses(&ctx.user.id, &ids, ctx.now, log).await.map_err(store_error)?;
    // Caches drop the deleted tokens at once, before the webhooks are dealt with.
    ctx.announce(logged);
    apply_webhook_policy(&ctx, &ids).await?;
    let mut out = json!({ "accessDeletion": { "id": id, "deleted": ctx.now } });
    if !related.is_empty() {
        out["relatedDeletions"] = related.iter().map(|a| json!({ "id": a.id, "deleted": ctx.now })).collect();
    }
    Ok(out)
}

/// Contract 3.8: by default a deleted access's webhooks stay (a personal access manages them).
async fn apply_webhook_policy(ctx: &Context, access_ids: &[String]) -> Result<(), ApiError> {
    let policy = ctx.app.settings.webhooks.on_access_deletion;
    if policy == OnAccessDeletion::Keep {
        return Ok(());
    }
    for access_id in access_ids {
        for mut w in ctx.app.store.webhooks(&ctx.user.id, Some(access_id)).await.map_err(store_error)? {
            let logged = if policy == OnAccessDeletion::Delete {
                let log = vec![super::webhooks::dispatcher_change(ctx, &w, ChangeType::Delete)];
                ctx.app.store.delete_webhook(&ctx.user.id, &w.id, ctx.now, log).await.map_err(store_error)?
            } else {
                w.state = WebhookState::Inactive;
                w.modified = ctx.now;
                let log = vec![super::webhooks::dispatcher_change(ctx, &w, ChangeType::Update)];
                ctx.app.store.update_webhook(&ctx.user.id, &w, log).await.map_err(store_error)?
            };
            ctx.announce(logged);
        }
    }
    Ok(())
}

/// `accesses.checkApp` (`pryv-api-extras.md` §1.8): before a consent page asks the person, is
/// there already an app access that grants exactly this? Then `matchingAccess` (the page
/// reuses it). Otherwise the requested permissions as they would be created
/// (`checkedPermissions`: existing streams named, new ones given a free `defaultName`), and the
/// access of that name that differs (`mismatchingAccess`), if any. Personal accesses only.
pub async fn check_app(ctx: Arc<Context>, params: Value) -> MethodResult {
    let m = as_object(&params)?;
    // `token` and `expireAfter` are what Pryv's consent app passes along when the polled state
    // holds them; they do not change the answer.
    reject_unknown(&m, &["requestingAppId", "requestedPermissions", "deviceName", "clientData", "token", "expireAfter"])?;
    if !ctx.access.is_personal() {
        return Err(ApiError::forbidden("You cannot access accesses.checkApp resource using the given access"));
    }
    let app_id = opt_str(&m, "requestingAppId")?.ok_or_else(|| ApiError::param("requestingAppId", "\"requestingAppId\" is required."))?;
    let requested = match m.get("requestedPermissions") {
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => a.clone(),
        _ => return Err(ApiError::param("requestedPermissions", "\"requestedPermissions\" must be an array of permissions.")),
    };
    let device_name = match m.get("deviceName") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::param("deviceName", "\"deviceName\" must be a string.")),
    };
    let client_data = match m.get("clientData") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(ApiError::param("clientData", "\"clientData\" must be an object.")),
    };
    let wanted: Vec<Permission> = requested.iter().map(Permission::from_json).collect::<Result<_, _>>()?;
    let existing = ctx.app.store.accesses(&ctx.user.id, false).await.map_err(store_error)?;
    let candidate = existing.into_iter().find(|a| a.access_type == AccessType::App && a.name == app_id && a.device_name == device_name);
    let without_endpoint = |a: &Access| {
        let mut v = a.to_json("");
        if let Some(o) = v.as_object_mut() {
            o.remove("apiEndpoint");
        }
        v
    };
    if let Some(a) = &candidate {
        if !a.is_expired(ctx.now) && a.client_data == client_data && same_grant(&a.permissions, &wanted) {
            return Ok(json!({ "matchingAccess": without_endpoint(a) }));
        }
    }
    let streams = ctx.streams().await?;
    let mut renamed = false;
    let mut checked = Vec::with_capacity(requested.len());
    for p in &requested {
        let mut p = p.clone();
        let Some(obj) = p.as_object_mut() else { continue };
        let Some(stream_id) = obj.get("streamId").and_then(Value::as_str).map(str::to_owned) else {
            checked.push(p); // a feature permission, as given
            continue;
        };
        if stream_id == "*" {
            obj.remove("defaultName");
        } else if let Some(s) = streams.iter().find(|s| s.id == stream_id) {
            obj.remove("defaultName");
            obj.insert("name".into(), json!(s.name));
        } else {
            let Some(default_name) = obj.get("defaultName").and_then(Value::as_str).map(str::to_owned) else {
                return Err(ApiError::new(ErrorId::InvalidParametersFormat, "The parameters' format is invalid.").with_data(json!(
                    format!("The permission for stream \"{stream_id}\" (and maybe others) is missing the required \"defaultName\".")
                )));
            };
            let taken = |n: &str| streams.iter().any(|s| s.parent_id.is_none() && s.name == n);
            let mut name = default_name.clone();
            let mut i = 1;
            while taken(&name) {
                name = format!("{default_name} ({i})");
                i += 1;
            }
            renamed |= name != default_name;
            obj.insert("defaultName".into(), json!(name));
        }
        checked.push(p);
    }
    let mut out = json!({});
    if let Some(a) = &candidate {
        out["mismatchingAccess"] = without_endpoint(a);
    }
    out["checkedPermissions"] = Value::Array(checked);
    if renamed {
        out["error"] = json!({
            "id": "item-already-exists",
            "message": "One or more requested streams have the same names as existing streams with different ids. The \"defaultName\" of the streams concerned have been updated with valid alternative proposals."
        });
    }
    Ok(out)
}

/// Same stream levels and same feature settings, whatever the order and the names.
fn same_grant(stored: &[Permission], wanted: &[Permission]) -> bool {
    let key = |p: &Permission| match p {
        Permission::Stream { stream_id, level, .. } => format!("s:{stream_id}:{}", level.as_str()),
        Permission::Feature { feature, setting } => format!("f:{feature}:{setting}"),
    };
    let mut a: Vec<String> = stored.iter().map(key).collect();
    let mut b: Vec<String> = wanted.iter().map(key).collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}
