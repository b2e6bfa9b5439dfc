//! The table of Pryv methods, by id. HTTP routes, batch calls and socket.io all call
//! [`dispatch`]; this file is the one place that lists what Herald's API can do.

pub mod accesses;
pub mod account;
pub mod attachments;
pub mod auth;
pub mod events;
pub mod profile;
pub mod streams;
pub mod utility;
pub mod webhooks;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald_model::{ApiError, ErrorId};
use serde_json::Value;

use crate::context::Context;

pub type MethodResult = Result<Value, ApiError>;
pub type MethodFuture = Pin<Box<dyn Future<Output = MethodResult> + Send>>;
pub type Method = fn(Arc<Context>, Value) -> MethodFuture;

pub struct MethodTable {
    methods: HashMap<&'static str, Method>,
}

macro_rules! register {
    ($map:ident, $($id:literal => $f:path),* $(,)?) => {
        $( $map.insert($id, (|c, p| Box::pin($f(c, p))) as Method); )*
    };
}

/// Every method callable with an access, by its Pryv id.
pub fn table() -> MethodTable {
    let mut m: HashMap<&'static str, Method> = HashMap::new();
    register!(m,
        "getAccessInfo" => utility::get_access_info,
        "callBatch" => utility::call_batch,
        "auth.logout" => auth::logout,
        "accesses.get" => accesses::get,
        "accesses.create" => accesses::create,
        "accesses.update" => accesses::update,
        "accesses.delete" => accesses::delete,
        "accesses.checkApp" => accesses::check_app,
        "streams.get" => streams::get,
        "streams.create" => streams::create,
        "streams.update" => streams::update,
        "streams.delete" => streams::delete,
        "events.get" => events::get,
        "events.getOne" => events::get_one,
        "events.create" => events::create,
        "events.update" => events::update,
        "events.delete" => events::delete,
        "webhooks.get" => webhooks::get,
        "webhooks.getOne" => webhooks::get_one,
        "webhooks.create" => webhooks::create,
        "webhooks.update" => webhooks::update,
        "webhooks.delete" => webhooks::delete,
        "webhooks.test" => webhooks::test,
        "events.deleteAttachment" => attachments::delete_attachment,
        "account.get" => account::get,
        "account.update" => account::update,
        "account.changePassword" => account::change_password,
        "profile.getPublic" => profile::get_public,
        "profile.getApp" => profile::get_app,
        "profile.updateApp" => profile::update_app,
        "profile.get" => profile::get,
        "profile.update" => profile::update,
    );
    // Also by id, but without an access (the HTTP layer calls them directly, as it does
    // `auth.login`): `account.requestPasswordReset`, `account.resetPassword`. Multipart
    // `events.create` / `events.update` and `events.getAttachment` stream their bytes, so they
    // are HTTP-only (`http_files.rs`); batch calls and socket.io cannot carry files, in Pryv too.
    MethodTable { methods: m }
}

impl MethodTable {
    pub fn get(&self, id: &str) -> Option<Method> {
        self.methods.get(id).copied()
    }

    pub fn ids(&self) -> impl Iterator<Item = &&'static str> {
        self.methods.keys()
    }
}

/// Call a method by id. Unknown ids give Pryv's `invalid-method`.
pub async fn dispatch(ctx: Arc<Context>, method: &str, params: Value) -> MethodResult {
    match ctx.app.methods.get(method) {
        Some(f) => f(ctx, params).await,
        None => Err(ApiError::new(ErrorId::InvalidMethod, format!("Invalid method id \"{method}\""))),
    }
}

/// HTTP status of a successful call: creations answer 201.
pub fn success_status(method: &str) -> u16 {
    if method.ends_with(".create") {
        201
    } else {
        200
    }
}

/// The `id` param of methods on one item.
pub(crate) fn id_param(params: &Value) -> Result<String, ApiError> {
    let m = herald_model::params::as_object(params)?;
    herald_model::params::req_str(&m, "id")
}

/// `update` param of `*.update` methods: an object.
pub(crate) fn update_param(params: &Value) -> Result<Value, ApiError> {
    match params.get("update") {
        Some(u @ Value::Object(_)) => Ok(u.clone()),
        Some(_) => Err(ApiError::param("update", "\"update\" must be an object.")),
        None => Err(ApiError::param("update", "\"update\" is required.")),
    }
}
