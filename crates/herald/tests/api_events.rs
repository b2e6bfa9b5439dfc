//! Events over real HTTP: creation, permissions, every events.get filter, update, two-step
//! deletion, and durability across a `kill -9`.
mod common;

use std::collections::BTreeSet;

use common::{assert_error, Server};
use serde_json::{json, Value};

/// Percent-encode a query string value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn stream(server: &Server, token: &str, id: &str, parent: Option<&str>) {
    let (s, b) = server.post("/alice/streams", token, json!({"id": id, "name": id, "parentId": parent})).await;
    assert_eq!(s, 201, "{b}");
}

async fn create(server: &Server, token: &str, body: Value) -> Value {
    let (s, b) = server.post("/alice/events", token, body).await;
    assert_eq!(s, 201, "{b}");
    b["event"].clone()
}

async fn note(server: &Server, token: &str, streams: &[&str]) -> String {
    create(server, token, json!({"streamIds": streams, "type": "note/txt", "content": "x"})).await["id"].as_str().unwrap().to_string()
}

/// GET `/alice/events?{query}` and return the event ids, in order.
async fn ids(server: &Server, token: &str, query: &str) -> Vec<String> {
    let (s, b) = server.get(&format!("/alice/events?{query}"), token).await;
    assert_eq!(s, 200, "{query}: {b}");
    b["events"].as_array().unwrap_or_else(|| panic!("{b}")).iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

async fn id_set(server: &Server, token: &str, query: &str) -> BTreeSet<String> {
    ids(server, token, query).await.into_iter().collect()
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn server_time(server: &Server, token: &str) -> f64 {
    let (_, b) = server.get("/alice/access-info", token).await;
    b["meta"]["serverTime"].as_f64().unwrap()
}

#[tokio::test]
async fn create_events_with_any_content() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "diary", None).await;
    let (_, info) = server.get("/alice/access-info", &t).await;
    let personal_id = info["id"].as_str().unwrap().to_string();

    for content in [json!(42), json!(3.25), json!("some text"), json!({"a": 1, "b": [true, "x"]}), json!([1, "two", {"three": 3}])] {
        let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["diary"], "type": "note/txt", "content": content})).await;
        assert_eq!(s, 201, "{b}");
        let e = &b["event"];
        assert_eq!(e["content"], content, "{b}");
        assert!(e["id"].as_str().is_some_and(|i| !i.is_empty()), "{b}");
        assert_eq!(e["streamIds"], json!(["diary"]));
        assert_eq!(e["type"], "note/txt");
        // Default time: now.
        let now = b["meta"]["serverTime"].as_f64().unwrap();
        let time = e["time"].as_f64().unwrap();
        assert!((now - time).abs() < 5.0, "time {time} vs now {now}");
        assert_eq!(e["createdBy"], personal_id.as_str());
        assert_eq!(e["modifiedBy"], personal_id.as_str());
        assert!(e["created"].is_number() && e["modified"].is_number(), "{b}");
        assert!(e.get("trashed").is_none() || e["trashed"] == false, "{b}");
    }

    // No content, explicit time, id, description and clientData.
    let e = create(
        &server,
        &t,
        json!({"id": "my-event", "streamIds": ["diary"], "type": "mass/kg", "time": 1_000_000.5, "description": "d", "clientData": {"k": "v"}}),
    )
    .await;
    assert_eq!(e["id"], "my-event");
    assert_eq!(e["time"], json!(1_000_000.5));
    assert!(e.get("content").is_none(), "{e}");
    assert_eq!(e["description"], "d");
    assert_eq!(e["clientData"], json!({"k": "v"}));
    let (s, b) = server.post("/alice/events", &t, json!({"id": "my-event", "streamIds": ["diary"], "type": "mass/kg"})).await;
    assert_error(s, &b, 409, "item-already-exists");

    // Validation.
    for bad_type in ["Note/Txt", "notype", "note/", "/txt", "note/t t", ""] {
        let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["diary"], "type": bad_type})).await;
        assert_error(s, &b, 400, "invalid-parameters-format");
    }
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["diary"]})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &t, json!({"type": "note/txt"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": [], "type": "note/txt"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["diary"], "type": "note/txt", "time": "yesterday"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["diary"], "type": "note/txt", "color": "red"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["diary", "nope"], "type": "note/txt"})).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");

    // A running event.
    let e = create(&server, &t, json!({"streamIds": ["diary"], "type": "activity/plain", "duration": null})).await;
    assert_eq!(e["duration"], Value::Null, "{e}");
    assert!(e.as_object().unwrap().contains_key("duration"), "{e}");
    let e = create(&server, &t, json!({"streamIds": ["diary"], "type": "activity/plain", "duration": 60})).await;
    assert_eq!(e["duration"], json!(60.0), "{e}");
}

#[tokio::test]
async fn permissions_on_event_reading_and_writing() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "inbox", None).await;
    stream(&server, &t, "diary", None).await;
    let existing = note(&server, &t, &["inbox"]).await;
    let (_, writer) = server
        .access("alice", &t, json!({"name": "w", "type": "app", "permissions": [{"streamId": "inbox", "level": "create-only"}]}))
        .await;
    let (_, reader) =
        server.access("alice", &t, json!({"name": "r", "type": "app", "permissions": [{"streamId": "inbox", "level": "read"}]})).await;

    // create-only: creates, cannot read.
    let created = note(&server, &writer, &["inbox"]).await;
    let (s, b) = server.get("/alice/events?streams=inbox", &writer).await;
    assert_error(s, &b, 403, "forbidden");
    for id in [&created, &existing] {
        let (s, b) = server.get(&format!("/alice/events/{id}"), &writer).await;
        assert_error(s, &b, 403, "forbidden");
    }
    let (s, b) = server.get("/alice/events", &writer).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"], json!([]));
    // ... nor update or delete, nor create elsewhere.
    let (s, b) = server.put(&format!("/alice/events/{created}"), &writer, json!({"content": "y"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.delete(&format!("/alice/events/{created}"), &writer).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.post("/alice/events", &writer, json!({"streamIds": ["diary"], "type": "note/txt"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.post("/alice/events", &writer, json!({"streamIds": ["inbox", "diary"], "type": "note/txt"})).await;
    assert_error(s, &b, 403, "forbidden");

    // read: reads, cannot write.
    let (s, b) = server.post("/alice/events", &reader, json!({"streamIds": ["inbox"], "type": "note/txt"})).await;
    assert_error(s, &b, 403, "forbidden");
    assert_eq!(id_set(&server, &reader, "streams=inbox").await, set(&[&created, &existing]));
    let (s, b) = server.get(&format!("/alice/events/{created}"), &reader).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["id"], created.as_str());
    let (s, b) = server.put(&format!("/alice/events/{created}"), &reader, json!({"content": "y"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.delete(&format!("/alice/events/{created}"), &reader).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.get("/alice/events?streams=diary", &reader).await;
    assert_error(s, &b, 403, "forbidden");
}

#[tokio::test]
async fn events_get_by_streams() {
    let server = Server::start();
    let t = server.register("alice").await;
    for (id, parent) in [("a", None), ("a1", Some("a")), ("b", None), ("c", None)] {
        stream(&server, &t, id, parent).await;
    }
    let ea = note(&server, &t, &["a"]).await;
    let ea1 = note(&server, &t, &["a1"]).await;
    let eb = note(&server, &t, &["b"]).await;
    let eab = note(&server, &t, &["a", "b"]).await;
    let ec = note(&server, &t, &["c"]).await;

    // All, with no streams parameter.
    assert_eq!(id_set(&server, &t, "").await, set(&[&ea, &ea1, &eb, &eab, &ec]));
    // One stream includes its children.
    assert_eq!(id_set(&server, &t, "streams=a").await, set(&[&ea, &ea1, &eab]));
    assert_eq!(id_set(&server, &t, "streams=a1").await, set(&[&ea1]));
    // Repeated keys, and the `[]` form.
    assert_eq!(id_set(&server, &t, "streams=a1&streams=b").await, set(&[&ea1, &eb, &eab]));
    assert_eq!(id_set(&server, &t, "streams[]=c&streams[]=a1").await, set(&[&ec, &ea1]));
    // A JSON array of ids.
    assert_eq!(id_set(&server, &t, &format!("streams={}", enc(r#"["a1","c"]"#))).await, set(&[&ea1, &ec]));
    // A streams query with any / not / all.
    let q = enc(r#"[{"any":["a"],"not":["b"]}]"#);
    assert_eq!(id_set(&server, &t, &format!("streams={q}")).await, set(&[&ea, &ea1]));
    let q = enc(r#"{"all":["a","b"]}"#);
    assert_eq!(id_set(&server, &t, &format!("streams={q}")).await, set(&[&eab]));
    let q = enc(r#"[{"any":["a1"]},{"any":["c"]}]"#);
    assert_eq!(id_set(&server, &t, &format!("streams={q}")).await, set(&[&ea1, &ec]));
    let q = enc(r#"[{"any":["*"],"not":["a"]}]"#);
    assert_eq!(id_set(&server, &t, &format!("streams={q}")).await, set(&[&eb, &ec]));

    // Unknown streams and malformed queries.
    let (s, b) = server.get("/alice/events?streams=nope", &t).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
    let (s, b) = server.get(&format!("/alice/events?streams={}", enc(r#"[{"any":["nope"]}]"#)), &t).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
    let (s, b) = server.get(&format!("/alice/events?streams={}", enc(r#"[{"some":["a"]}]"#)), &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.get(&format!("/alice/events?streams={}", enc(r#"[{"any":["a"]"#)), &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
}

#[tokio::test]
async fn events_get_by_types_time_paging_and_order() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "s", None).await;
    let base = server_time(&server, &t).await - 10_000.0;
    let mut created = vec![];
    for (i, ty) in ["note/txt", "mass/kg", "mass/lb", "count/steps", "massive/kg"].iter().enumerate() {
        let e = create(&server, &t, json!({"streamIds": ["s"], "type": ty, "time": base + 10.0 * (i as f64 + 1.0)})).await;
        created.push(e["id"].as_str().unwrap().to_string());
    }
    let [n, kg, lb, steps, massive] = &created[..] else { unreachable!() };

    // Types: exact, several, and class/*.
    assert_eq!(ids(&server, &t, "types=note/txt").await, vec![n.clone()]);
    assert_eq!(id_set(&server, &t, "types=mass/kg&types=count/steps").await, set(&[kg, steps]));
    assert_eq!(id_set(&server, &t, &format!("types={}", enc("mass/*"))).await, set(&[kg, lb]));
    assert_eq!(id_set(&server, &t, &format!("types[]={}&types[]=note/txt", enc("mass/*"))).await, set(&[kg, lb, n]));
    assert_eq!(ids(&server, &t, "types=other/thing").await, Vec::<String>::new());
    let (s, b) = server.get("/alice/events?types=NotAType", &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");

    // Time range, inclusive.
    let range = |from: f64, to: f64| format!("fromTime={from}&toTime={to}");
    assert_eq!(id_set(&server, &t, &range(base + 15.0, base + 35.0)).await, set(&[lb, kg]));
    assert_eq!(id_set(&server, &t, &range(base + 10.0, base + 20.0)).await, set(&[n, kg]));
    assert_eq!(ids(&server, &t, &range(base + 41.0, base + 45.0)).await, Vec::<String>::new());
    // fromTime alone runs to now.
    assert_eq!(id_set(&server, &t, &format!("fromTime={}", base + 45.0)).await, set(&[massive]));
    // toTime alone covers the 24 hours before it.
    assert_eq!(id_set(&server, &t, &format!("toTime={}", base + 20.0)).await, set(&[n, kg]));
    assert_eq!(ids(&server, &t, &format!("toTime={}", base - 86_400.0 - 1.0)).await, Vec::<String>::new());

    // Newest first by default; sortAscending; limit and skip.
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(ids(&server, &t, "").await, newest_first);
    assert_eq!(ids(&server, &t, "sortAscending=true").await, created);
    assert_eq!(ids(&server, &t, "limit=2").await, newest_first[..2].to_vec());
    assert_eq!(ids(&server, &t, "limit=2&skip=1").await, newest_first[1..3].to_vec());
    assert_eq!(ids(&server, &t, "limit=2&skip=1&sortAscending=true").await, created[1..3].to_vec());
    assert_eq!(ids(&server, &t, "skip=4").await, newest_first[4..].to_vec());
    let (s, b) = server.get("/alice/events?limit=abc", &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.get("/alice/events?fromTime=soon", &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.get("/alice/events?unknownParam=1", &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
}

#[tokio::test]
async fn events_get_by_state_running_and_modification() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "s", None).await;
    let plain = note(&server, &t, &["s"]).await;
    let running = create(&server, &t, json!({"streamIds": ["s"], "type": "activity/plain", "duration": null})).await;
    assert_eq!(running["duration"], Value::Null);
    let running = running["id"].as_str().unwrap().to_string();
    let trashed = note(&server, &t, &["s"]).await;
    let doomed = note(&server, &t, &["s"]).await;
    let (s, b) = server.delete(&format!("/alice/events/{trashed}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["trashed"], true);

    assert_eq!(id_set(&server, &t, "").await, set(&[&plain, &running, &doomed]));
    assert_eq!(ids(&server, &t, "state=trashed").await, vec![trashed.clone()]);
    assert_eq!(id_set(&server, &t, "state=all").await, set(&[&plain, &running, &doomed, &trashed]));
    let (s, b) = server.get("/alice/events?state=gone", &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");

    let (s, b) = server.get("/alice/events?running=true", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["events"][0]["id"], running.as_str());
    assert_eq!(b["events"][0]["duration"], Value::Null);
    assert_eq!(id_set(&server, &t, "running=false").await, set(&[&plain, &doomed]));

    // modifiedSince, then includeDeletions after a two-step delete.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let since = server_time(&server, &t).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (s, b) = server.put(&format!("/alice/events/{plain}"), &t, json!({"content": "changed"})).await;
    assert_eq!(s, 200, "{b}");
    let after = note(&server, &t, &["s"]).await;
    assert_eq!(id_set(&server, &t, &format!("modifiedSince={since}")).await, set(&[&plain, &after]));

    let (s, _) = server.delete(&format!("/alice/events/{doomed}"), &t).await;
    assert_eq!(s, 200);
    let (s, b) = server.delete(&format!("/alice/events/{doomed}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["eventDeletion"]["id"], doomed.as_str());
    let (s, b) = server.get(&format!("/alice/events?modifiedSince={since}&includeDeletions=true"), &t).await;
    assert_eq!(s, 200, "{b}");
    let deletions: Vec<&str> = b["eventDeletions"].as_array().expect("eventDeletions").iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(deletions, vec![doomed.as_str()], "{b}");
    assert!(b["eventDeletions"][0]["deleted"].is_number(), "{b}");
    let listed: BTreeSet<String> = b["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, set(&[&plain, &after]));
    // Without modifiedSince there is no eventDeletions list.
    let (s, b) = server.get("/alice/events?includeDeletions=true", &t).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("eventDeletions").is_none(), "{b}");
}

#[tokio::test]
async fn events_get_defaults_to_twenty_events() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "s", None).await;
    let calls: Vec<Value> = (0..25)
        .map(|i| json!({"method": "events.create", "params": {"streamIds": ["s"], "type": "count/generic", "content": i}}))
        .collect();
    let (s, b) = server.post("/alice/", &t, Value::Array(calls)).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["results"].as_array().unwrap().iter().all(|r| r["event"]["id"].is_string()), "{b}");

    assert_eq!(ids(&server, &t, "").await.len(), 20);
    assert_eq!(ids(&server, &t, "streams=s").await.len(), 20);
    assert_eq!(ids(&server, &t, "modifiedSince=0").await.len(), 20);
    assert_eq!(ids(&server, &t, "limit=25").await.len(), 25);
    assert_eq!(ids(&server, &t, "limit=100").await.len(), 25);
    assert_eq!(ids(&server, &t, "fromTime=0").await.len(), 25);
}

#[tokio::test]
async fn get_one_update_and_delete() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "a", None).await;
    stream(&server, &t, "b", None).await;
    let e = create(&server, &t, json!({"streamIds": ["a"], "type": "note/txt", "content": "v1", "clientData": {"x": 1}})).await;
    let id = e["id"].as_str().unwrap().to_string();

    let (s, b) = server.get(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"], e);
    let (s, b) = server.get("/alice/events/no-such-event", &t).await;
    assert_error(s, &b, 404, "unknown-resource");

    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let (s, b) = server.put(&format!("/alice/events/{id}"), &t, json!({"content": {"v": 2}, "description": "d"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["content"], json!({"v": 2}));
    assert_eq!(b["event"]["description"], "d");
    assert_eq!(b["event"]["type"], "note/txt");
    assert_eq!(b["event"]["clientData"], json!({"x": 1}));
    assert_eq!(b["event"]["created"], e["created"]);
    assert!(b["event"]["modified"].as_f64().unwrap() > e["modified"].as_f64().unwrap(), "{b}");

    let (s, b) = server.put(&format!("/alice/events/{id}"), &t, json!({"streamIds": ["b", "a"], "type": "note/html"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["streamIds"], json!(["b", "a"]));
    assert_eq!(b["event"]["type"], "note/html");
    let (s, b) = server.get(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["content"], json!({"v": 2}));
    assert_eq!(b["event"]["streamIds"], json!(["b", "a"]));
    assert_eq!(ids(&server, &t, "streams=b").await, vec![id.clone()]);

    let (s, b) = server.put(&format!("/alice/events/{id}"), &t, json!({"streamIds": ["nope"]})).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
    for protected in [json!({"id": "other"}), json!({"created": 1}), json!({"createdBy": "me"}), json!({"modified": 1})] {
        let (s, b) = server.put(&format!("/alice/events/{id}"), &t, protected).await;
        assert_error(s, &b, 403, "forbidden");
    }
    let (s, b) = server.put(&format!("/alice/events/{id}"), &t, json!({"colour": "red"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.put(&format!("/alice/events/{id}"), &t, json!({"type": "BAD"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.put("/alice/events/no-such-event", &t, json!({"content": 1})).await;
    assert_error(s, &b, 404, "unknown-resource");
    // The failed updates changed nothing.
    let (_, b) = server.get(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(b["event"]["streamIds"], json!(["b", "a"]));
    assert_eq!(b["event"]["type"], "note/html");

    // Delete: trash, then delete for good.
    let (s, b) = server.delete(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["id"], id.as_str());
    assert_eq!(b["event"]["trashed"], true);
    let (s, b) = server.get(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["trashed"], true);
    let (s, b) = server.delete(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["eventDeletion"]["id"], id.as_str());
    assert!(b["eventDeletion"]["deleted"].is_number(), "{b}");
    let (s, b) = server.get(&format!("/alice/events/{id}"), &t).await;
    assert_error(s, &b, 404, "unknown-resource");
    let (s, b) = server.delete(&format!("/alice/events/{id}"), &t).await;
    assert_error(s, &b, 404, "unknown-resource");
    assert_eq!(ids(&server, &t, "state=all").await, Vec::<String>::new());
}

#[tokio::test]
async fn an_app_reading_a_parent_sees_only_its_events() {
    let server = Server::start();
    let t = server.register("alice").await;
    for (id, parent) in [("p", None), ("p1", Some("p")), ("p2", Some("p")), ("q", None)] {
        stream(&server, &t, id, parent).await;
    }
    let e_p = note(&server, &t, &["p"]).await;
    let e_p1 = note(&server, &t, &["p1"]).await;
    let e_p2 = note(&server, &t, &["p2"]).await;
    let e_q = note(&server, &t, &["q"]).await;
    let e_pq = note(&server, &t, &["p1", "q"]).await;
    let (_, app) =
        server.access("alice", &t, json!({"name": "r", "type": "app", "permissions": [{"streamId": "p", "level": "read"}]})).await;

    assert_eq!(id_set(&server, &app, "").await, set(&[&e_p, &e_p1, &e_p2, &e_pq]));
    assert_eq!(id_set(&server, &app, "streams=p1").await, set(&[&e_p1, &e_pq]));
    let (s, b) = server.get("/alice/events?streams=q", &app).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.get(&format!("/alice/events/{e_q}"), &app).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.get(&format!("/alice/events/{e_p2}"), &app).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["id"], e_p2.as_str());
    // The personal access sees everything.
    assert_eq!(id_set(&server, &t, "").await, set(&[&e_p, &e_p1, &e_p2, &e_q, &e_pq]));
}

#[tokio::test]
async fn events_survive_a_kill_9() {
    let mut server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "s", None).await;
    let e = create(&server, &t, json!({"streamIds": ["s"], "type": "note/txt", "content": {"keep": "me"}})).await;
    let id = e["id"].as_str().unwrap().to_string();
    let (s, b) = server.put(&format!("/alice/events/{id}"), &t, json!({"description": "updated"})).await;
    assert_eq!(s, 200, "{b}");

    server.kill9();
    server.restart();

    let (s, b) = server.get(&format!("/alice/events/{id}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["content"], json!({"keep": "me"}));
    assert_eq!(b["event"]["description"], "updated");
    assert_eq!(b["event"]["streamIds"], json!(["s"]));
    let (s, b) = server.get("/alice/streams", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["streams"][0]["id"], "s");
}
