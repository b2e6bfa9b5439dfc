//! A seeded fuzz of the HTTP surface (issue 13): a few thousand generated bad requests against
//! the real server; never a 5xx, always Pryv's JSON envelope, and the user's data unchanged.
//! `HERALD_FUZZ_SEED` and `HERALD_FUZZ_REQUESTS` change the run; `herald-bench fuzz` is the
//! long mode. The generator is herald-bench's (`crates/herald-bench/src/fuzz.rs`).
mod common;

#[path = "../../herald-bench/src/fuzz.rs"]
#[allow(dead_code)]
mod fuzz;

use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_bad_requests() {
    let server = Server::start_with(&[("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS", "false")]);
    let personal = server.register("alice").await;
    server.register("bobby").await;
    let mut ids = vec!["alice".to_string(), "bobby".to_string(), "*".to_string()];
    for (id, parent) in [("diary", None), ("health", None), ("heart", Some("health"))] {
        let (s, b) = server.post("/alice/streams", &personal, json!({"id": id, "name": id, "parentId": parent})).await;
        assert_eq!(s, 201, "{b}");
        ids.push(id.into());
    }
    for i in 0..5 {
        let (s, b) = server.post("/alice/events", &personal, json!({"streamIds": ["heart"], "type": "count/steps", "content": i})).await;
        assert_eq!(s, 201, "{b}");
        ids.push(b["event"]["id"].as_str().unwrap().into());
    }
    let (acc_id, read_only) = server
        .access("alice", &personal, json!({"name": "reader", "type": "shared", "permissions": [{"streamId": "*", "level": "read"}, {"feature": "selfRevoke", "setting": "forbidden"}]}))
        .await;
    ids.push(acc_id);
    let target = fuzz::Target { base: server.base.clone(), username: "alice".into(), personal, read_only, ids };
    let client = reqwest::Client::new();
    let before = fuzz::snapshot(&client, &target).await.unwrap();
    let seed = std::env::var("HERALD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(13);
    let n = std::env::var("HERALD_FUZZ_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let stats = fuzz::run(&target, seed, n, 4).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("fuzz seed {seed}: {stats:?}");
    assert!(stats.sent >= n * 9 / 10, "{stats:?}");
    let after = fuzz::snapshot(&client, &target).await.unwrap();
    for key in ["events", "streams", "accesses", "webhooks"] {
        assert_eq!(before[key], after[key], "the fuzz changed the user's {key}");
    }
}
