//! The HTTP transport: Pryv's routes mapped to method ids, tokens read from the places Pryv
//! reads them, and every answer in Pryv's envelope (JSON with `meta`, Pryv errors, the common
//! headers of spec 2.1). The route table is [`route`]; everything else is translation.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use base64::Engine as _;
use herald_model::{ApiError, ErrorId};
use serde_json::{json, Map, Value};

use crate::context::Context;
use crate::methods::{self, auth};
use crate::{App, API_VERSION};

/// What a request asks for, once its path is read.
enum Target {
    /// A method of the table, called with the request's access.
    Method {
        username: String,
        method: &'static str,
        params: Value,
    },
    ServiceInfo,
    Hostings,
    Register,
    CheckUsername(String),
    UserServer(String),
    Login(String),
    Live,
    Ready,
    OpenApi,
    /// Issue 10: register lookups, unknown users, password resets.
    UserForEmail {
        email: String,
        key: &'static str,
    },
    CheckEmail(String),
    UserServiceInfo(String),
    Cheers,
    PasswordReset {
        username: String,
        request: bool,
    },
    /// No route matched: `Unknown user` when the first segment names no user, as in Pryv.
    Unrouted(String),
    /// A web page or one of its files (`web`).
    Web(&'static crate::web::Asset),
    /// Access requests (`access_requests`): create, poll by key, set the outcome by key.
    AccessCreate,
    AccessPoll(String),
    AccessOutcome(String),
}

impl Target {
    /// The `method` label of the HTTP metrics: the Pryv method id, or a name for the routes
    /// that call none. Never anything from the request, so the label set stays bounded.
    fn label(&self) -> &'static str {
        match self {
            Target::Method { method, .. } => method,
            Target::ServiceInfo => "service.info",
            Target::Hostings => "system.hostings",
            Target::Register => "auth.register",
            Target::CheckUsername(_) => "auth.checkUsername",
            Target::UserServer(_) => "auth.userServer",
            Target::Login(_) => "auth.login",
            Target::Live => "health.live",
            Target::Ready => "health.ready",
            Target::OpenApi => "openapi",
            Target::UserForEmail { key: "uid", .. } => "register.uidForEmail",
            Target::UserForEmail { .. } => "register.usernameForEmail",
            Target::CheckEmail(_) => "register.checkEmail",
            Target::UserServiceInfo(_) => "service.info",
            Target::Cheers => "cheers",
            Target::PasswordReset { request: true, .. } => "account.requestPasswordReset",
            Target::PasswordReset { .. } => "account.resetPassword",
            // No route: counted with the requests that reached none.
            Target::Unrouted(_) => "none",
            Target::Web(_) => "web",
            Target::AccessCreate => "accessRequests.create",
            Target::AccessPoll(_) => "accessRequests.poll",
            Target::AccessOutcome(_) => "accessRequests.setOutcome",
        }
    }
}

/// The method a response answered, carried from [`dispatch`] to [`handle`] for the metrics.
#[derive(Clone, Copy)]
struct Answered(&'static str);

/// The OpenAPI description of every route (docs/operations.md); a test holds it against
/// [`route`].
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

/// The client's address, for throttling: the peer of the connection (when the server was
/// started with connect info), or the trusted proxy header when the settings name one.
fn client_address(app: &App, extensions: &axum::http::Extensions, headers: &HeaderMap) -> String {
    let peer = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let name = app.settings.auth.client_address_header.as_str();
    let value = if name.is_empty() { None } else { headers.get(name).and_then(|v| v.to_str().ok()) };
    crate::throttle::client_address(value, peer)
}

/// Query string → params: repeated keys (or `key[]`) become arrays, single ones strings.
pub fn query_params(query: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let key = k.strip_suffix("[]").unwrap_or(&k).to_string();
        let is_array = k.ends_with("[]");
        match m.get_mut(&key) {
            Some(Value::Array(a)) => a.push(Value::String(v.into_owned())),
            Some(prev) => {
                let p = prev.take();
                *prev = Value::Array(vec![p, Value::String(v.into_owned())]);
            }
            None if is_array => {
                m.insert(key, Value::Array(vec![Value::String(v.into_owned())]));
            }
            None => {
                m.insert(key, Value::String(v.into_owned()));
            }
        }
    }
    m
}

/// The access token: `Authorization` (raw, `Bearer` or Basic `token:`), else `auth` in the query.
pub(crate) fn token(headers: &HeaderMap, query: &Map<String, Value>) -> Option<String> {
    if let Some(h) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let h = h.trim();
        if let Some(b) = h.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
            let s = String::from_utf8(decoded).ok()?;
            return Some(s.split(':').next().unwrap_or("").to_string());
        }
        let h = h.strip_prefix("Bearer ").unwrap_or(h);
        // "TOKEN CALLERID": the caller id is informative only.
        return Some(h.split(' ').next().unwrap_or("").to_string());
    }
    match query.get("auth") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn with_id(id: &str, extra: Map<String, Value>) -> Value {
    let mut m = extra;
    m.insert("id".into(), json!(id));
    Value::Object(m)
}

/// The route table: (HTTP method, path) → target. `q` is the query string, `body` the parsed body.
fn route(
    method: &Method,
    segs: &[&str],
    q: Map<String, Value>,
    body: impl FnOnce() -> Result<Value, ApiError>,
) -> Result<Target, ApiError> {
    use Method as M;
    let call = |username: &str, method: &'static str, params: Value| Ok(Target::Method { username: username.into(), method, params });
    match (method, segs) {
        (&M::GET, ["health", "live"]) => Ok(Target::Live),
        (&M::GET, ["health", "ready"]) => Ok(Target::Ready),
        (&M::GET, ["openapi.json"]) => Ok(Target::OpenApi),
        // Usernames have at least 5 characters: `auth` and `www` can never be one.
        (&M::GET, ["auth", ..] | ["www", ..]) => match crate::web::asset(segs) {
            Some(a) => Ok(Target::Web(a)),
            None => Err(ApiError::new(ErrorId::UnknownResource, format!("Unknown route: {method} /{}", shown_path(segs)))),
        },
        (&M::POST, ["reg", "access"] | ["reg", "access", ""]) => Ok(Target::AccessCreate),
        (&M::GET, ["reg", "access", key]) => Ok(Target::AccessPoll(key.to_string())),
        (&M::POST, ["reg", "access", key]) => Ok(Target::AccessOutcome(key.to_string())),
        (&M::POST, [u, "accesses", "check-app"]) => call(u, "accesses.checkApp", body()?),
        (&M::GET, ["service", "info"]) | (&M::GET, ["reg", "service", "info"]) => Ok(Target::ServiceInfo),
        (&M::GET, ["reg", "hostings"]) => Ok(Target::Hostings),
        (&M::POST, ["users"]) | (&M::POST, ["reg", "users"]) | (&M::POST, ["reg", "user"]) => Ok(Target::Register),
        (&M::GET, ["reg", u, "check_username"]) => Ok(Target::CheckUsername(u.to_string())),
        (&M::GET | &M::POST, ["reg", u, "server"]) => Ok(Target::UserServer(u.to_string())),
        (&M::GET, ["reg", e, "uid"]) => Ok(Target::UserForEmail { email: e.to_string(), key: "uid" }),
        (&M::GET, ["reg", e, "username"]) => Ok(Target::UserForEmail { email: e.to_string(), key: "username" }),
        (&M::GET, ["reg", e, "check_email"]) => Ok(Target::CheckEmail(e.to_string())),
        (&M::GET, [u, "service", "info" | "infos"]) => Ok(Target::UserServiceInfo(u.to_string())),
        (&M::GET, [_]) | (&M::GET, [_, ""]) => Ok(Target::Cheers),
        (&M::POST, [u, "account", "request-password-reset"]) => Ok(Target::PasswordReset { username: u.to_string(), request: true }),
        (&M::POST, [u, "account", "reset-password"]) => Ok(Target::PasswordReset { username: u.to_string(), request: false }),
        (&M::GET, [u, "account"]) => call(u, "account.get", json!({})),
        (&M::PUT, [u, "account"]) => call(u, "account.update", json!({ "update": body()? })),
        (&M::POST, [u, "account", "change-password"]) => call(u, "account.changePassword", body()?),
        (&M::GET, [u, "profile", "public"]) => call(u, "profile.getPublic", json!({})),
        (&M::GET, [u, "profile", "app"]) => call(u, "profile.getApp", json!({})),
        (&M::PUT, [u, "profile", "app"]) => call(u, "profile.updateApp", json!({ "update": body()? })),
        (&M::GET, [u, "profile", "private"]) => call(u, "profile.get", json!({ "id": "private" })),
        (&M::PUT, [u, "profile", id @ ("public" | "private")]) => call(u, "profile.update", json!({ "id": id, "update": body()? })),
        (&M::POST, [_, "events", "start" | "stop"]) => Err(ApiError::new(ErrorId::RemovedMethod, "API method gone, please stop using it.")),
        // Pryv's "add files to an event" route; as JSON (no files) an update that changes nothing.
        (&M::POST, [u, "events", id]) => call(u, "events.update", json!({ "id": id, "update": {} })),
        (&M::DELETE, [u, "events", id, file_id]) => call(u, "events.deleteAttachment", json!({ "id": id, "fileId": file_id })),
        (&M::POST, [u, "auth", "login"]) => Ok(Target::Login(u.to_string())),
        (&M::POST, [u, "auth", "logout"]) => call(u, "auth.logout", json!({})),
        (&M::GET, [u, "access-info"]) => call(u, "getAccessInfo", json!({})),
        (&M::POST, [u]) | (&M::POST, [u, ""]) => call(u, "callBatch", body()?),
        (&M::GET, [u, "events"]) => call(u, "events.get", Value::Object(q)),
        (&M::POST, [u, "events"]) => call(u, "events.create", body()?),
        (&M::GET, [u, "events", id]) => call(u, "events.getOne", with_id(id, q)),
        (&M::PUT, [u, "events", id]) => call(u, "events.update", json!({ "id": id, "update": body()? })),
        (&M::DELETE, [u, "events", id]) => call(u, "events.delete", with_id(id, q)),
        (&M::GET, [u, "streams"]) => call(u, "streams.get", Value::Object(q)),
        (&M::POST, [u, "streams"]) => call(u, "streams.create", body()?),
        (&M::PUT, [u, "streams", id]) => call(u, "streams.update", json!({ "id": id, "update": body()? })),
        (&M::DELETE, [u, "streams", id]) => call(u, "streams.delete", with_id(id, q)),
        (&M::GET, [u, "accesses"]) => call(u, "accesses.get", Value::Object(q)),
        (&M::POST, [u, "accesses"]) => call(u, "accesses.create", body()?),
        (&M::PUT, [u, "accesses", id]) => call(u, "accesses.update", json!({ "id": id, "update": body()? })),
        (&M::DELETE, [u, "accesses", id]) => call(u, "accesses.delete", with_id(id, q)),
        (&M::GET, [u, "webhooks"]) => call(u, "webhooks.get", Value::Object(q)),
        (&M::POST, [u, "webhooks"]) => call(u, "webhooks.create", body()?),
        (&M::GET, [u, "webhooks", id]) => call(u, "webhooks.getOne", with_id(id, q)),
        (&M::PUT, [u, "webhooks", id]) => call(u, "webhooks.update", json!({ "id": id, "update": body()? })),
        (&M::DELETE, [u, "webhooks", id]) => call(u, "webhooks.delete", with_id(id, q)),
        (&M::POST, [u, "webhooks", id, "test"]) => {
            // The body carries nothing, but must be a JSON object when there is one.
            match body()? {
                Value::Object(_) => call(u, "webhooks.test", json!({ "id": id })),
                _ => Err(ApiError::structure("The request body must be a JSON object.")),
            }
        }
        _ => Ok(Target::Unrouted(segs.first().copied().unwrap_or("").to_string())),
    }
}

/// Pryv's answer to a path that no route takes.
fn unknown_route(method: &Method, segs: &[&str]) -> ApiError {
    ApiError::new(ErrorId::UnknownResource, format!("Unknown route: {method} /{}", shown_path(segs)))
}

/// A register-style answer: JSON without `meta` (Pryv's Express handlers under `/reg/`).
fn raw_json(status: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// The path as an error message shows it: cut, so an error never echoes a huge request back.
fn shown_path(segs: &[&str]) -> String {
    let p = segs.join("/");
    match p.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &p[..i]),
        None => p,
    }
}

/// The limits of the HTTP edge (docs/limits.md), checked before anything else is read.
fn check_edge(app: &App, parts: &axum::http::request::Parts) -> Result<(), ApiError> {
    let s = &app.settings;
    let uri_len = parts.uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0);
    if uri_len > s.max_uri_length {
        return Err(ApiError::new(ErrorId::UriTooLong, format!("The request URI is longer than {} bytes.", s.max_uri_length))
            .with_data(json!({ "max": s.max_uri_length })));
    }
    if parts.headers.len() > s.max_headers {
        return Err(ApiError::new(ErrorId::HeadersTooLarge, format!("The request has more than {} headers.", s.max_headers))
            .with_data(json!({ "max": s.max_headers })));
    }
    let bytes: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > s.max_header_bytes {
        return Err(ApiError::new(ErrorId::HeadersTooLarge, format!("The request headers are larger than {} bytes.", s.max_header_bytes))
            .with_data(json!({ "max": s.max_header_bytes })));
    }
    Ok(())
}

fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::structure(format!("The request body is not valid JSON: {e}")))
}

fn common_headers(resp: &mut Response<Body>, req_headers: &HeaderMap) {
    let h = resp.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    let origin = req_headers.get(header::ORIGIN).cloned().unwrap_or(HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let methods = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .cloned()
        .unwrap_or(HeaderValue::from_static("POST, GET, PUT, DELETE, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    let allow =
        req_headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned().unwrap_or(HeaderValue::from_static("Authorization, Content-Type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("API-Version"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("31536000"));
    h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
}

pub(crate) fn json_response(app: &App, server_time: f64, status: u16, result: Result<Value, ApiError>) -> Response<Body> {
    let retry_after = result.as_ref().err().and_then(ApiError::retry_after);
    let (status, mut body) = match result {
        Ok(Value::Object(m)) => (status, m),
        Ok(other) => (status, Map::from_iter([("result".to_string(), other)])),
        Err(e) => (e.status(), Map::from_iter([("error".to_string(), e.to_json())])),
    };
    body.insert("meta".into(), app.meta(server_time));
    let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    if let Some(secs) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn handle(State(app): State<Arc<App>>, req: Request<Body>) -> Response<Body> {
    use futures::FutureExt as _;
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    // HEAD is GET without the body, wherever GET is routed.
    let head = parts.method == Method::HEAD;
    let method = if head { Method::GET } else { parts.method.clone() };
    let mut resp = if parts.method == Method::OPTIONS {
        Response::new(Body::empty())
    } else if let Err(e) = check_edge(&app, &parts) {
        // Read (and drop) the body first, within its limits: a client still sending it would
        // otherwise see the connection reset instead of the answer.
        let _ = tokio::time::timeout(app.settings.body_read_timeout, to_bytes(body, app.settings.body_limit)).await;
        json_response(&app, app.begin_request().server_time, 0, Err(e))
    } else {
        let address = client_address(&app, &parts.extensions, &parts.headers);
        let answer = dispatch(&app, &method, parts.uri.path(), parts.uri.query(), &parts.headers, &address, body);
        // A panic answers `unexpected-error` (logged with its id) instead of a dropped connection.
        match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                json_response(&app, app.begin_request().server_time, 0, Err(ApiError::unexpected(format!("panic: {detail}"))))
            }
        }
    };
    if head {
        let len = resp.headers().get(header::CONTENT_LENGTH).cloned();
        let (p, b) = resp.into_parts();
        let n = axum::body::HttpBody::size_hint(&b).exact();
        resp = Response::from_parts(p, Body::empty());
        match (len, n) {
            (Some(l), _) => {
                resp.headers_mut().insert(header::CONTENT_LENGTH, l);
            }
            (None, Some(n)) => {
                resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            _ => {}
        }
    }
    common_headers(&mut resp, &parts.headers);
    // Requests that reached no route (edge limits, unknown paths, unreadable bodies) count as
    // `none`. A streamed `events.get` is timed to its first part.
    let method = resp.extensions().get::<Answered>().map_or("none", |a| a.0);
    let status = resp.status().as_str().to_string();
    metrics::counter!("herald_http_requests_total", "method" => method, "status" => status).increment(1);
    metrics::histogram!("herald_http_request_duration_seconds", "method" => method).record(started.elapsed().as_secs_f64());
    resp
}

async fn dispatch(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    address: &str,
    body: Body,
) -> Response<Body> {
    let clock = app.begin_request();
    let st = clock.server_time;
    let json_response = |app: &App, status: u16, result: Result<Value, ApiError>| json_response(app, st, status, result);
    let q = query_params(query);
    let tok = token(headers, &q);
    // Files stream through (both ways): these routes never read their body whole.
    let body = match crate::http_files::intercept(app, method, path, &q, headers, body).await {
        crate::http_files::Intercept::Answered(r) => return r,
        crate::http_files::Intercept::Pass(b) => b,
    };
    let bytes = match tokio::time::timeout(app.settings.body_read_timeout, to_bytes(body, app.settings.body_limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let e = ApiError::new(ErrorId::TooLarge, format!("The request body is larger than {} bytes.", app.settings.body_limit))
                .with_data(json!({ "max": app.settings.body_limit }));
            return json_response(app, 0, Err(e));
        }
        Err(_) => {
            let secs = app.settings.body_read_timeout.as_secs_f64();
            let e = ApiError::new(ErrorId::RequestTimeout, format!("The request body did not arrive within {secs} s."));
            return json_response(app, 0, Err(e));
        }
    };
    let decoded: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    // No text Herald stores or looks up may hold U+0000 (PostgreSQL cannot store it in text):
    // refused here, the same on every store.
    // In JSON a NUL is always written `\u0000`: parse only a body that has one.
    let body_nul = || bytes.windows(6).any(|w| w == b"\\u0000") && serde_json::from_slice::<Value>(&bytes).is_ok_and(|b| has_nul(&b));
    if decoded.iter().any(|s| s.contains('\0')) || tok.as_deref().is_some_and(|t| t.contains('\0')) || q.values().any(has_nul) || body_nul()
    {
        let e = ApiError::new(ErrorId::InvalidParametersFormat, "Text may not contain the NUL character (U+0000).");
        return json_response(app, 0, Err(e));
    }
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let target = match route(method, &segs, q, || parse_body(&bytes)) {
        Ok(t) => t,
        Err(e) => return json_response(app, 0, Err(e)),
    };
    let label = target.label();
    let mut resp = answer(app, st, clock, target, tok, method, &segs, headers, address, &bytes).await;
    resp.extensions_mut().insert(Answered(label));
    resp
}

/// Carry out a routed request.
#[allow(clippy::too_many_arguments)]
async fn answer(
    app: &Arc<App>,
    st: f64,
    clock: crate::RequestClock,
    target: Target,
    tok: Option<String>,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
    address: &str,
    bytes: &[u8],
) -> Response<Body> {
    let json_response = |app: &App, status: u16, result: Result<Value, ApiError>| json_response(app, st, status, result);
    // Register-style answers: no `meta`, as Pryv sends them.
    let raw = |(status, body): crate::access_requests::Answer| {
        let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        r
    };
    let reg_body = || parse_body(bytes).map_err(|e| e.message);
    match target {
        Target::Live => json_response(app, 200, Ok(json!({ "status": "live" }))),
        Target::Ready => {
            let (status, body) = crate::health::ready(app.readiness.as_deref()).await;
            json_response(app, status, Ok(body))
        }
        Target::OpenApi => {
            let mut r = Response::new(Body::from(OPENAPI));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Target::Web(asset) => crate::web::response(asset),
        Target::AccessCreate => raw(crate::access_requests::create(app.clone(), reg_body()).await),
        Target::AccessPoll(key) => raw(crate::access_requests::poll(app.clone(), &key).await),
        Target::AccessOutcome(key) => raw(crate::access_requests::set_outcome(app.clone(), &key, reg_body()).await),
        Target::ServiceInfo => json_response(app, 200, Ok(auth::service_info(app))),
        Target::Hostings => json_response(app, 200, Ok(auth::hostings(app))),
        Target::Register => {
            let r = match parse_body(bytes) {
                Ok(b) => auth::register(app.clone(), b, address).await,
                Err(e) => Err(e),
            };
            json_response(app, 201, r)
        }
        Target::CheckUsername(u) => json_response(app, 200, auth::check_username(app.clone(), &u).await),
        Target::UserServer(u) => match auth::user_server(app.clone(), &u).await {
            Ok((200, _)) if *method == Method::GET => {
                // Pryv redirects a browser to the core with the username.
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::FOUND;
                let to = format!("{}?username={u}", app.settings.public_url);
                if let Ok(v) = HeaderValue::from_str(&to) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Ok((status, b)) => raw_json(status, &b),
            Err(e) => json_response(app, 0, Err(e)),
        },
        Target::UserForEmail { email, key } => match auth::user_for_email(app.clone(), &email, key).await {
            Ok((status, b)) => raw_json(status, &b),
            Err(e) => json_response(app, 0, Err(e)),
        },
        Target::CheckEmail(e) => json_response(app, 200, auth::check_email(app.clone(), &e).await),
        Target::UserServiceInfo(u) => match app.user(&u).await {
            Ok(_) => json_response(app, 200, Ok(auth::service_info(app))),
            Err(e) => json_response(app, 0, Err(e)),
        },
        Target::Cheers => json_response(app, 200, Ok(json!({ "cheersFrom": "Pryv API", "learnMoreAt": "https://pryv.github.io/" }))),
        Target::Unrouted(first) => match app.user(&first).await {
            Ok(_) => json_response(app, 0, Err(unknown_route(method, segs))),
            Err(e) => json_response(app, 0, Err(e)),
        },
        Target::PasswordReset { username, request } => {
            let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let r = match parse_body(bytes) {
                Ok(b) if request => methods::account::request_password_reset(app.clone(), &username, b, &origin).await,
                Ok(b) => methods::account::reset_password(app.clone(), &username, b, &origin).await,
                Err(e) => Err(e),
            };
            json_response(app, 200, r)
        }
        Target::Login(u) => {
            let origin = headers
                .get(header::ORIGIN)
                .or_else(|| headers.get(header::REFERER))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let r = match parse_body(bytes) {
                Ok(b) => auth::login(app.clone(), &u, b, &origin, address).await,
                Err(e) => Err(e),
            };
            json_response(app, 200, r)
        }
        Target::Method { username, method, params } => {
            // `events.create` checks the caches inside its write instead of catching up first.
            let defer = method == "events.create";
            let ctx = match Context::authenticate_deferring(app.clone(), clock, &username, tok.as_deref(), defer).await {
                Ok(c) => Arc::new(c),
                Err(e) => return json_response(app, 0, Err(e)),
            };
            let access_id = ctx.access.id.clone();
            if method == "events.get" {
                let mut resp = match methods::events::get_streamed(&ctx, params).await {
                    Ok((rx, with_deletions)) => {
                        let tokens = ctx.read_tokens();
                        // A read's stamp protects no write: let other requests' serverTime move on
                        // while this answer streams.
                        drop(ctx);
                        stream_events(app, st, rx, with_deletions, tokens).await
                    }
                    Err(e) => json_response(app, 0, Err(e)),
                };
                if let Ok(v) = HeaderValue::from_str(&access_id) {
                    resp.headers_mut().insert("pryv-access-id", v);
                }
                return resp;
            }
            let mut resp = if method == "callBatch" {
                // Written straight out: a run of creates answers its events without building
                // a `Value` for each.
                let tokens = ctx.read_tokens();
                match methods::utility::batch_answers(ctx, params).await {
                    Ok(answers) => batch_response(app, st, &answers, &tokens),
                    Err(e) => json_response(app, 0, Err(e)),
                }
            } else {
                let r = methods::dispatch(ctx, method, params).await;
                json_response(app, methods::success_status(method), r)
            };
            if let Ok(v) = HeaderValue::from_str(&access_id) {
                resp.headers_mut().insert("pryv-access-id", v);
            }
            resp
        }
    }
}

/// A batch call's answer (200): `{"results":[…],"meta":{…}}`, each created event written
/// straight from the event.
fn batch_response(
    app: &App,
    server_time: f64,
    answers: &[methods::utility::BatchAnswer],
    tokens: &methods::attachments::ReadTokens,
) -> Response<Body> {
    // About what an event takes (a created `count/steps` event is ~330 bytes): one allocation
    // for most answers instead of a buffer doubled up to its size.
    let mut buf = Vec::with_capacity(256 + answers.len() * 400);
    methods::utility::write_results(answers, tokens, &mut buf);
    buf.extend_from_slice(b",\"meta\":");
    let _ = serde_json::to_writer(&mut buf, &app.meta(server_time));
    buf.push(b'}');
    let mut r = Response::new(Body::from(buf));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// `events.get`'s answer, written as the store's batches arrive.
struct EventsWriter {
    buf: Vec<u8>,
    in_deletions: bool,
    first_item: bool,
    with_deletions: bool,
    /// The reading access's attachment read tokens.
    tokens: methods::attachments::ReadTokens,
}

impl EventsWriter {
    fn new(with_deletions: bool, tokens: methods::attachments::ReadTokens) -> Self {
        EventsWriter { buf: b"{\"events\":[".to_vec(), in_deletions: false, first_item: true, with_deletions, tokens }
    }

    fn item(&mut self, v: &impl serde::Serialize) {
        if !self.first_item {
            self.buf.push(b',');
        }
        self.first_item = false;
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    fn start_deletions(&mut self) {
        if !self.in_deletions {
            self.buf.extend_from_slice(b"],\"eventDeletions\":[");
            self.in_deletions = true;
            self.first_item = true;
        }
    }

    fn batch(&mut self, b: herald_storage::EventBatch) {
        match b {
            herald_storage::EventBatch::Events(events) => events.iter().for_each(|e| {
                if !self.first_item {
                    self.buf.push(b',');
                }
                self.first_item = false;
                self.tokens.write_event(e, &mut self.buf);
            }),
            herald_storage::EventBatch::Deletions(d) => {
                self.start_deletions();
                d.into_iter().for_each(|(id, deleted)| self.item(&json!({ "id": id, "deleted": deleted })));
            }
        }
    }

    fn finish(&mut self, meta: &Value) {
        if self.with_deletions {
            self.start_deletions();
        }
        self.buf.extend_from_slice(b"],\"meta\":");
        let _ = serde_json::to_writer(&mut self.buf, meta);
        self.buf.push(b'}');
    }

    fn take(&mut self) -> bytes::Bytes {
        bytes::Bytes::from(std::mem::take(&mut self.buf))
    }
}

/// Below this size an answer goes out whole (one write, `Content-Length`); above, in parts.
const STREAM_THRESHOLD: usize = 64 * 1024;

/// Write `events.get`'s answer as the store reads it: `{"events":[…], "eventDeletions":[…]?,
/// "meta":{…}}`. A small answer is sent whole; a large one part by part through a bounded
/// channel, so memory does not grow with the result. An error before the first part is an
/// ordinary error answer; one after it (the status is sent) cuts the connection, so the client
/// never takes a partial list for a whole.
async fn stream_events(
    app: &App,
    server_time: f64,
    mut rx: tokio::sync::mpsc::Receiver<herald_storage::StoreResult<herald_storage::EventBatch>>,
    with_deletions: bool,
    tokens: methods::attachments::ReadTokens,
) -> Response<Body> {
    let meta = app.meta(server_time);
    let mut w = EventsWriter::new(with_deletions, tokens);
    let body = loop {
        match rx.recv().await {
            None => {
                w.finish(&meta);
                break Body::from(w.take());
            }
            Some(Err(e)) => return json_response(app, server_time, 0, Err(crate::context::store_error(e))),
            Some(Ok(b)) => w.batch(b),
        }
        if w.buf.len() >= STREAM_THRESHOLD {
            let (out, body_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
            tokio::spawn(async move {
                loop {
                    if out.send(Ok(w.take())).await.is_err() {
                        return; // the client left: dropping `rx` stops the reader
                    }
                    match rx.recv().await {
                        None => break,
                        Some(Err(e)) => {
                            tracing::error!("events.get stopped while streaming: {e}");
                            let _ = out.send(Err(std::io::Error::other("read failed"))).await;
                            return;
                        }
                        Some(Ok(b)) => w.batch(b),
                    }
                }
                w.finish(&meta);
                let _ = out.send(Ok(w.take())).await;
            });
            break Body::from_stream(futures::stream::unfold(body_rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }));
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// `%XX` decoding of a path segment; a segment that does not decode stays as it is.
/// Whether any string in `v` (keys included) holds U+0000.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_arrays() {
        let q = query_params(Some("streams=a&streams=b&limit=1&types[]=x&auth=t"));
        assert_eq!(q["streams"], json!(["a", "b"]));
        assert_eq!(q["limit"], json!("1"));
        assert_eq!(q["types"], json!(["x"]));
        let mut h = HeaderMap::new();
        assert_eq!(token(&h, &q).as_deref(), Some("t"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(token(&h, &q).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWJjOg=="));
        assert_eq!(token(&h, &q).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("tok caller"));
        assert_eq!(token(&h, &q).as_deref(), Some("tok"));
    }

    #[test]
    fn path_decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}

/// The OpenAPI description and the route table cannot drift apart: every documented operation
/// is routed, and every routed (method, path) over the table's own vocabulary is documented.
#[cfg(test)]
mod openapi_tests {
    use super::*;

    const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

    fn doc() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    /// (method, path template split in segments) of every documented operation.
    fn documented() -> Vec<(Method, Vec<String>)> {
        let doc = doc();
        let mut out = vec![];
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for m in ops.as_object().unwrap().keys() {
                let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
                out.push((method, path.trim_start_matches('/').split('/').map(str::to_owned).collect()));
            }
        }
        out
    }

    /// Whether a request reaches a route: a file download (taken before the route table, by
    /// `http_files`), or a target of the table other than `Unrouted`.
    fn routed(method: &Method, segs: &[&str]) -> bool {
        if crate::http_files::download_route(method, segs).is_some() {
            return true;
        }
        match route(method, segs, Map::new(), || Ok(json!({}))) {
            Ok(Target::Unrouted(_)) => false,
            Ok(_) => true,
            Err(e) => e.id != ErrorId::UnknownResource,
        }
    }

    fn matches(template: &[String], segs: &[&str]) -> bool {
        template.len() == segs.len() && template.iter().zip(segs).all(|(t, s)| if t.starts_with('{') { !s.is_empty() } else { t == s })
    }

    /// Whether a documented operation takes (method, segs). `GET /auth…` and `GET /www…` are the
    /// web pages' (no username is that short): there only literal paths and downloads count.
    fn documented_at(documented: &[(Method, Vec<String>)], method: &Method, segs: &[&str]) -> bool {
        let web = *method == Method::GET
            && matches!(segs.first(), Some(&"auth") | Some(&"www"))
            && crate::http_files::download_route(method, segs).is_none();
        documented.iter().any(|(m, t)| m == method && matches(t, segs) && !(web && t[0].starts_with('{')))
    }

    #[test]
    fn every_documented_operation_is_routed() {
        for (method, template) in documented() {
            let segs: Vec<&str> = template.iter().map(|t| if t.starts_with('{') { "some-name" } else { t.as_str() }).collect();
            assert!(routed(&method, &segs), "documented but not routed: {method} /{}", template.join("/"));
        }
    }

    /// Every path of up to four segments made of the route table's own words (read from this
    /// file's `route`) and of names, under each method: routed exactly when documented.
    #[test]
    fn every_route_is_documented() {
        let src = include_str!("http.rs");
        let body = &src[src.find("\nfn route(").unwrap()..];
        let body = &body[..body.find("\n}\n").unwrap()];
        let mut words: Vec<String> = body
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '-' || c == '.'))
            // Method ids (`events.get`) are not path words; file names (`openapi.json`) are.
            .filter(|w| !w.contains('.') || w.ends_with(".json"))
            .map(str::to_owned)
            .collect();
        words.sort();
        words.dedup();
        assert!(words.contains(&"webhooks".to_string()) && words.contains(&"check_username".to_string()), "{words:?}");
        words.push("some-name".into());
        let documented = documented();
        let mut paths: Vec<Vec<&str>> = vec![vec![]];
        let mut checked = 0;
        for _ in 0..4 {
            let mut next = vec![];
            for p in &paths {
                for w in &words {
                    let mut q = p.clone();
                    q.push(w.as_str());
                    for method in &METHODS {
                        let doc = documented_at(&documented, method, &q);
                        assert_eq!(routed(method, &q), doc, "{method} /{}: routed and documented must agree", q.join("/"));
                        checked += 1;
                    }
                    next.push(q);
                }
            }
            paths = next;
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn operations_answer_the_error_envelope() {
        let doc = doc();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (m, op) in ops.as_object().unwrap() {
                // Some register-style routes answer Pryv's error object without `meta`.
                let default = op["responses"]["default"]["$ref"].as_str().unwrap_or("");
                let reg = path.starts_with("/reg/") && default == "#/components/responses/RegError";
                assert!(reg || default == "#/components/responses/Error", "{m} {path}: {default}");
                assert!(op["operationId"].is_string(), "{m} {path}");
            }
        }
    }
}
