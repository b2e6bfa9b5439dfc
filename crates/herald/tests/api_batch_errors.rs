//! Batch calls, Pryv's error envelope, common headers, token sources and the body limit.
mod common;

use common::{assert_error, Server};
use serde_json::{json, Value};

/// Any request with raw bytes and extra headers; returns (status, headers, body text).
async fn raw(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = server.client.request(m, server.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.header("Content-Type", "application/json").body(b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

fn json_of(status: u16, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
}

#[tokio::test]
async fn batch_calls() {
    let server = Server::start();
    let t = server.register("alice").await;

    let (s, b) = server.post("/alice/", &t, json!([])).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"], json!([]));
    assert!(b["meta"]["serverTime"].is_number(), "{b}");

    let (s, b) = server
        .post(
            "/alice/",
            &t,
            json!([
                {"method": "streams.create", "params": {"id": "s1", "name": "S1"}},
                {"method": "events.create", "params": {"streamIds": ["s1"], "type": "note/txt", "content": "first", "time": 1000}},
                {"method": "events.create", "params": {"streamIds": ["nope"], "type": "note/txt"}},
                {"method": "events.create", "params": {"streamIds": ["s1"], "type": "note/txt", "content": "second", "time": 2000}},
                {"method": "events.get", "params": {"streams": [{"any": ["s1"]}], "sortAscending": true, "fromTime": 0}},
                {"method": "no.suchMethod", "params": {}},
                {"params": {}},
                {"method": "getAccessInfo"}
            ]),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let r = b["results"].as_array().expect("results");
    assert_eq!(r.len(), 8, "{b}");
    assert_eq!(r[0]["stream"]["id"], "s1");
    assert_eq!(r[1]["event"]["content"], "first");
    assert_eq!(r[2]["error"]["id"], "unknown-referenced-resource", "{b}");
    assert!(r[2]["error"]["message"].is_string());
    assert!(r[2].get("event").is_none());
    assert_eq!(r[3]["event"]["content"], "second", "a failing call does not stop the batch");
    let contents: Vec<&Value> = r[4]["events"].as_array().unwrap().iter().map(|e| &e["content"]).collect();
    assert_eq!(contents, vec![&json!("first"), &json!("second")]);
    assert_eq!(r[5]["error"]["id"], "invalid-method", "{b}");
    assert!(r[6]["error"]["id"].is_string(), "{b}");
    assert_eq!(r[7]["type"], "personal", "{b}");

    // The batch's writes are there.
    let (s, b) = server.get("/alice/events?streams=s1", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"].as_array().unwrap().len(), 2);

    // Not an array.
    let (s, b) = server.post("/alice/", &t, json!({"method": "events.get", "params": {}})).await;
    assert_error(s, &b, 400, "invalid-request-structure");
    let (s, b) = server.post("/alice", &t, json!("events.get")).await;
    assert_error(s, &b, 400, "invalid-request-structure");
    // A batch needs a token like any call.
    let (s, b) = server.req("POST", "/alice/", None, Some(json!([]))).await;
    assert_error(s, &b, 401, "invalid-access-token");
}

#[tokio::test]
async fn batch_calls_use_the_callers_permissions() {
    let server = Server::start();
    let t = server.register("alice").await;
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "s", "name": "S"})).await;
    assert_eq!(s, 201, "{b}");
    let (_, reader) =
        server.access("alice", &t, json!({"name": "r", "type": "app", "permissions": [{"streamId": "s", "level": "read"}]})).await;
    let (s, b) = server
        .post(
            "/alice/",
            &reader,
            json!([
                {"method": "events.create", "params": {"streamIds": ["s"], "type": "note/txt"}},
                {"method": "events.get", "params": {"streams": ["s"]}}
            ]),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"][0]["error"]["id"], "forbidden", "{b}");
    assert_eq!(b["results"][1]["events"], json!([]), "{b}");
}

#[tokio::test]
async fn authentication_errors_and_token_sources() {
    let server = Server::start();
    let t = server.register("alice").await;

    let (s, b) = server.req("GET", "/alice/events", None, None).await;
    assert_error(s, &b, 401, "invalid-access-token");
    let (s, b) = server.get("/alice/events", "").await;
    assert_error(s, &b, 401, "invalid-access-token");
    let (s, b) = server.get("/alice/events", "not-a-real-token").await;
    assert_error(s, &b, 403, "invalid-access-token");
    let (s, b) = server.get("/nobody-here/events", &t).await;
    assert_error(s, &b, 404, "unknown-resource");
    let (s, b) = server.req("GET", "/nobody-here/events", None, None).await;
    assert_error(s, &b, 404, "unknown-resource");
    // A token of another user is unknown there.
    let bob = server.register("bobby").await;
    let (s, b) = server.get("/alice/events", &bob).await;
    assert_error(s, &b, 403, "invalid-access-token");

    // Token sources: raw header, Bearer, Basic, `auth` query parameter.
    let basic = {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{t}:")))
    };
    for auth in [t.clone(), format!("Bearer {t}"), basic, format!("{t} some-caller")] {
        let (s, _, text) = raw(&server, "GET", "/alice/access-info", &[("Authorization", &auth)], None).await;
        assert_eq!(s, 200, "{auth}: {text}");
        assert_eq!(json_of(s, &text)["user"]["username"], "alice");
    }
    let (s, b) = server.req("GET", &format!("/alice/access-info?auth={t}"), None, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["type"], "personal");
}

#[tokio::test]
async fn request_errors_have_pryv_shape() {
    let server = Server::start();
    let t = server.register("alice").await;
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "s", "name": "S"})).await;
    assert_eq!(s, 201, "{b}");
    let auth = [("Authorization", t.as_str())];

    // Malformed JSON.
    for body in [&b"{not json"[..], b"[1, 2", b"{\"streamIds\": [\"s\"],}"] {
        let (s, _, text) = raw(&server, "POST", "/alice/events", &auth, Some(body.to_vec())).await;
        assert_error(s, &json_of(s, &text), 400, "invalid-request-structure");
    }
    let (s, _, text) = raw(&server, "POST", "/alice/", &auth, Some(b"[{".to_vec())).await;
    assert_error(s, &json_of(s, &text), 400, "invalid-request-structure");
    let (s, _, text) = raw(&server, "POST", "/users", &[], Some(b"{\"username\":".to_vec())).await;
    assert_error(s, &json_of(s, &text), 400, "invalid-request-structure");

    // Wrong parameter types.
    for (method, path, body) in [
        ("POST", "/alice/events", Some(json!({"streamIds": 5, "type": "note/txt"}))),
        ("POST", "/alice/events", Some(json!({"streamIds": ["s"], "type": 12}))),
        ("POST", "/alice/events", Some(json!({"streamIds": ["s"], "type": "note/txt", "time": true}))),
        ("POST", "/alice/streams", Some(json!({"name": ["S2"]}))),
        ("POST", "/alice/accesses", Some(json!({"name": "x", "permissions": "all"}))),
        ("GET", "/alice/events?limit=ten", None),
        ("GET", "/alice/events?sortAscending=maybe", None),
        ("GET", "/alice/events?skip=-1", None),
    ] {
        let (s, b) = server.req(method, path, Some(&t), body).await;
        assert_error(s, &b, 400, "invalid-parameters-format");
    }
    // A body that is JSON but not an object.
    let (s, b) = server.post("/alice/events", &t, json!(["s"])).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["id"].is_string() && b["meta"]["serverTime"].is_number(), "{b}");

    // Unknown routes.
    for (method, path) in [
        ("GET", "/alice/nothing-here"),
        ("GET", "/alice/events/x/y"),
        ("PATCH", "/alice/events"),
        ("GET", "/some/deep/unknown/path"),
        ("DELETE", "/alice/streams"),
    ] {
        let (s, b) = server.req(method, path, Some(&t), None).await;
        assert_eq!(s, 404, "{method} {path}: {b}");
        assert!(b["error"]["id"].is_string() && b["error"]["message"].is_string(), "{b}");
        assert!(b["meta"]["serverTime"].is_number(), "{b}");
    }
    let (s, b) = server.get("/alice/nothing-here", &t).await;
    assert_error(s, &b, 404, "unknown-resource");
    // Removed method.
    let (s, b) = server.put("/alice/accesses/whatever", &t, json!({"name": "n"})).await;
    assert_eq!(s, 410, "{b}");
    assert_eq!(b["error"]["id"], "removed-method");
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_the_server_keeps_answering() {
    let server = Server::start_with(&[("HERALD_BODY_LIMIT", "1000")]);
    let t = server.register("alice").await;
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "s", "name": "S"})).await;
    assert_eq!(s, 201, "{b}");

    let big = json!({"streamIds": ["s"], "type": "note/txt", "content": "x".repeat(5000)});
    let bytes = serde_json::to_vec(&big).unwrap();
    assert!(bytes.len() > 5000);
    let (s, headers, text) = raw(&server, "POST", "/alice/events", &[("Authorization", &t)], Some(bytes)).await;
    assert_eq!(s, 413, "{text}");
    let b = json_of(s, &text);
    assert!(b["error"]["id"].is_string() && b["error"]["message"].is_string(), "{b}");
    assert!(b["meta"]["serverTime"].is_number(), "{b}");
    assert!(headers.get("api-version").is_some(), "{headers:?}");
    // Nothing was created.
    let (s, b) = server.get("/alice/events", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"], json!([]));

    // The server still answers, and small bodies still work.
    let (s, b) = server.req("GET", "/service/info", None, None).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["s"], "type": "note/txt", "content": "small"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, _, text) = raw(&server, "POST", "/alice/", &[("Authorization", &t)], Some(vec![b' '; 2000])).await;
    assert_eq!(s, 413, "{text}");
    let (s, b) = server.get("/alice/events", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn common_headers_and_options() {
    let server = Server::start();
    let t = server.register("alice").await;

    let check = |what: &str, s: u16, h: &reqwest::header::HeaderMap| {
        assert!(h.get("api-version").is_some_and(|v| !v.is_empty()), "{what} ({s}): {h:?}");
        assert!(h.get("access-control-allow-origin").is_some(), "{what} ({s}): {h:?}");
    };
    let (s, h, text) = raw(&server, "GET", "/service/info", &[], None).await;
    assert_eq!(s, 200, "{text}");
    check("service info", s, &h);
    assert!(h.get("content-type").unwrap().to_str().unwrap().starts_with("application/json"), "{h:?}");
    assert_eq!(json_of(s, &text)["meta"]["apiVersion"], h.get("api-version").unwrap().to_str().unwrap());

    let (s, h, _) = raw(&server, "GET", "/alice/events", &[("Authorization", &t)], None).await;
    assert_eq!(s, 200);
    check("events.get", s, &h);
    let (s, h, _) = raw(&server, "GET", "/alice/events", &[], None).await;
    assert_eq!(s, 401);
    check("error", s, &h);
    let (s, h, _) = raw(&server, "GET", "/alice/events", &[("Authorization", &t), ("Origin", "https://app.example")], None).await;
    assert_eq!(s, 200);
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://app.example");

    // CORS preflight.
    let (s, h, _) = raw(
        &server,
        "OPTIONS",
        "/alice/events",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        None,
    )
    .await;
    assert_eq!(s, 200);
    check("preflight", s, &h);
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://app.example");
    let methods = h.get("access-control-allow-methods").expect("allow-methods").to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed = h.get("access-control-allow-headers").expect("allow-headers").to_str().unwrap().to_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let (s, h, _) = raw(&server, "OPTIONS", "/anything/at/all", &[], None).await;
    assert_eq!(s, 200);
    check("preflight anywhere", s, &h);
}

/// A run of `events.create` in a batch is written in one transaction, yet each call stands on
/// its own: a bad one answers its error in its place, the others are created.
#[tokio::test]
async fn a_run_of_creates_in_a_batch_answers_each_call() {
    let server = Server::start();
    let token = server.register("batcher").await;
    let (s, b) = server.post("/batcher/streams", &token, json!({"id": "s", "name": "S"})).await;
    assert_eq!(s, 201, "{b}");
    let calls = json!([
        {"method": "events.create", "params": {"id": "cbatch0000000000000000001", "streamIds": ["s"], "type": "note/txt", "content": "a"}},
        {"method": "events.create", "params": {"streamIds": ["nope"], "type": "note/txt", "content": "b"}},
        {"method": "events.create", "params": {"id": "cbatch0000000000000000001", "streamIds": ["s"], "type": "note/txt", "content": "c"}},
        {"method": "events.create", "params": {"streamIds": ["s"], "type": "note/txt", "content": "d"}},
        {"method": "events.get", "params": {"streams": ["s"]}}
    ]);
    let (s, b) = server.post("/batcher/", &token, calls).await;
    assert_eq!(s, 200, "{b}");
    let r = b["results"].as_array().unwrap();
    assert_eq!(r.len(), 5, "{b}");
    assert_eq!(r[0]["event"]["content"], "a", "{b}");
    assert_eq!(r[1]["error"]["id"], "unknown-referenced-resource", "{b}");
    assert_eq!(r[2]["error"]["id"], "item-already-exists", "{b}");
    assert_eq!(r[3]["event"]["content"], "d", "{b}");
    let contents: Vec<&str> = r[4]["events"].as_array().unwrap().iter().map(|e| e["content"].as_str().unwrap()).collect();
    assert_eq!(contents.len(), 2, "{b}");
    assert!(contents.contains(&"a") && contents.contains(&"d"), "{b}");
}
