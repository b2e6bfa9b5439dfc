//! Streams over real HTTP: creation rules, the tree, permissions, update and two-step deletion.
mod common;

use common::{assert_error, Server};
use serde_json::{json, Value};

async fn stream(server: &Server, token: &str, id: &str, parent: Option<&str>) {
    let (s, b) = server.post("/alice/streams", token, json!({"id": id, "name": id, "parentId": parent})).await;
    assert_eq!(s, 201, "{b}");
}

async fn event(server: &Server, token: &str, streams: &[&str]) -> String {
    let (s, b) = server.post("/alice/events", token, json!({"streamIds": streams, "type": "note/txt", "content": "x"})).await;
    assert_eq!(s, 201, "{b}");
    b["event"]["id"].as_str().unwrap().to_string()
}

/// Find a stream by id anywhere in a tree.
fn find<'a>(tree: &'a Value, id: &str) -> Option<&'a Value> {
    tree.as_array()?.iter().find_map(|s| if s["id"] == id { Some(s) } else { find(&s["children"], id) })
}

fn top_ids(tree: &Value) -> Vec<String> {
    let mut v: Vec<String> = tree.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn create_streams_and_their_errors() {
    let server = Server::start();
    let t = server.register("alice").await;

    let (s, b) = server.post("/alice/streams", &t, json!({"name": "My Diary"})).await;
    assert_eq!(s, 201, "{b}");
    let st = &b["stream"];
    assert_eq!(st["id"], "my-diary");
    assert_eq!(st["name"], "My Diary");
    assert_eq!(st["parentId"], Value::Null);
    assert_eq!(st["children"], json!([]));
    assert!(st["created"].is_number() && st["createdBy"].is_string() && st["modified"].is_number(), "{st}");

    let (s, b) = server.post("/alice/streams", &t, json!({"name": "Notes", "parentId": "my-diary"})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["stream"]["id"], "notes");
    assert_eq!(b["stream"]["parentId"], "my-diary");

    let (s, b) = server.post("/alice/streams", &t, json!({"id": "custom_id-1", "name": "Custom", "clientData": {"k": 1}})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["stream"]["id"], "custom_id-1");
    assert_eq!(b["stream"]["clientData"], json!({"k": 1}));

    // Same id anywhere.
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "notes", "name": "Other name"})).await;
    assert_error(s, &b, 409, "item-already-exists");
    // Same name among siblings; a same name elsewhere is fine.
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "notes-2", "name": "Notes", "parentId": "my-diary"})).await;
    assert_error(s, &b, 409, "item-already-exists");
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "root-notes", "name": "Notes"})).await;
    assert_eq!(s, 201, "{b}");
    // Unknown parent, invalid id, missing name.
    let (s, b) = server.post("/alice/streams", &t, json!({"name": "Orphan", "parentId": "nope"})).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "bad id!", "name": "Bad"})).await;
    assert_error(s, &b, 400, "invalid-item-id");
    let (s, b) = server.post("/alice/streams", &t, json!({"id": "no-name"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.post("/alice/streams", &t, json!({"name": "X", "nonsense": true})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");

    let (s, b) = server.get("/alice/streams", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["custom_id-1", "my-diary", "root-notes"]);
    assert_eq!(find(&b["streams"], "my-diary").unwrap()["children"][0]["id"], "notes");
}

#[tokio::test]
async fn creating_streams_needs_manage_on_the_parent() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "work", None).await;
    let (_, manager) =
        server.access("alice", &t, json!({"name": "m", "type": "app", "permissions": [{"streamId": "work", "level": "manage"}]})).await;
    let (_, contributor) =
        server.access("alice", &t, json!({"name": "c", "type": "app", "permissions": [{"streamId": "work", "level": "contribute"}]})).await;

    let (s, b) = server.post("/alice/streams", &manager, json!({"id": "projects", "name": "Projects", "parentId": "work"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = server.post("/alice/streams", &manager, json!({"id": "deep", "name": "Deep", "parentId": "projects"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = server.post("/alice/streams", &manager, json!({"id": "toplevel", "name": "Top"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.post("/alice/streams", &contributor, json!({"id": "sub", "name": "Sub", "parentId": "work"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.post("/alice/streams", &contributor, json!({"id": "root2", "name": "Root 2"})).await;
    assert_error(s, &b, 403, "forbidden");

    // The manager may rename and delete below its stream; the contributor may not.
    let (s, b) = server.put("/alice/streams/projects", &contributor, json!({"name": "Renamed"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.put("/alice/streams/projects", &manager, json!({"name": "Renamed"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stream"]["name"], "Renamed");
    let (s, b) = server.delete("/alice/streams/deep", &contributor).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.delete("/alice/streams/deep", &manager).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stream"]["trashed"], true);
    // Moving out from under its permission needs manage on the new parent.
    let (s, b) = server.put("/alice/streams/projects", &manager, json!({"parentId": null})).await;
    assert_error(s, &b, 403, "forbidden");
}

#[tokio::test]
async fn streams_get_returns_the_readable_tree() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "a", None).await;
    stream(&server, &t, "a1", Some("a")).await;
    stream(&server, &t, "a2", Some("a")).await;
    stream(&server, &t, "a11", Some("a1")).await;
    stream(&server, &t, "b", None).await;

    let (s, b) = server.get("/alice/streams", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["a", "b"]);
    let a = find(&b["streams"], "a").unwrap();
    assert_eq!(top_ids(&a["children"]), vec!["a1", "a2"]);
    let a1 = find(&b["streams"], "a1").unwrap();
    assert_eq!(a1["parentId"], "a");
    assert_eq!(top_ids(&a1["children"]), vec!["a11"]);
    assert_eq!(find(&b["streams"], "a11").unwrap()["children"], json!([]));
    assert_eq!(find(&b["streams"], "b").unwrap()["children"], json!([]));

    let (s, b) = server.req("GET", "/alice/streams?parentId=a", Some(&t), None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["a1", "a2"]);
    let (s, b) = server.req("GET", "/alice/streams?parentId=nope", Some(&t), None).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");

    // An app with read on a1 sees a1 and its subtree only.
    let (_, app) =
        server.access("alice", &t, json!({"name": "r", "type": "app", "permissions": [{"streamId": "a1", "level": "read"}]})).await;
    let (s, b) = server.get("/alice/streams", &app).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["a1"]);
    assert_eq!(top_ids(&b["streams"][0]["children"]), vec!["a11"]);
    assert!(find(&b["streams"], "b").is_none() && find(&b["streams"], "a2").is_none(), "{b}");
    let (s, b) = server.req("GET", "/alice/streams?parentId=b", Some(&app), None).await;
    assert_error(s, &b, 403, "forbidden");

    // A create-only permission does not show the stream.
    let (_, co) =
        server.access("alice", &t, json!({"name": "co", "type": "app", "permissions": [{"streamId": "b", "level": "create-only"}]})).await;
    let (s, b) = server.get("/alice/streams", &co).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["streams"], json!([]));
}

#[tokio::test]
async fn update_renames_and_moves_with_checks() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "a", None).await;
    stream(&server, &t, "a1", Some("a")).await;
    stream(&server, &t, "a11", Some("a1")).await;
    stream(&server, &t, "b", None).await;

    let (s, b) = server.put("/alice/streams/a1", &t, json!({"name": "First child", "clientData": {"color": "red"}})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stream"]["name"], "First child");
    assert_eq!(b["stream"]["clientData"], json!({"color": "red"}));
    assert_eq!(b["stream"]["parentId"], "a");

    // Move a1 (with its child) under b.
    let (s, b) = server.put("/alice/streams/a1", &t, json!({"parentId": "b"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stream"]["parentId"], "b");
    let (s, tree) = server.get("/alice/streams", &t).await;
    assert_eq!(s, 200, "{tree}");
    assert_eq!(find(&tree["streams"], "a").unwrap()["children"], json!([]));
    let moved = find(&find(&tree["streams"], "b").unwrap()["children"], "a1").expect("a1 under b");
    assert_eq!(moved["children"][0]["id"], "a11");

    // Move to the root.
    let (s, b) = server.put("/alice/streams/a11", &t, json!({"parentId": null})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stream"]["parentId"], Value::Null);
    let (s, b) = server.put("/alice/streams/a11", &t, json!({"parentId": "a1"})).await;
    assert_eq!(s, 200, "{b}");

    // Under itself or its own descendant.
    let (s, b) = server.put("/alice/streams/b", &t, json!({"parentId": "a11"})).await;
    assert_error(s, &b, 400, "invalid-operation");
    let (s, b) = server.put("/alice/streams/b", &t, json!({"parentId": "b"})).await;
    assert_error(s, &b, 400, "invalid-operation");
    // Unknown parent, protected and unknown fields, unknown stream, sibling name clash.
    let (s, b) = server.put("/alice/streams/b", &t, json!({"parentId": "nope"})).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
    for protected in [json!({"id": "x"}), json!({"created": 1}), json!({"modifiedBy": "me"}), json!({"children": []})] {
        let (s, b) = server.put("/alice/streams/b", &t, protected).await;
        assert_error(s, &b, 403, "forbidden");
    }
    let (s, b) = server.put("/alice/streams/b", &t, json!({"color": "blue"})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.put("/alice/streams/nope", &t, json!({"name": "X"})).await;
    assert_error(s, &b, 404, "unknown-resource");
    let (s, b) = server.put("/alice/streams/b", &t, json!({"name": "a"})).await;
    assert_error(s, &b, 409, "item-already-exists");
    let (s, b) = server.put("/alice/streams/b", &t, json!({"name": 5})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
}

#[tokio::test]
async fn delete_trashes_then_deletes() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "keep", None).await;
    stream(&server, &t, "temp", None).await;
    stream(&server, &t, "temp-child", Some("temp")).await;
    let (_, before) = server.get("/alice/access-info", &t).await;
    let since = before["meta"]["serverTime"].as_f64().unwrap();

    let (s, b) = server.delete("/alice/streams/temp", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stream"]["id"], "temp");
    assert_eq!(b["stream"]["trashed"], true);

    let (s, b) = server.get("/alice/streams", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["keep"]);
    let (s, b) = server.req("GET", "/alice/streams?state=all", Some(&t), None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["keep", "temp"]);
    let temp = find(&b["streams"], "temp").unwrap();
    assert_eq!(temp["trashed"], true);
    assert_eq!(temp["children"][0]["id"], "temp-child");

    let (s, b) = server.delete("/alice/streams/temp", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["streamDeletion"]["id"], "temp");
    assert!(b["streamDeletion"]["deleted"].is_number(), "{b}");
    assert!(b.get("stream").is_none(), "{b}");

    let (s, b) = server.req("GET", "/alice/streams?state=all", Some(&t), None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(top_ids(&b["streams"]), vec!["keep"]);
    let (s, b) = server.req("GET", &format!("/alice/streams?includeDeletionsSince={since}"), Some(&t), None).await;
    assert_eq!(s, 200, "{b}");
    let deleted: Vec<&str> = b["streamDeletions"].as_array().expect("streamDeletions").iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert!(deleted.contains(&"temp") && deleted.contains(&"temp-child"), "{b}");
    assert!(!deleted.contains(&"keep"), "{b}");
    let (s, b) = server.get("/alice/streams", &t).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("streamDeletions").is_none(), "{b}");

    // Now unknown.
    let (s, b) = server.delete("/alice/streams/temp", &t).await;
    assert_error(s, &b, 404, "unknown-resource");
    let (s, b) = server.post("/alice/events", &t, json!({"streamIds": ["temp-child"], "type": "note/txt"})).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
}

#[tokio::test]
async fn deleting_a_stream_with_events_needs_merge_events_with_parent() {
    let server = Server::start();
    let t = server.register("alice").await;
    stream(&server, &t, "p", None).await;
    stream(&server, &t, "c1", Some("p")).await;
    stream(&server, &t, "c2", Some("p")).await;
    stream(&server, &t, "other", None).await;
    let e1 = event(&server, &t, &["c1"]).await;
    let e2 = event(&server, &t, &["c2"]).await;
    let e3 = event(&server, &t, &["c2", "other"]).await;

    // c1: merged into p.
    let (s, b) = server.delete("/alice/streams/c1", &t).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.delete("/alice/streams/c1", &t).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.delete("/alice/streams/c1?mergeEventsWithParent=true", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["streamDeletion"]["id"], "c1");
    let (s, b) = server.get(&format!("/alice/events/{e1}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["streamIds"], json!(["p"]));

    // c2: events go with it, except from the streams they keep.
    let (s, b) = server.delete("/alice/streams/c2", &t).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.delete("/alice/streams/c2?mergeEventsWithParent=false", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["streamDeletion"]["id"], "c2");
    let (s, b) = server.get(&format!("/alice/events/{e2}"), &t).await;
    assert_error(s, &b, 404, "unknown-resource");
    let (s, b) = server.get(&format!("/alice/events/{e3}"), &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["event"]["streamIds"], json!(["other"]));

    let (s, b) = server.req("GET", "/alice/events?streams=p", Some(&t), None).await;
    assert_eq!(s, 200, "{b}");
    let ids: Vec<&str> = b["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![e1.as_str()]);

    // An empty stream needs no parameter.
    stream(&server, &t, "empty", None).await;
    let (s, _) = server.delete("/alice/streams/empty", &t).await;
    assert_eq!(s, 200);
    let (s, b) = server.delete("/alice/streams/empty", &t).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["streamDeletion"]["id"], "empty");
}
