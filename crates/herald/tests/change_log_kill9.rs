//! Contract 3 "nothing is lost", at the worst instant: `kill -9` sent the moment a write's 201
//! arrives, with no sleep, under concurrent writers on several users that have plain and scoped
//! webhooks. Every acknowledged change must reach each matching webhook as its own message
//! (`eventsChanged`, `streamsChanged`, a scope key), never only as `webhooksServiceBoot`.
//!
//! During the writes every receiver hangs: the first POST of each webhook never gets an answer,
//! so every message of the cycle is still owed when the kill lands (in flight or pending), and
//! after the restart each one must arrive. That makes the check exact: nothing counts as
//! delivered before the kill, because nothing was answered.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Receiver, Server};
use serde_json::json;

const USERS: usize = 4;
const WRITERS: usize = 8;
const CYCLES: usize = 40;

struct User {
    name: String,
    token: String,
}

/// An acknowledged write: whose, and what it changed.
#[derive(Debug, Clone)]
enum Acked {
    Event { user: usize, stream: &'static str, id: String },
    StreamRename { user: usize },
}

async fn setup(s: &Server, r: &Receiver) -> Vec<User> {
    let mut users = vec![];
    for i in 0..USERS {
        let name = format!("kill{i}user");
        let personal = s.register(&name).await;
        let (_, token) = s
            .access(&name, &personal, json!({"name": "writer", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]}))
            .await;
        for id in ["a", "b"] {
            let (st, b) = s.post(&format!("/{name}/streams"), &token, json!({"id": id, "name": id})).await;
            assert_eq!(st, 201, "{b}");
        }
        let (st, b) =
            s.post(&format!("/{name}/webhooks"), &token, json!({"url": r.url_for(&format!("/plain/{name}")), "minIntervalMs": 10})).await;
        assert_eq!(st, 201, "{b}");
        let scopes = json!({
            "aChanged": {"kind": "events", "query": {"streams": ["a"]}},
            "bChanged": {"kind": "events", "query": {"streams": ["b"]}},
        });
        let (st, b) = s
            .post(
                &format!("/{name}/webhooks"),
                &token,
                json!({"url": r.url_for(&format!("/scoped/{name}")), "minIntervalMs": 10, "scopes": scopes}),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        users.push(User { name, token });
    }
    users
}

/// Write from `WRITERS` connections until `kill_after` writes are acknowledged; the writer that
/// reads that 201 fires the kill before doing anything else.
async fn write_until_killed(s: &Server, users: &Arc<Vec<User>>, kill_after: usize, cycle: usize) -> Vec<Acked> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let kill = s.kill_switch();
    let mut tasks = vec![];
    for w in 0..WRITERS {
        let (users, acked, count, killed, kill, base) =
            (users.clone(), acked.clone(), count.clone(), killed.clone(), kill.clone(), s.base.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0usize;
            while !killed.load(Ordering::SeqCst) {
                n += 1;
                let u = (w + n) % USERS;
                let user = &users[u];
                let (req, what) = if n.is_multiple_of(8) {
                    let name = format!("a-{cycle}-{w}-{n}");
                    (client.put(format!("{base}/{}/streams/a", user.name)).json(&json!({"name": name})), Acked::StreamRename { user: u })
                } else {
                    let stream = if n.is_multiple_of(2) { "a" } else { "b" };
                    let id = format!("c{cycle}w{w}n{n}x{}", herald_suffix(u));
                    let body = json!({"id": id, "streamIds": [stream], "type": "count/steps", "content": n});
                    (client.post(format!("{base}/{}/events", user.name)).json(&body), Acked::Event { user: u, stream, id })
                };
                let Ok(resp) = req.header("Authorization", &user.token).send().await else { break };
                if resp.status().is_success() {
                    // The write is acknowledged: count it, and kill at once if it is the one.
                    acked.lock().unwrap().push(what);
                    if count.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                        kill.fire();
                        killed.store(true, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let out = acked.lock().unwrap().clone();
    out
}

/// Event ids must be valid Pryv ids (lowercase letters and digits).
fn herald_suffix(u: usize) -> String {
    ["a", "b", "c", "d"][u % 4].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_change_survives_a_kill_9_at_the_instant_of_its_201() {
    let r = Receiver::start().await;
    let mut s = Server::start_with(&[
        ("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"),
        // Hanging receivers: the POST in flight must stay in flight until the kill.
        ("HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS", "600000"),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "64"),
        ("HERALD_AUTH_ARGON2_ITERATIONS", "1"),
    ]);
    let users = Arc::new(setup(&s, &r).await);
    let mut total_acked = 0;
    let mut lost = vec![];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for cycle in 0..CYCLES {
        // Every webhook has been greeted (previous restart): from now on nothing is answered.
        r.set_delay(Duration::from_secs(3600));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + (seed % 40) as usize;
        let acked = write_until_killed(&s, &users, kill_after, cycle).await;
        assert!(acked.len() >= kill_after, "cycle {cycle}: {} acknowledged, kill after {kill_after}", acked.len());
        total_acked += acked.len();

        // What each webhook is owed.
        let mut expected: HashMap<String, BTreeSet<&str>> = HashMap::new();
        for a in &acked {
            match a {
                Acked::Event { user, stream, .. } => {
                    let name = &users[*user].name;
                    expected.entry(format!("/plain/{name}")).or_default().insert("eventsChanged");
                    expected.entry(format!("/scoped/{name}")).or_default().insert(if *stream == "a" { "aChanged" } else { "bChanged" });
                }
                Acked::StreamRename { user } => {
                    expected.entry(format!("/plain/{}", users[*user].name)).or_default().insert("streamsChanged");
                }
            }
        }

        // Restart on the same data dir; the receivers answer again.
        r.set_delay(Duration::ZERO);
        let mark = r.count();
        s.restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        let missing = loop {
            let after: Vec<_> = r.all().into_iter().skip(mark).collect();
            let mut got: HashMap<String, BTreeSet<String>> = HashMap::new();
            for p in &after {
                got.entry(p.path.clone()).or_default().extend(p.messages());
            }
            let missing: Vec<(String, &str)> = expected
                .iter()
                .flat_map(|(path, msgs)| msgs.iter().map(move |m| (path.clone(), *m)))
                .filter(|(path, m)| !got.get(path).is_some_and(|g| g.contains(*m)))
                .collect();
            let all_greeted = users.iter().all(|u| {
                ["plain", "scoped"].iter().all(|k| got.get(&format!("/{k}/{}", u.name)).is_some_and(|g| g.contains("webhooksServiceBoot")))
            });
            if (missing.is_empty() && all_greeted) || Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for (path, m) in missing {
            lost.push(format!("cycle {cycle} (kill after {kill_after} acks): {path} never got {m}"));
        }

        // And every acknowledged write is there.
        for a in &acked {
            if let Acked::Event { user, id, .. } = a {
                let u = &users[*user];
                let (st, b) = s.get(&format!("/{}/events/{id}", u.name), &u.token).await;
                assert_eq!(st, 200, "cycle {cycle}: acknowledged event {id} lost: {b}");
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of the owed notifications were lost ({total_acked} writes acknowledged):\n{}",
        lost.len(),
        lost.join("\n")
    );
    eprintln!("{CYCLES} kills, {total_acked} acknowledged writes, no notification lost");
}

/// The log, not the bus, is the truth: a change committed by another writer of the same store
/// (here a second handle on the data dir, as another node of a cluster would be), which never
/// reaches this node's bus, is still delivered, found by the dispatcher's reads of the log.
#[tokio::test]
async fn a_change_that_never_reached_the_bus_is_found_in_the_log() {
    use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};

    let r = Receiver::start().await;
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let personal = s.register("logtruth").await;
    let (_, token) =
        s.access("logtruth", &personal, json!({"name": "w", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, b) = s.post("/logtruth/streams", &token, json!({"id": "a", "name": "A"})).await;
    assert_eq!(st, 201, "{b}");
    let (st, b) = s.post("/logtruth/webhooks", &token, json!({"url": r.url_for("/hook"), "minIntervalMs": 10})).await;
    assert_eq!(st, 201, "{b}");

    let other = s.open_store().await;
    let user = other.user_by_name("logtruth").await.unwrap().unwrap();
    let e = herald_model::event::Event {
        id: "fromelsewhere".into(),
        stream_ids: vec!["a".into()],
        time: 1.0,
        duration: Some(0.0),
        event_type: "note/txt".into(),
        content: Some(json!("written by another node")),
        description: None,
        client_data: None,
        trashed: false,
        created: 1.0,
        created_by: "x".into(),
        modified: 1.0,
        modified_by: "x".into(),
        attachments: vec![],
    };
    let item = ChangedItem::Event { id: e.id.clone(), stream_ids: e.stream_ids.clone(), event_type: e.event_type.clone() };
    let change = Change::new(&user.id, &user.username, ChangeKind::Events, ChangeType::Create, vec![item]);
    let logged = other.insert_event(&user.id, &e, vec![change]).await.unwrap();
    assert!(logged[0].seq > 0);

    let posts = r.wait_for(1, Duration::from_secs(10)).await;
    assert!(posts.iter().any(|p| p.messages().contains(&"eventsChanged".to_string())), "{posts:?}");
    let (st, b) = s.get("/logtruth/events/fromelsewhere", &token).await;
    assert_eq!(st, 200, "{b}");
}
