//! The routes that carry files, both ways as streams (issue 10): multipart `events.create`
//! (`POST /{username}/events`), adding files to an event (`POST /{username}/events/{id}`), and
//! `events.getAttachment` (`GET /{username}/events/{id}/{fileId}[/{name}]`). Their bodies never
//! go through the JSON body limit: each file is written to the store chunk by chunk as it
//! arrives (hashed and counted on the way, refused past `HERALD_ATTACHMENTS_MAX_BYTES`), and
//! read back chunk by chunk; no file is ever whole in memory.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use herald_model::event::{clean_file_name, Attachment};
use herald_model::id::new_id;
use herald_model::{ApiError, ErrorId};
use serde_json::{json, Map, Value};
use sha2::Digest as _;

use crate::context::{store_error, Context};
use crate::http::{json_response, percent_decode, token};
use crate::methods::{attachments, events};
use crate::App;

pub(crate) enum Intercept {
    /// The request was one of these routes: its answer.
    Answered(Response<Body>),
    /// Any other request, with its body untouched.
    Pass(Body),
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// `GET /{u}/events/{id}/{fileId}[/{fileName}]`: (user, event, file) of a download. The route
/// table never sees these paths; the OpenAPI drift test asks here too.
pub(crate) fn download_route<'a>(method: &Method, segs: &[&'a str]) -> Option<(&'a str, &'a str, &'a str)> {
    match (method, segs) {
        (&Method::GET, [u, "events", id, file]) | (&Method::GET, [u, "events", id, file, _]) => Some((u, id, file)),
        _ => None,
    }
}

pub(crate) async fn intercept(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    q: &Map<String, Value>,
    headers: &HeaderMap,
    body: Body,
) -> Intercept {
    let decoded: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    if decoded.iter().any(|s| s.contains('\0')) {
        return Intercept::Pass(body); // refused by the common checks
    }
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    if let Some((u, id, file)) = download_route(method, &segs) {
        return Intercept::Answered(download(app, u, id, file, q, headers).await);
    }
    match (method, segs.as_slice()) {
        (&Method::POST, [u, "events"]) if is_multipart(headers) => Intercept::Answered(upload(app, u, None, q, headers, body).await),
        (&Method::POST, [u, "events", id]) if is_multipart(headers) && !matches!(*id, "start" | "stop") => {
            Intercept::Answered(upload(app, u, Some(id), q, headers, body).await)
        }
        _ => Intercept::Pass(body),
    }
}

fn with_access_id(mut r: Response<Body>, access_id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(access_id) {
        r.headers_mut().insert("pryv-access-id", v);
    }
    r
}

/// A readToken's refusal: 401, Pryv's id (the 401 flavour of `invalid-access-token`).
fn bad_read_token() -> ApiError {
    ApiError::new(ErrorId::MissingAccessToken, "Invalid read token.")
}

/// The context of a download authenticated by a `readToken`: its access must be live, its
/// token unchanged since the read token was made, and the MAC must be for this file.
async fn read_token_context(
    app: &Arc<App>,
    clock: crate::RequestClock,
    username: &str,
    file_id: &str,
    rt: &str,
) -> Result<Context, ApiError> {
    let user = app.user(username).await?;
    app.catch_up_with_log().await?;
    let (access_id, mac) = attachments::split_read_token(rt).ok_or_else(bad_read_token)?;
    let access = app.store.access_by_id(&user.id, access_id).await.map_err(store_error)?.filter(|a| a.deleted.is_none());
    let access = access.ok_or_else(bad_read_token)?;
    let secret = app.read_token_secret().await?;
    if !attachments::read_token_matches(&secret, &access.token, file_id, mac) {
        return Err(bad_read_token());
    }
    if access.is_expired(clock.now) {
        return Err(ApiError::forbidden("Access has expired."));
    }
    Ok(Context { app: app.clone(), user, access, now: clock.now, clock, fresh_since: None })
}

/// `events.getAttachment`: the file's bytes (200, not JSON) with its type, size, name and digest.
async fn download(
    app: &Arc<App>,
    username: &str,
    event_id: &str,
    file_id: &str,
    q: &Map<String, Value>,
    headers: &HeaderMap,
) -> Response<Body> {
    let clock = app.begin_request();
    let st = clock.server_time;
    let fail = |e: ApiError| json_response(app, st, 0, Err(e));
    // The user is checked first, as on every route (an unknown user is 404 whatever the token).
    if let Err(e) = app.user(username).await {
        return fail(e);
    }
    if q.contains_key("auth") {
        return fail(attachments::auth_in_query_refused());
    }
    let ctx = match q.get("readToken") {
        Some(Value::String(rt)) => read_token_context(app, clock, username, file_id, rt).await,
        Some(_) => Err(bad_read_token()),
        None => Context::authenticate(app.clone(), clock, username, token(headers, &Map::new()).as_deref()).await,
    };
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let access_id = ctx.access.id.clone();
    let answer = async {
        let e = events::load(&ctx, event_id).await?;
        if !ctx.access.is_personal() && !ctx.access.can_read_event(&ctx.tree().await?.tree, &e.stream_ids) {
            return Err(ApiError::forbidden("The given token's access permissions do not allow this operation."));
        }
        let a = e.attachments.iter().find(|a| a.id == file_id).cloned().ok_or_else(|| ApiError::unknown("attachment", file_id))?;
        let rx = ctx.app.store.read_file(&ctx.user.id, file_id).await.map_err(store_error)?;
        Ok((a, rx.ok_or_else(|| ApiError::unknown("attachment", file_id))?))
    }
    .await;
    let (a, rx) = match answer {
        Ok(x) => x,
        Err(e) => return with_access_id(fail(e), &access_id),
    };
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| {
            let chunk = chunk.map_err(|e| {
                // The status is sent: cutting the connection is the only way to say it failed.
                tracing::error!(error = %e, "attachment read failed while streaming");
                std::io::Error::other("read failed")
            });
            (chunk, rx)
        })
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&a.file_type).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size));
    let name = percent_encoding::utf8_percent_encode(&a.file_name, percent_encoding::NON_ALPHANUMERIC);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{name}")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(d) = a.integrity.strip_prefix("sha256-") {
        if let Ok(v) = HeaderValue::from_str(&format!("SHA-256={d}")) {
            h.insert("digest", v);
        }
    }
    with_access_id(r, &access_id)
}

fn malformed(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamReadFailed(inner) if inner.to_string().contains("timed out") => {
            ApiError::new(ErrorId::RequestTimeout, "The request body stopped arriving.")
        }
        _ => ApiError::structure("The multipart body is incomplete or malformed."),
    }
}

/// Multipart `events.create` (`event_id` none, 201) or files added to an event (200).
async fn upload(
    app: &Arc<App>,
    username: &str,
    event_id: Option<&str>,
    q: &Map<String, Value>,
    headers: &HeaderMap,
    body: Body,
) -> Response<Body> {
    let clock = app.begin_request();
    let st = clock.server_time;
    let fail = |e: ApiError| json_response(app, st, 0, Err(e));
    let ctx = match Context::authenticate(app.clone(), clock, username, token(headers, q).as_deref()).await {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e),
    };
    let access_id = ctx.access.id.clone();
    // Nothing is stored for an access that may not add files to this event.
    if let Some(id) = event_id {
        if let Err(e) = attachments::check_can_add(&ctx, id).await {
            return with_access_id(fail(e), &access_id);
        }
    }
    let boundary = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(multer::parse_boundary) {
        Some(Ok(b)) => b,
        _ => return with_access_id(fail(ApiError::structure("A multipart request needs a boundary in its Content-Type.")), &access_id),
    };
    // No whole-body deadline (a large file takes its time), but each piece must come within the
    // body read timeout: a sender that stalls is cut.
    let idle = app.settings.body_read_timeout;
    let data = body.into_data_stream();
    let stream = futures::stream::unfold(Some(data), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), None)),
            Ok(None) => None,
            Err(_) => Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")), None)),
        }
    });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut stored: Vec<Attachment> = Vec::new();
    let mut event_part: Option<Vec<u8>> = None;
    let read = read_parts(&ctx, &mut mp, &mut stored, &mut event_part).await;
    let result = match read {
        Err(e) => {
            // Read (and drop) what remains, briefly, so the client gets this answer rather than a
            // reset connection.
            let _ = tokio::time::timeout(idle, async {
                while let Ok(Some(mut f)) = mp.next_field().await {
                    while let Ok(Some(_)) = f.chunk().await {}
                }
            })
            .await;
            Err(e)
        }
        Ok(()) => {
            let params = match event_part {
                None => Ok(json!({})),
                Some(bytes) => serde_json::from_slice::<Value>(&bytes)
                    .map_err(|_| ApiError::structure("In multipart requests, we expect the non-file part to be valid JSON.")),
            };
            match (params, event_id) {
                (Err(e), _) => Err(e),
                (Ok(p), None) => attachments::create_with_files(&ctx, p, stored.clone()).await,
                // Pryv ignores the non-file part when files are added to an event.
                (Ok(_), Some(id)) => attachments::add_to_event(&ctx, id, stored.clone()).await,
            }
        }
    };
    if result.is_err() {
        let ids: Vec<String> = stored.iter().map(|a| a.id.clone()).collect();
        attachments::remove_files(app, &ctx.user.id, &ids).await;
    }
    let status = if event_id.is_some() { 200 } else { 201 };
    with_access_id(json_response(app, st, status, result), &access_id)
}

/// Read every part: files into the store (each listed in `stored` once whole), the one non-file
/// part into `event_part`.
async fn read_parts(
    ctx: &Context,
    mp: &mut multer::Multipart<'static>,
    stored: &mut Vec<Attachment>,
    event_part: &mut Option<Vec<u8>>,
) -> Result<(), ApiError> {
    let max = ctx.app.settings.extras.attachments_max_bytes;
    let json_limit = ctx.app.settings.body_limit;
    while let Some(mut field) = mp.next_field().await.map_err(malformed)? {
        let Some(raw_name) = field.file_name().map(str::to_owned) else {
            if event_part.is_some() {
                return Err(ApiError::structure("In multipart requests, we don't expect more than one non-file part."));
            }
            let mut buf = Vec::new();
            while let Some(c) = field.chunk().await.map_err(malformed)? {
                buf.extend_from_slice(&c);
                if buf.len() > json_limit {
                    return Err(ApiError::new(ErrorId::TooLarge, format!("The non-file part is larger than {json_limit} bytes."))
                        .with_data(json!({ "max": json_limit })));
                }
            }
            *event_part = Some(buf);
            continue;
        };
        let file_name = clean_file_name(&raw_name)
            .ok_or_else(|| ApiError::param("fileName", format!("The file name \"{raw_name}\" has no usable last segment.")))?;
        let file_type = field
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        let id = new_id();
        let mut writer = ctx.app.store.create_file(&ctx.user.id, &id).await.map_err(store_error)?;
        let mut hash = sha2::Sha256::new();
        let mut size: u64 = 0;
        loop {
            let chunk = match field.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    writer.abort().await;
                    return Err(malformed(e));
                }
            };
            size += chunk.len() as u64;
            if size > max {
                writer.abort().await;
                return Err(ApiError::new(
                    ErrorId::TooLarge,
                    format!("The file \"{file_name}\" is larger than the limit of {max} bytes (setting HERALD_ATTACHMENTS_MAX_BYTES)."),
                )
                .with_data(json!({ "max": max, "fileName": file_name })));
            }
            hash.update(&chunk);
            if let Err(e) = writer.write(&chunk).await {
                writer.abort().await;
                return Err(store_error(e));
            }
        }
        writer.finish().await.map_err(store_error)?;
        let integrity = format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(hash.finalize()));
        stored.push(Attachment { id, file_name, file_type, size, integrity });
    }
    Ok(())
}
