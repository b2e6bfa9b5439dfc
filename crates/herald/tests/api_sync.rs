//! The sync pattern of the webhooks guide must miss nothing: a reader that always asks
//! `events.get?modifiedSince=<the last meta.serverTime>` while others write concurrently sees
//! every event.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modified_since_sync_misses_nothing_under_concurrent_writes() {
    let s = Arc::new(Server::start());
    let token = s.register("syncer").await;
    let (st, _) = s.post("/syncer/streams", &token, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201);
    let created = Arc::new(Mutex::new(HashSet::new()));
    let mut writers = vec![];
    for w in 0..8 {
        let (s, token, created) = (s.clone(), token.clone(), created.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                let (st, b) =
                    s.post("/syncer/events", &token, json!({"streamIds": ["s"], "type": "count/steps", "content": w * 100 + i})).await;
                assert_eq!(st, 201, "{b}");
                created.lock().unwrap().insert(b["event"]["id"].as_str().unwrap().to_string());
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut since = 0.0;
    let mut syncs = 0;
    loop {
        let done = writers.iter().all(|w| w.is_finished());
        let (st, b) = s.get(&format!("/syncer/events?modifiedSince={since}&limit=10000&state=all"), &token).await;
        assert_eq!(st, 200, "{b}");
        for e in b["events"].as_array().unwrap() {
            seen.insert(e["id"].as_str().unwrap().to_string());
        }
        since = b["meta"]["serverTime"].as_f64().unwrap();
        syncs += 1;
        if done {
            break;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let created = created.lock().unwrap().clone();
    assert_eq!(created.len(), 320);
    let missed: Vec<_> = created.difference(&seen).collect();
    assert!(missed.is_empty(), "{} of 320 events missed over {syncs} syncs", missed.len());
}

/// `eventDeletions` only lists deletions in streams the token can read (and that the query
/// covers): a narrow token learns nothing about the rest of the account.
#[tokio::test]
async fn event_deletions_respect_permissions_and_streams() {
    let s = Server::start();
    let personal = s.register("deleter").await;
    for id in ["a", "b"] {
        let (st, _) = s.post("/deleter/streams", &personal, json!({"id": id, "name": id})).await;
        assert_eq!(st, 201);
    }
    let (_, reader) = s.access("deleter", &personal, json!({"name": "reader", "permissions": [{"streamId": "a", "level": "read"}]})).await;
    let mut ids = vec![];
    for stream in ["a", "b"] {
        let (_, b) = s.post("/deleter/events", &personal, json!({"streamIds": [stream], "type": "note/txt", "content": "x"})).await;
        let id = b["event"]["id"].as_str().unwrap().to_string();
        s.delete(&format!("/deleter/events/{id}"), &personal).await;
        let (st, b) = s.delete(&format!("/deleter/events/{id}"), &personal).await;
        assert_eq!(st, 200, "{b}");
        ids.push(id);
    }
    let listed = |b: &serde_json::Value| -> Vec<String> {
        b["eventDeletions"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
    };
    let (_, b) = s.get("/deleter/events?modifiedSince=0&includeDeletions=true&limit=100", &reader).await;
    assert_eq!(listed(&b), vec![ids[0].clone()]);
    let (_, b) = s.get("/deleter/events?modifiedSince=0&includeDeletions=true&limit=100", &personal).await;
    assert_eq!(listed(&b).len(), 2);
    let (_, b) = s.get("/deleter/events?modifiedSince=0&includeDeletions=true&limit=100&streams=b", &personal).await;
    assert_eq!(listed(&b), vec![ids[1].clone()]);
}
