//! Issue 10 over HTTP: attachments (multipart create and add, streamed download with
//! `readToken`, `events.deleteAttachment`, the multipart edge cases, the size limit, removal
//! with the event, `eventsChanged`), and `events.getOne` with `includeHistory`.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{assert_error, multipart_body, Part, Receiver, Server};
use serde_json::{json, Value};
use sha2::Digest as _;

const EVENT: &[u8] = br#"{"streamIds":["diary"],"type":"picture/attached","description":"hi"}"#;

async fn setup(s: &Server) -> (String, String) {
    let t = s.register("alice").await;
    let (st, b) = s.post("/alice/streams", &t, json!({"id": "diary", "name": "Diary"})).await;
    assert_eq!(st, 201, "{b}");
    let (_, app) = s
        .access("alice", &t, json!({"name": "writer", "type": "app", "permissions": [{"streamId": "diary", "level": "contribute"}]}))
        .await;
    (t, app)
}

async fn send(s: &Server, path: &str, token: &str, parts: &[Part<'_>]) -> (u16, Value) {
    let (ct, body) = multipart_body(parts);
    send_raw(s, path, token, &ct, body).await
}

async fn send_raw(s: &Server, path: &str, token: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let r = s.client.post(s.url(path)).header("content-type", ct).header("authorization", token).body(body).send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({st}): {text}")))
}

fn integrity(bytes: &[u8]) -> String {
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes)))
}

async fn download(s: &Server, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = s.client.get(s.url(path));
    if let Some(t) = token {
        r = r.header("authorization", t);
    }
    r.send().await.unwrap()
}

async fn attached_bytes(s: &Server, t: &str) -> u64 {
    let (_, b) = s.get("/alice/account", t).await;
    b["account"]["storageUsed"]["attachedFiles"].as_u64().unwrap()
}

#[tokio::test]
async fn create_read_add_and_delete_attachments() {
    let s = Server::start();
    let (t, app) = setup(&s).await;
    let hook = Receiver::start().await;
    let (st, b) = s.post("/alice/webhooks", &app, json!({"url": hook.url})).await;
    assert_eq!(st, 201, "{b}");

    let a_bytes = b"hello, world!".to_vec();
    let b_bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (st, b) = send(
        &s,
        "/alice/events",
        &app,
        &[
            ("event", None, None, EVENT.to_vec()),
            ("file", Some("a.txt"), Some("text/txt"), a_bytes.clone()),
            ("other", Some("pïc é.bin"), None, b_bytes.clone()),
        ],
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert!(b["meta"]["serverTime"].is_number());
    let e = &b["event"];
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["description"], "hi");
    let atts = e["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2);
    assert_eq!(atts[0]["fileName"], "a.txt");
    assert_eq!(atts[0]["type"], "text/txt", "the part's type verbatim");
    assert_eq!(atts[0]["size"], 13);
    assert_eq!(atts[0]["integrity"], integrity(&a_bytes));
    assert_eq!(atts[1]["fileName"], "pïc é.bin");
    assert_eq!(atts[1]["type"], "application/octet-stream");
    assert_eq!(atts[1]["size"], b_bytes.len());
    let mut keys: Vec<&str> = atts[0].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["fileName", "id", "integrity", "readToken", "size", "type"]);
    let file_a = atts[0]["id"].as_str().unwrap().to_string();
    let file_b = atts[1]["id"].as_str().unwrap().to_string();
    let rt_app = atts[0]["readToken"].as_str().unwrap().to_string();
    let app_id = b_access_id(&s, &app).await;
    assert!(rt_app.starts_with(&format!("{app_id}-")), "{rt_app}");
    // eventsChanged reached the webhook.
    let got = hook.wait_for(1, Duration::from_secs(10)).await;
    assert!(got.iter().any(|r| r.messages().contains(&"eventsChanged".to_string())), "{got:?}");

    // Download: with the header, with the readToken, with a file name after the id.
    for (path, token) in [
        (format!("/alice/events/{id}/{file_a}"), Some(app.as_str())),
        (format!("/alice/events/{id}/{file_a}?readToken={rt_app}"), None),
        (format!("/alice/events/{id}/{file_a}/a.txt?readToken={rt_app}"), None),
    ] {
        let r = download(&s, &path, token).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/txt");
        assert_eq!(h["content-length"], "13");
        assert_eq!(h["content-disposition"], "attachment; filename*=UTF-8''a%2Etxt");
        assert_eq!(h["digest"].to_str().unwrap(), integrity(&a_bytes).replace("sha256-", "SHA-256="));
        assert_eq!(h["pryv-access-id"].to_str().unwrap(), app_id);
        assert_eq!(r.bytes().await.unwrap().as_ref(), a_bytes.as_slice());
    }
    let r = download(&s, &format!("/alice/events/{id}/{file_b}"), Some(&t)).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b_bytes.as_slice());

    // Read tokens are per access; events.get and getOne carry them.
    let (_, got) = s.get(&format!("/alice/events/{id}"), &t).await;
    let rt_personal = got["event"]["attachments"][0]["readToken"].as_str().unwrap().to_string();
    assert_ne!(rt_personal, rt_app);
    let (_, list) = s.get("/alice/events", &app).await;
    assert_eq!(list["events"][0]["attachments"][0]["readToken"], rt_app.as_str());
    assert_eq!(attached_bytes(&s, &t).await, 13 + b_bytes.len() as u64);

    // Wrong read tokens, `?auth=`, no auth at all.
    let other_file_token = atts[1]["readToken"].as_str().unwrap();
    for q in [format!("readToken={other_file_token}"), "readToken=nodash".into(), format!("readToken={app_id}-AAAA"), format!("auth={app}")]
    {
        let r = download(&s, &format!("/alice/events/{id}/{file_a}?{q}"), None).await;
        assert_eq!(r.status().as_u16(), 401, "{q}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["id"], "invalid-access-token", "{q}: {b}");
    }
    let r = download(&s, &format!("/alice/events/{id}/{file_a}"), None).await;
    assert_eq!(r.status().as_u16(), 401);
    let r = download(&s, &format!("/alice/events/{id}/nosuchfile"), Some(&t)).await;
    assert_eq!(r.status().as_u16(), 404);
    let r = download(&s, &format!("/alice/events/nosuchevent/{file_a}"), Some(&t)).await;
    assert_eq!(r.status().as_u16(), 404);
    // An access that cannot read the stream: 403.
    let (st, b) = s.post("/alice/streams", &t, json!({"id": "other", "name": "Other"})).await;
    assert_eq!(st, 201, "{b}");
    let (_, outsider) =
        s.access("alice", &t, json!({"name": "outsider", "type": "app", "permissions": [{"streamId": "other", "level": "read"}]})).await;
    let r = download(&s, &format!("/alice/events/{id}/{file_a}"), Some(&outsider)).await;
    assert_eq!(r.status().as_u16(), 403);

    // Add a file to the event; a read-only access may not (nothing is stored).
    let (_, reader) =
        s.access("alice", &t, json!({"name": "reader", "type": "app", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    let before = attached_bytes(&s, &t).await;
    let (st, b) = send(&s, &format!("/alice/events/{id}"), &reader, &[("file", Some("c.txt"), Some("text/plain"), b"ccc".to_vec())]).await;
    assert_error(st, &b, 403, "forbidden");
    assert_eq!(attached_bytes(&s, &t).await, before);
    let (st, b) = send(
        &s,
        &format!("/alice/events/{id}"),
        &app,
        &[("event", None, None, br#"{"description":"ignored"}"#.to_vec()), ("file", Some("c.txt"), Some("text/plain"), b"ccc".to_vec())],
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["event"]["attachments"].as_array().unwrap().len(), 3);
    assert_eq!(b["event"]["description"], "hi", "non-file parts are ignored when adding files");
    assert!(b["event"]["modified"].as_f64().unwrap() >= e["modified"].as_f64().unwrap());
    // A JSON POST to the same route changes nothing.
    let (st, b) = s.post(&format!("/alice/events/{id}"), &app, json!({})).await;
    assert_eq!((st, b["event"]["attachments"].as_array().unwrap().len()), (200, 3), "{b}");

    // Attachments are not set through JSON.
    let (st, b) = s.post("/alice/events", &app, json!({"streamIds": ["diary"], "type": "note/txt", "attachments": []})).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let (st, b) = s.put(&format!("/alice/events/{id}"), &app, json!({"attachments": []})).await;
    assert_error(st, &b, 403, "forbidden");

    // deleteAttachment: rights, success, then unknown.
    let (st, b) = s.delete(&format!("/alice/events/{id}/{file_a}"), &reader).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = s.delete(&format!("/alice/events/{id}/{file_a}"), &app).await;
    assert_eq!(st, 200, "{b}");
    let left: Vec<&str> = b["event"]["attachments"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert!(!left.contains(&file_a.as_str()) && left.len() == 2, "{b}");
    assert!(b["event"]["attachments"][0]["readToken"].is_string());
    let (st, b) = s.delete(&format!("/alice/events/{id}/{file_a}"), &app).await;
    assert_error(st, &b, 404, "unknown-resource");
    let r = download(&s, &format!("/alice/events/{id}/{file_a}?readToken={rt_app}"), None).await;
    assert_eq!(r.status().as_u16(), 404);
    // In a batch call too.
    let (_, b) = s.post("/alice/", &app, json!([{"method": "events.deleteAttachment", "params": {"id": id, "fileId": "nope"}}])).await;
    assert_eq!(b["results"][0]["error"]["id"], "unknown-resource", "{b}");

    // A deleted access's read token: 401, not 500.
    let (_, b) = s.get(&format!("/alice/events/{id}"), &reader).await;
    let rt_reader = b["event"]["attachments"][0]["readToken"].as_str().unwrap().to_string();
    let first_left = b["event"]["attachments"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(download(&s, &format!("/alice/events/{id}/{first_left}?readToken={rt_reader}"), None).await.status().as_u16(), 200);
    let reader_id = b_access_id(&s, &reader).await;
    assert_eq!(s.delete(&format!("/alice/accesses/{reader_id}"), &t).await.0, 200);
    assert_eq!(download(&s, &format!("/alice/events/{id}/{first_left}?readToken={rt_reader}"), None).await.status().as_u16(), 401);

    // Files go with their event.
    assert_eq!(s.delete(&format!("/alice/events/{id}"), &app).await.0, 200);
    assert_eq!(s.delete(&format!("/alice/events/{id}"), &app).await.0, 200);
    assert_eq!(attached_bytes(&s, &t).await, 0);
    assert_eq!(download(&s, &format!("/alice/events/{id}/{first_left}"), Some(&t)).await.status().as_u16(), 404);
    if !s.on_postgres() {
        assert_eq!(files_on_disk(&s), 0, "no file left in the data dir");
    }
}

fn files_on_disk(s: &Server) -> usize {
    let root = s.data_dir().join("attachments");
    let Ok(users) = std::fs::read_dir(root) else { return 0 };
    users.flatten().map(|u| std::fs::read_dir(u.path()).map(|d| d.count()).unwrap_or(0)).sum()
}

async fn b_access_id(s: &Server, token: &str) -> String {
    let (_, b) = s.get("/alice/access-info", token).await;
    b["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn multipart_edge_cases() {
    let s = Server::start_with(&[("HERALD_ATTACHMENTS_MAX_BYTES", "1000"), ("HERALD_BODY_LIMIT", "5000")]);
    let (t, app) = setup(&s).await;

    // No event part: the params are empty.
    let (st, b) = send(&s, "/alice/events", &app, &[("file", Some("a.txt"), None, b"abc".to_vec())]).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    // Two non-file parts; a non-JSON one.
    let (st, b) = send(&s, "/alice/events", &app, &[("event", None, None, EVENT.to_vec()), ("more", None, None, b"{}".to_vec())]).await;
    assert_error(st, &b, 400, "invalid-request-structure");
    let (st, b) = send(&s, "/alice/events", &app, &[("event", None, None, b"not json".to_vec())]).await;
    assert_error(st, &b, 400, "invalid-request-structure");
    // A truncated body: the closing boundary never comes.
    let (ct, mut body) = multipart_body(&[("event", None, None, EVENT.to_vec()), ("file", Some("a.txt"), None, vec![b'x'; 500])]);
    body.truncate(body.len() - 120);
    let (st, b) = send_raw(&s, "/alice/events", &app, &ct, body).await;
    assert_error(st, &b, 400, "invalid-request-structure");
    // A boundary that is not the body's.
    let (_, body) = multipart_body(&[("event", None, None, EVENT.to_vec())]);
    let (st, b) = send_raw(&s, "/alice/events", &app, "multipart/form-data; boundary=other", body).await;
    assert_error(st, &b, 400, "invalid-request-structure");
    // An oversized file: 413 with the limit, nothing stored (the first, small file neither).
    let (st, b) = send(
        &s,
        "/alice/events",
        &app,
        &[
            ("event", None, None, EVENT.to_vec()),
            ("small", Some("s.txt"), None, vec![1; 10]),
            ("big", Some("big.bin"), None, vec![7; 1001]),
        ],
    )
    .await;
    assert_error(st, &b, 413, "invalid-request-structure");
    assert_eq!(b["error"]["data"]["max"], 1000);
    assert!(b["error"]["message"].as_str().unwrap().contains("HERALD_ATTACHMENTS_MAX_BYTES"), "{b}");
    // A file name with path separators keeps its last segment; one with none usable is refused.
    let (st, b) = send(
        &s,
        "/alice/events",
        &app,
        &[
            ("event", None, None, EVENT.to_vec()),
            ("f", Some("../../etc/a.txt"), None, b"1".to_vec()),
            ("g", Some("c:\\x\\b.txt"), None, b"2".to_vec()),
        ],
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["event"]["attachments"][0]["fileName"], "a.txt");
    assert_eq!(b["event"]["attachments"][1]["fileName"], "b.txt");
    let (st, b) = send(&s, "/alice/events", &app, &[("event", None, None, EVENT.to_vec()), ("f", Some("a/.."), None, b"1".to_vec())]).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    // A file into a stream the access cannot write: forbidden, its bytes removed.
    let (st, b) = send(
        &s,
        "/alice/events",
        &app,
        &[("f", Some("x.txt"), None, vec![5; 100]), ("event", None, None, br#"{"streamIds":["nope"],"type":"note/txt"}"#.to_vec())],
    )
    .await;
    assert!(st == 400 || st == 403, "{st} {b}");
    // Files are not bound by the JSON body limit (5000 here), only by their own.
    let events = s.get("/alice/events?state=all", &t).await.1["events"].as_array().unwrap().len();
    assert_eq!(events, 1, "only the event with clean names was created");
    assert_eq!(attached_bytes(&s, &t).await, 2);
    if !s.on_postgres() {
        assert_eq!(files_on_disk(&s), 2, "refused uploads leave no file");
    }
}

#[tokio::test]
async fn large_files_stream_through() {
    // 3 MB through a server whose JSON body limit is 64 KiB.
    let s = Server::start_with(&[("HERALD_BODY_LIMIT", "65536")]);
    let (t, app) = setup(&s).await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (st, b) =
        send(&s, "/alice/events", &app, &[("file", Some("big.bin"), None, big.clone()), ("event", None, None, EVENT.to_vec())]).await;
    assert_eq!(st, 201, "{b}");
    let a = &b["event"]["attachments"][0];
    assert_eq!((a["size"].as_u64(), a["integrity"].as_str()), (Some(big.len() as u64), Some(integrity(&big).as_str())));
    let path = format!(
        "/alice/events/{}/{}?readToken={}",
        b["event"]["id"].as_str().unwrap(),
        a["id"].as_str().unwrap(),
        a["readToken"].as_str().unwrap()
    );
    let r = download(&s, &path, None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
    assert_eq!(attached_bytes(&s, &t).await, big.len() as u64);
}

#[tokio::test]
async fn history_is_kept_when_the_setting_says_so() {
    let s = Server::start_with(&[("HERALD_VERSIONING_FORCE_KEEP_HISTORY", "true")]);
    let (t, _) = setup(&s).await;
    let (_, b) = s.post("/alice/events", &t, json!({"streamIds": ["diary"], "type": "note/txt", "content": "v1"})).await;
    let id = b["event"]["id"].as_str().unwrap().to_string();
    s.put(&format!("/alice/events/{id}"), &t, json!({"content": "v2"})).await;
    s.put(&format!("/alice/events/{id}"), &t, json!({"content": "v3"})).await;
    let (st, b) = s.get(&format!("/alice/events/{id}?includeHistory=true"), &t).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["event"]["content"], "v3");
    let h = b["history"].as_array().unwrap();
    assert_eq!(h.iter().map(|v| v["content"].as_str().unwrap()).collect::<Vec<_>>(), ["v1", "v2"]);
    assert!(h.iter().all(|v| v["id"] == id.as_str()), "versions carry the event's id");
    let (_, b) = s.get(&format!("/alice/events/{id}"), &t).await;
    assert!(b.get("history").is_none());
    let (_, b) = s.post("/alice/", &t, json!([{"method": "events.getOne", "params": {"id": id, "includeHistory": true}}])).await;
    assert_eq!(b["results"][0]["history"].as_array().unwrap().len(), 2, "{b}");
    let (st, b) = s.get(&format!("/alice/events/{id}?includeHistory=maybe"), &t).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
}

#[tokio::test]
async fn no_history_by_default() {
    let s = Server::start();
    let (t, _) = setup(&s).await;
    let (_, b) = s.post("/alice/events", &t, json!({"streamIds": ["diary"], "type": "note/txt", "content": "v1"})).await;
    let id = b["event"]["id"].as_str().unwrap().to_string();
    s.put(&format!("/alice/events/{id}"), &t, json!({"content": "v2"})).await;
    let (st, b) = s.get(&format!("/alice/events/{id}?includeHistory=true"), &t).await;
    assert_eq!((st, &b["history"]), (200, &json!([])), "{b}");
}
