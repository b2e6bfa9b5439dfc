//! Several nodes on one PostgreSQL database and one NATS server (`HERALD_TEST_DATABASE_URL`,
//! `HERALD_TEST_NATS_URL`): any node serves the API, one node at a time delivers webhooks, a
//! standby takes over when it dies, and each node sees the others' writes at once.

mod common;

use std::time::{Duration, Instant};

use common::{Receiver, Server};
use serde_json::json;

fn nats() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn posts_with(r: &Receiver, msg: &str, since: usize, wait: Duration) -> usize {
    let end = Instant::now() + wait;
    loop {
        let n = r.all().iter().skip(since).filter(|p| p.messages().iter().any(|m| m == msg)).count();
        if n > 0 || Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_api_one_delivers_and_a_standby_takes_over() {
    let db = common::new_postgres_database();
    let nats = nats();
    let env = [
        ("HERALD_DATABASE_URL", db.as_str()),
        ("HERALD_BUS_URL", nats.as_str()),
        ("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "64"),
        ("HERALD_AUTH_ARGON2_ITERATIONS", "1"),
    ];
    // The first node takes the delivery lock; the second stands by and serves the API.
    let mut a = Server::start_with(&env);
    let b = Server::start_with(&env);
    let r = Receiver::start().await;

    // Written through one node, readable through the other.
    let personal = b.register("clusteruser").await;
    let (_, app) = a
        .access("clusteruser", &personal, json!({"name": "w", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]}))
        .await;
    let (st, body) = b.post("/clusteruser/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = a.get("/clusteruser/streams", &app).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["streams"].as_array().unwrap().len(), 1, "{body}");

    // A webhook made on B, a change made on B: one POST, from the delivering node only.
    let (st, body) = b.post("/clusteruser/webhooks", &app, json!({"url": r.url_for("/hook"), "minIntervalMs": 10})).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = b.post("/clusteruser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "one"})).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(posts_with(&r, "eventsChanged", 0, Duration::from_secs(5)).await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.all().iter().filter(|p| p.messages().iter().any(|m| m == "eventsChanged")).count(), 1, "delivered once, by one node");

    // A token deleted through A is refused by B, which had it cached.
    let (shared_id, shared) = a
        .access("clusteruser", &personal, json!({"name": "reader", "type": "shared", "permissions": [{"streamId": "s", "level": "read"}]}))
        .await;
    let (st, body) = b.get("/clusteruser/events", &shared).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = a.delete(&format!("/clusteruser/accesses/{shared_id}"), &personal).await;
    assert_eq!(st, 200, "{body}");
    let end = Instant::now() + Duration::from_secs(2);
    let refused = loop {
        let (st, _) = b.get("/clusteruser/events", &shared).await;
        if st == 403 || Instant::now() > end {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(refused, 403, "the deleted token still works on the other node");

    // The delivering node dies at once after a write: the standby takes over and owes nothing.
    let mark = r.count();
    let (st, body) = a.post("/clusteruser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "two"})).await;
    assert_eq!(st, 201, "{body}");
    a.kill9();
    assert!(posts_with(&r, "eventsChanged", mark, Duration::from_secs(15)).await >= 1, "the change before the kill was delivered");
    let mark = r.count();
    let (st, body) = b.post("/clusteruser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "three"})).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(posts_with(&r, "eventsChanged", mark, Duration::from_secs(10)).await, 1, "the standby delivers now");
}

/// Nodes of another database on the same NATS server hear nothing of this cluster. Were they
/// to, the other cluster's change numbers would pass for their own and their own changes would
/// be dropped as already seen: the notification below would never come.
#[tokio::test]
async fn two_clusters_on_one_nats_server_do_not_hear_each_other() {
    let nats = nats();
    let (db1, db2) = (common::new_postgres_database(), common::new_postgres_database());
    let one = Server::start_with(&[
        ("HERALD_DATABASE_URL", db1.as_str()),
        ("HERALD_BUS_URL", nats.as_str()),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "64"),
    ]);
    let two = Server::start_with(&[
        ("HERALD_DATABASE_URL", db2.as_str()),
        ("HERALD_BUS_URL", nats.as_str()),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "64"),
    ]);
    let r = Receiver::start().await;
    // Cluster one numbers many changes first.
    let p1 = one.register("busyuser").await;
    for i in 0..20 {
        let (st, body) = one.post("/busyuser/streams", &p1, json!({"id": format!("s{i}"), "name": format!("S{i}")})).await;
        assert_eq!(st, 201, "{body}");
    }
    // Cluster two's first changes have the same numbers as cluster one's.
    let p2 = two.register("quietuser").await;
    let (_, a2) =
        two.access("quietuser", &p2, json!({"name": "w", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, body) = two.post("/quietuser/webhooks", &a2, json!({"url": r.url_for("/two")})).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = two.post("/quietuser/streams", &a2, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(posts_with(&r, "streamsChanged", 0, Duration::from_secs(5)).await, 1, "{:?}", r.all());
}

/// Password guesses counted on one node block the user on every node: a guesser spreading
/// over the nodes behind a load balancer meets the same limit.
#[tokio::test]
async fn failed_logins_on_one_node_throttle_the_user_on_the_others() {
    let db = common::new_postgres_database();
    let nats = nats();
    let env = [
        ("HERALD_DATABASE_URL", db.as_str()),
        ("HERALD_BUS_URL", nats.as_str()),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "64"),
        ("HERALD_AUTH_ARGON2_ITERATIONS", "1"),
        ("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "3"),
        ("HERALD_AUTH_REFUSAL_DELAY_MS", "0"),
    ];
    let a = Server::start_with(&env);
    let b = Server::start_with(&env);
    a.register("guessed").await;
    let login = |s: &Server, password: &str| {
        let body = json!({"username": "guessed", "password": password, "appId": "herald-tests"});
        let req = s.client.post(s.url("/guessed/auth/login")).json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(login(&a, "wrong-password").await, 401);
    }
    // The third failure blocked the user on A; B hears of the three (a note each over NATS).
    // Its first attempt then is refused, where B alone would have allowed two more failures.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(login(&b, "wrong-password").await, 429, "B did not hear of the failures counted on A");
    assert_eq!(login(&b, "secret-pw").await, 429, "the right password got through a blocked user on B");
    assert_eq!(login(&a, "secret-pw").await, 429);
}
