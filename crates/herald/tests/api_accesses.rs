//! Accesses and access-info over real HTTP: who may create, list and delete which access.
mod common;

use std::collections::BTreeSet;

use common::{assert_error, Server};
use serde_json::{json, Value};

async fn stream(server: &Server, token: &str, id: &str, parent: Option<&str>) {
    let (s, b) = server.post("/alice/streams", token, json!({"id": id, "name": id, "parentId": parent})).await;
    assert_eq!(s, 201, "{b}");
}

fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array().unwrap_or_else(|| panic!("not an array: {list}")).iter().map(|a| a["id"].as_str().unwrap().to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn access_info_describes_the_calling_access() {
    let server = Server::start();
    let personal = server.register("alice").await;
    let (s, info) = server.get("/alice/access-info", &personal).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["user"]["username"], "alice");
    assert_eq!(info["type"], "personal");
    assert_eq!(info["token"], personal.as_str());
    assert!(info["id"].as_str().is_some_and(|i| !i.is_empty()), "{info}");
    assert!(info["permissions"].is_array(), "{info}");
    assert!(info["meta"]["serverTime"].is_number(), "{info}");

    stream(&server, &personal, "diary", None).await;
    let (app_id, app) = server
        .access("alice", &personal, json!({"name": "my-app", "type": "app", "permissions": [{"streamId": "diary", "level": "read"}]}))
        .await;
    let (s, info) = server.get("/alice/access-info", &app).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["user"]["username"], "alice");
    assert_eq!(info["id"], app_id.as_str());
    assert_eq!(info["type"], "app");
    assert_eq!(info["name"], "my-app");
    assert_eq!(info["permissions"], json!([{"streamId": "diary", "level": "read"}]));
}

#[tokio::test]
async fn personal_creates_app_and_shared_accesses() {
    let server = Server::start();
    let personal = server.register("alice").await;
    stream(&server, &personal, "diary", None).await;

    let (s, b) = server
        .post(
            "/alice/accesses",
            &personal,
            json!({"name": "my-app", "type": "app", "permissions": [{"streamId": "diary", "level": "manage"}]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let a = &b["access"];
    assert_eq!(a["type"], "app");
    assert_eq!(a["name"], "my-app");
    let token = a["token"].as_str().expect("token");
    assert!(!token.is_empty());
    let endpoint = a["apiEndpoint"].as_str().expect("apiEndpoint");
    assert!(endpoint.contains(&format!("{token}@")) && endpoint.ends_with("/alice/"), "{endpoint}");
    assert_eq!(a["permissions"], json!([{"streamId": "diary", "level": "manage"}]));
    assert!(a["created"].is_number() && a["createdBy"].is_string(), "{a}");

    // `type` defaults to shared.
    let (s, b) =
        server.post("/alice/accesses", &personal, json!({"name": "friend", "permissions": [{"streamId": "*", "level": "read"}]})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["access"]["type"], "shared");
    assert!(b["access"]["token"].is_string());
    assert!(b["access"]["apiEndpoint"].is_string());

    // Bad inputs.
    let (s, b) = server.post("/alice/accesses", &personal, json!({"permissions": []})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) =
        server.post("/alice/accesses", &personal, json!({"name": "x", "permissions": [{"streamId": "diary", "level": "boss"}]})).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) =
        server.post("/alice/accesses", &personal, json!({"name": "x", "permissions": [{"streamId": "nope", "level": "read"}]})).await;
    assert_error(s, &b, 400, "unknown-referenced-resource");
    // Same type and name as an existing one.
    let (s, b) =
        server.post("/alice/accesses", &personal, json!({"name": "friend", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    assert_error(s, &b, 409, "item-already-exists");
}

#[tokio::test]
async fn app_creates_shared_accesses_within_its_permissions_and_shared_creates_none() {
    let server = Server::start();
    let personal = server.register("alice").await;
    stream(&server, &personal, "diary", None).await;
    stream(&server, &personal, "notes", Some("diary")).await;
    stream(&server, &personal, "work", None).await;
    let (_, app) = server
        .access("alice", &personal, json!({"name": "app", "type": "app", "permissions": [{"streamId": "diary", "level": "contribute"}]}))
        .await;

    // Within: read or contribute on diary or its children.
    let (s, b) = server.post("/alice/accesses", &app, json!({"name": "s1", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["access"]["type"], "shared");
    let shared = b["access"]["token"].as_str().unwrap().to_string();
    let (s, b) =
        server.post("/alice/accesses", &app, json!({"name": "s2", "permissions": [{"streamId": "notes", "level": "contribute"}]})).await;
    assert_eq!(s, 201, "{b}");

    // Beyond: a higher level, another stream, everything, or an app access.
    for (name, perms) in [
        ("s3", json!([{"streamId": "diary", "level": "manage"}])),
        ("s4", json!([{"streamId": "work", "level": "read"}])),
        ("s5", json!([{"streamId": "*", "level": "read"}])),
    ] {
        let (s, b) = server.post("/alice/accesses", &app, json!({"name": name, "permissions": perms})).await;
        assert_error(s, &b, 403, "forbidden");
    }
    let (s, b) = server
        .post("/alice/accesses", &app, json!({"name": "sub-app", "type": "app", "permissions": [{"streamId": "diary", "level": "read"}]}))
        .await;
    assert_error(s, &b, 403, "forbidden");

    // A shared access can neither create nor list accesses.
    let (s, b) =
        server.post("/alice/accesses", &shared, json!({"name": "s6", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.get("/alice/accesses", &shared).await;
    assert_error(s, &b, 403, "forbidden");
}

#[tokio::test]
async fn accesses_get_by_an_app_lists_only_what_it_created() {
    let server = Server::start();
    let personal = server.register("alice").await;
    stream(&server, &personal, "diary", None).await;
    let perms = json!([{"streamId": "diary", "level": "manage"}]);
    let (a, a_tok) = server.access("alice", &personal, json!({"name": "a", "type": "app", "permissions": perms})).await;
    let (b, _) = server.access("alice", &personal, json!({"name": "b", "type": "app", "permissions": perms})).await;
    let (s0, _) = server.access("alice", &personal, json!({"name": "s0", "permissions": perms})).await;
    let (s1, _) = server.access("alice", &a_tok, json!({"name": "s1", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    let (s2, _) = server.access("alice", &a_tok, json!({"name": "s2", "permissions": [{"streamId": "diary", "level": "read"}]})).await;

    let (st, body) = server.get("/alice/accesses", &a_tok).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(ids(&body["accesses"]), set(&[&s1, &s2]));
    for acc in body["accesses"].as_array().unwrap() {
        assert_eq!(acc["createdBy"], a.as_str(), "{acc}");
        assert!(acc["token"].is_string() && acc["apiEndpoint"].is_string(), "{acc}");
    }

    let (st, body) = server.get("/alice/accesses", &personal).await;
    assert_eq!(st, 200, "{body}");
    let all = ids(&body["accesses"]);
    for id in [&a, &b, &s0, &s1, &s2] {
        assert!(all.contains(id.as_str()), "{id} missing from {body}");
    }
    assert!(body["accesses"].as_array().unwrap().iter().any(|x| x["type"] == "personal"), "{body}");
}

#[tokio::test]
async fn delete_rules_and_related_deletions() {
    let server = Server::start();
    let personal = server.register("alice").await;
    stream(&server, &personal, "diary", None).await;
    let perms = json!([{"streamId": "diary", "level": "manage"}]);
    let read = json!([{"streamId": "diary", "level": "read"}]);
    let (a, a_tok) = server.access("alice", &personal, json!({"name": "a", "type": "app", "permissions": perms})).await;
    let (b, b_tok) = server.access("alice", &personal, json!({"name": "b", "type": "app", "permissions": perms})).await;
    let (s1, s1_tok) = server.access("alice", &a_tok, json!({"name": "s1", "permissions": read})).await;
    let (s2, s2_tok) = server.access("alice", &a_tok, json!({"name": "s2", "permissions": read})).await;
    let (s3, s3_tok) = server.access("alice", &a_tok, json!({"name": "s3", "permissions": read})).await;
    let (s4, _) = server.access("alice", &personal, json!({"name": "s4", "permissions": read})).await;

    // An app cannot delete what it did not create; a shared access cannot delete others.
    let (s, body) = server.delete(&format!("/alice/accesses/{b}"), &a_tok).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = server.delete(&format!("/alice/accesses/{s4}"), &a_tok).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = server.delete(&format!("/alice/accesses/{s1}"), &s2_tok).await;
    assert_error(s, &body, 403, "forbidden");

    // An app deletes what it created; a shared access deletes itself.
    let (s, body) = server.delete(&format!("/alice/accesses/{s1}"), &a_tok).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["accessDeletion"]["id"], s1.as_str());
    assert!(body.get("relatedDeletions").is_none(), "{body}");
    let (s, body) = server.get("/alice/access-info", &s1_tok).await;
    assert_error(s, &body, 403, "invalid-access-token");

    let (s, body) = server.delete(&format!("/alice/accesses/{s2}"), &s2_tok).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["accessDeletion"]["id"], s2.as_str());
    let (s, body) = server.get("/alice/access-info", &s2_tok).await;
    assert_error(s, &body, 403, "invalid-access-token");

    // Deleting the app deletes the live accesses it created.
    let (s, body) = server.delete(&format!("/alice/accesses/{a}"), &personal).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["accessDeletion"]["id"], a.as_str());
    assert_eq!(ids(&body["relatedDeletions"]), set(&[&s3]), "{body}");
    for tok in [&a_tok, &s3_tok] {
        let (s, body) = server.get("/alice/events", tok).await;
        assert_error(s, &body, 403, "invalid-access-token");
    }
    let (s, body) = server.get("/alice/accesses", &personal).await;
    assert_eq!(s, 200, "{body}");
    let live = ids(&body["accesses"]);
    assert!(live.contains(&b) && live.contains(&s4), "{body}");
    for gone in [&a, &s1, &s2, &s3] {
        assert!(!live.contains(gone.as_str()), "{gone} still listed: {body}");
    }
    let (s, body) = server.req("GET", "/alice/accesses?includeDeletions=true", Some(&personal), None).await;
    assert_eq!(s, 200, "{body}");
    let deleted = ids(&body["accessDeletions"]);
    for gone in [&a, &s1, &s2, &s3] {
        assert!(deleted.contains(gone.as_str()), "{gone} not in accessDeletions: {body}");
    }

    // An app deletes itself.
    let (s, body) = server.delete(&format!("/alice/accesses/{b}"), &b_tok).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["accessDeletion"]["id"], b.as_str());
    let (s, body) = server.get("/alice/access-info", &b_tok).await;
    assert_error(s, &body, 403, "invalid-access-token");

    // Unknown id.
    let (s, body) = server.delete("/alice/accesses/no-such-access", &personal).await;
    assert_error(s, &body, 404, "unknown-resource");
}

#[tokio::test]
async fn tokens_are_unique_and_expired_accesses_are_refused() {
    let server = Server::start();
    let personal = server.register("alice").await;
    stream(&server, &personal, "diary", None).await;
    let read = json!([{"streamId": "diary", "level": "read"}]);

    let (s, b) = server.post("/alice/accesses", &personal, json!({"name": "one", "token": "my-chosen-token", "permissions": read})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["access"]["token"], "my-chosen-token");
    let (s, info) = server.get("/alice/access-info", "my-chosen-token").await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["name"], "one");

    let (s, b) = server.post("/alice/accesses", &personal, json!({"name": "two", "token": "my-chosen-token", "permissions": read})).await;
    assert_error(s, &b, 409, "item-already-exists");

    // Expires right away.
    let (s, b) = server.post("/alice/accesses", &personal, json!({"name": "brief", "expireAfter": 0, "permissions": read})).await;
    assert_eq!(s, 201, "{b}");
    assert!(b["access"]["expires"].is_number(), "{b}");
    let brief = b["access"]["token"].as_str().unwrap().to_string();
    let (s, b) = server.get("/alice/events", &brief).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = server.get("/alice/access-info", &brief).await;
    assert_error(s, &b, 403, "forbidden");

    // Expires later: usable now.
    let (s, b) = server.post("/alice/accesses", &personal, json!({"name": "later", "expireAfter": 3600, "permissions": read})).await;
    assert_eq!(s, 201, "{b}");
    let later = b["access"]["token"].as_str().unwrap().to_string();
    let (s, b) = server.get("/alice/access-info", &later).await;
    assert_eq!(s, 200, "{b}");

    // Expired accesses are hidden unless asked for.
    let (s, b) = server.get("/alice/accesses", &personal).await;
    assert_eq!(s, 200, "{b}");
    assert!(!b["accesses"].as_array().unwrap().iter().any(|a| a["name"] == "brief"), "{b}");
    let (s, b) = server.req("GET", "/alice/accesses?includeExpired=true", Some(&personal), None).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["accesses"].as_array().unwrap().iter().any(|a| a["name"] == "brief"), "{b}");

    // A deleted access frees nothing but its token is dead.
    let (s, b) = server.post("/alice/accesses", &personal, json!({"name": "doomed", "permissions": read})).await;
    assert_eq!(s, 201, "{b}");
    let (id, tok) = (b["access"]["id"].as_str().unwrap().to_string(), b["access"]["token"].as_str().unwrap().to_string());
    let (s, b) = server.delete(&format!("/alice/accesses/{id}"), &personal).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.get("/alice/streams", &tok).await;
    assert_error(s, &b, 403, "invalid-access-token");
}
