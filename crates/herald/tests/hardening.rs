//! Hardening (issue 13): documented limits answer a clear 4xx, unexpected errors hide their
//! detail, the HTTP layer answers in Pryv's envelope, parameters are type-checked, slow clients
//! are cut off. Limits are in docs/limits.md.
mod common;

use std::time::Duration;

use common::{assert_error, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send raw bytes on a new connection and read the whole answer (the connection is closed
/// after it: `Connection: close` is in every request written here, or the server closes).
async fn raw_tcp(server: &Server, request: &[u8]) -> String {
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// (status, JSON body) of a raw HTTP/1.1 answer.
fn parse_answer(text: &str) -> (u16, Value) {
    let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, v)
}

async fn setup(server: &Server) -> String {
    let token = server.register("alice").await;
    let (s, b) = server.post("/alice/streams", &token, json!({"id": "diary", "name": "Diary"})).await;
    assert_eq!(s, 201, "{b}");
    token
}

#[tokio::test]
async fn query_sizes_answer_400_not_500() {
    let server = Server::start();
    let token = setup(&server).await;
    // ~1,000 types: a 400 naming `types`, not the database's expression-depth error.
    let types: Vec<Value> = (0..1000).map(|i| json!(format!("note/t{i}"))).collect();
    let (s, b) = server.post("/alice", &token, json!([{"method": "events.get", "params": {"types": types}}])).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"][0]["error"]["id"], "invalid-parameters-format", "{b}");
    assert_eq!(b["results"][0]["error"]["data"][0]["param"], "types");
    // 100 types pass.
    let types: Vec<Value> = (0..100).map(|i| json!(format!("note/t{i}"))).collect();
    let (s, b) = server.post("/alice", &token, json!([{"method": "events.get", "params": {"types": types}}])).await;
    assert_eq!(s, 200);
    assert!(b["results"][0]["events"].is_array(), "{b}");
    // A streams query naming 40,000 distinct ids: 400, the answer small.
    let many: Vec<Value> = (0..40_000).map(|i| json!(format!("s{i}"))).collect();
    let (s, b) = server.post("/alice", &token, json!([{"method": "events.get", "params": {"streams": many}}])).await;
    assert_eq!(s, 200);
    assert_eq!(b["results"][0]["error"]["id"], "invalid-parameters-format", "{b}");
    assert!(b.to_string().len() < 2000);
    // A long `not` list too.
    let not: Vec<Value> = (0..5_000).map(|i| json!(format!("n{i}"))).collect();
    let (s, b) =
        server.post("/alice", &token, json!([{"method": "events.get", "params": {"streams": [{"any": ["diary"], "not": not}]}}])).await;
    assert_eq!(s, 200);
    assert_eq!(b["results"][0]["error"]["id"], "invalid-parameters-format", "{b}");
    // The same id repeated 40,000 times is one id.
    let same: Vec<Value> = (0..40_000).map(|_| json!("diary")).collect();
    let (s, b) = server.post("/alice", &token, json!([{"method": "events.get", "params": {"streams": same}}])).await;
    assert_eq!(s, 200);
    assert!(b["results"][0]["events"].is_array(), "{b}");
    // Over HTTP GET too.
    let q: String = (0..150).map(|i| format!("types[]=note/t{i}&")).collect();
    let (s, b) = server.get(&format!("/alice/events?{q}"), &token).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
}

#[tokio::test]
async fn batch_length_is_bounded() {
    let server = Server::start();
    let token = setup(&server).await;
    let calls: Vec<Value> = (0..1001).map(|_| json!({"method": "getAccessInfo", "params": {}})).collect();
    let (s, b) = server.post("/alice", &token, json!(calls)).await;
    assert_error(s, &b, 413, "invalid-request-structure");
    let (s, b) = server.post("/alice", &token, json!([{"method": "events.get", "params": 5}])).await;
    assert_eq!(s, 200);
    assert_eq!(b["results"][0]["error"]["id"], "invalid-request-structure", "{b}");
}

#[tokio::test]
async fn http_layer_errors_are_pryv_envelopes() {
    let server = Server::start_with(&[("HERALD_MAX_HEADERS", "20"), ("HERALD_MAX_URI_LENGTH", "2048")]);
    let token = setup(&server).await;
    // URI too long.
    let long = format!("GET /alice/events?x={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(3000));
    let (s, b) = parse_answer(&raw_tcp(&server, long.as_bytes()).await);
    assert_error(s, &b, 414, "invalid-request-structure");
    // Too many headers (above ours, below the parser's).
    let mut req = String::from("GET /alice/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..30 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let (s, b) = parse_answer(&raw_tcp(&server, req.as_bytes()).await);
    assert_error(s, &b, 431, "invalid-request-structure");
    // Too large headers.
    let req = format!("GET /alice/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
    let (s, b) = parse_answer(&raw_tcp(&server, req.as_bytes()).await);
    assert_error(s, &b, 431, "invalid-request-structure");
    // Past the HTTP parser's own limits and outside HTTP/1.1's grammar: hyper answers these
    // before the router sees them; they carry the envelope too.
    let huge = format!("GET /alice/events HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(600 * 1024));
    let (s, b) = parse_answer(&raw_tcp(&server, huge.as_bytes()).await);
    assert_error(s, &b, 431, "invalid-request-structure");
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /alice/events HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /alice/events HTTP/1.1\r\nBad Header Name: v\r\n\r\n",
        b"GET /alice/ev\x01ents HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let answer = raw_tcp(&server, garbage).await;
        let (s, b) = parse_answer(&answer);
        assert_error(s, &b, 400, "invalid-request-structure");
        assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{answer}");
    }
    // Malformed JSON, wrong content type with a bad body, unknown route, unknown method.
    let bad = "POST /alice/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n{oops";
    let (s, b) = parse_answer(&raw_tcp(&server, bad.as_bytes()).await);
    assert_error(s, &b, 400, "invalid-request-structure");
    let (s, b) = server.req("GET", "/alice/nothing/here", Some(&token), None).await;
    assert_error(s, &b, 404, "unknown-resource");
    let (s, b) = server.req("PATCH", "/alice/events", Some(&token), None).await;
    assert_error(s, &b, 404, "unknown-resource");
    // HEAD wherever GET works: same status and headers, no body.
    for path in ["/alice/events", "/service/info", "/alice/access-info", "/alice/streams"] {
        let get = server.client.get(server.url(path)).header("Authorization", &token).send().await.unwrap();
        let head = server.client.head(server.url(path)).header("Authorization", &token).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "{path}");
        assert_eq!(head.headers().get("content-type"), get.headers().get("content-type"));
        assert!(head.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn parameter_types_are_checked() {
    let server = Server::start();
    let token = setup(&server).await;
    let (s, b) = server.post("/alice/events", &token, json!({"streamIds": ["diary"], "type": "note/txt", "trashed": "x"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &token, json!({"streamIds": ["diary"], "type": "note/txt", "tags": "x"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &token, json!({"streamIds": ["diary"], "type": "note/txt", "tags": ["a"]})).await;
    assert_eq!(s, 201, "{b}");
    let perms = json!([{"streamId": "diary", "level": "read"}]);
    let (s, b) = server.post("/alice/accesses", &token, json!({"name": "a", "permissions": perms, "clientData": "x"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let perms2 = json!([{"streamId": "diary", "level": "read"}, {"feature": "selfRevoke", "setting": "whatever"}]);
    let (s, b) = server.post("/alice/accesses", &token, json!({"name": "b", "permissions": perms2})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let perms3 = json!([{"streamId": "diary", "level": "read"}, {"feature": "selfRevoke", "setting": "forbidden"}]);
    let (s, b) = server.post("/alice/accesses", &token, json!({"name": "c", "permissions": perms3})).await;
    assert_eq!(s, 201, "{b}");
    let (_, app) = server
        .access("alice", &token, json!({"name": "hooks", "type": "app", "permissions": [{"streamId": "diary", "level": "read"}]}))
        .await;
    let token = app;
    for url in ["http:///x", "http://exa\nmple.com/", "http://u:p@example.com/"] {
        let (s, b) = server.post("/alice/webhooks", &token, json!({"url": url})).await;
        assert_error(s, &b, 400, "invalid-parameters-format");
    }
    let (s, b) = server.post("/alice/webhooks", &token, json!({"url": "http://127.0.0.1:9/x"})).await;
    assert_eq!(s, 201, "{b}");
    let id = b["webhook"]["id"].as_str().unwrap().to_string();
    let r = server
        .client
        .post(server.url(&format!("/alice/webhooks/{id}/test")))
        .header("Authorization", &token)
        .header("Content-Type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let b: Value = r.json().await.unwrap();
    assert_error(status, &b, 400, "invalid-request-structure");
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let server = Server::start_with(&[("HERALD_BODY_READ_TIMEOUT_MS", "300"), ("HERALD_HEADER_READ_TIMEOUT_MS", "500")]);
    let token = setup(&server).await;
    // A body announced and never sent: 408 in Pryv's envelope.
    let req = format!(
        "POST /alice/events HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{"
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await.expect("answered").unwrap();
    let (st, b) = parse_answer(&String::from_utf8_lossy(&buf[..n]));
    assert_error(st, &b, 408, "invalid-request-structure");
    // Headers that never end: the server closes the connection.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /alice/events HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the server must close a connection whose headers never end");
    // An idle keep-alive connection is closed too.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /service/info HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut all)).await;
    assert!(r.is_ok(), "an idle connection must be closed");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_are_bounded() {
    let server = Server::start_with(&[("HERALD_MAX_CONNECTIONS", "1"), ("HERALD_HEADER_READ_TIMEOUT_MS", "60000")]);
    let addr = server.base.trim_start_matches("http://").to_string();
    // One connection held open takes the only place; a second is not served meanwhile.
    let held = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_millis(700)).build().unwrap();
    assert!(client.get(server.url("/service/info")).send().await.is_err(), "served past max_connections");
    drop(held);
    let r = reqwest::Client::new().get(server.url("/service/info")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// U+0000 in a path, a query, a token or a body is refused alike on every store (PostgreSQL
/// cannot keep it in text), and changes nothing.
#[tokio::test]
async fn the_nul_character_is_refused_everywhere() {
    let s = Server::start();
    let token = s.register("nuluser").await;
    for (method, path, body) in [
        ("GET", "/%00%00/access-info".to_string(), None),
        ("GET", "/nuluser/events?types=a%00b".to_string(), None),
        ("GET", "/nuluser/events?auth=x%00y".to_string(), None),
        ("POST", "/nuluser/streams".to_string(), Some(serde_json::json!({"id": "a\u{0}b", "name": "x"}))),
        (
            "POST",
            "/users".to_string(),
            Some(serde_json::json!({"appId": "herald-tests", "username": "nuluser2", "password": "secret-pw", "email": "a\u{0}@b.c"})),
        ),
    ] {
        let (st, b) = s.req(method, &path, Some(&token), body).await;
        common::assert_error(st, &b, 400, "invalid-parameters-format");
    }
    let (st, b) = s.get("/nuluser/streams", &token).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["streams"].as_array().unwrap().len(), 0, "{b}");
}
