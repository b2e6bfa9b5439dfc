//! Several nodes on one PostgreSQL database and one NATS server (`HERALD_TEST_DATABASE_URL`,
//! `HERALD_TEST_NATS_URL`), started as real processes: any node serves the API, the webhooks are
//! shared out by partition among the delivering nodes (leases in PostgreSQL), a node that dies
//! has its partitions taken over within 5 s, and each node sees the others' writes at once.
//! Without PostgreSQL and NATS these tests are skipped, saying so (under CI they must run).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Receiver, Server};
use futures::{SinkExt, StreamExt};
use serde_json::json;

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

fn cluster_env<'a>(db: &'a str, nats: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HERALD_DATABASE_URL", db),
        ("HERALD_BUS_URL", nats),
        ("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "64"),
        ("HERALD_AUTH_ARGON2_ITERATIONS", "1"),
        ("HERALD_AUTH_REGISTRATIONS_PER_ADDRESS", "100000"),
    ]
}

/// How many delivery partitions each node holds, smallest first, read from PostgreSQL's own
/// lock table: the leases are advisory locks (key "HRLD", 1 + partition).
fn partition_holders(db: &str) -> Vec<i64> {
    let out = std::process::Command::new("psql")
        .arg(db)
        .arg("-Atc")
        .arg(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 1213353028::oid \
             AND objid > 0 AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             GROUP BY pid ORDER BY 1",
        )
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// One row of `psql -Atc`'s answer per line, columns split on `|`.
fn psql_rows(db: &str, sql: &str) -> Vec<Vec<String>> {
    let out = std::process::Command::new("psql").arg(db).arg("-Atc").arg(sql).output().expect("psql");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('|').map(str::to_owned).collect()).collect()
}

/// The users whose webhooks the node `herald {node_id}` delivers now: the users of the
/// partitions its lease connection holds.
fn users_delivered_by(db: &str, node_id: &str) -> HashSet<String> {
    let partitions: HashSet<u32> = psql_rows(
        db,
        &format!(
            "SELECT l.objid::int8 - 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1213353028::oid AND l.objid > 0 AND l.objsubid = 2 \
             AND a.application_name = 'herald {node_id}'"
        ),
    )
    .iter()
    .filter_map(|r| r[0].parse().ok())
    .collect();
    psql_rows(db, "SELECT username, id FROM users")
        .into_iter()
        .filter(|r| partitions.contains(&herald_model::partition::of(&r[1], herald_model::partition::PARTITIONS)))
        .map(|r| r[0].clone())
        .collect()
}

async fn wait_for_holders(db: &str, want: &[i64], wait: Duration) -> Vec<i64> {
    let end = Instant::now() + wait;
    loop {
        let h = partition_holders(db);
        if h == want || Instant::now() > end {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` users, each with an app token and a webhook to `r` at `/hook/{user}`; users are spread
/// over the nodes for their writes.
async fn users_with_webhooks(nodes: &[&Server], r: &Receiver, n: usize, prefix: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for i in 0..n {
        let node = nodes[i % nodes.len()];
        let user = format!("{prefix}{i}");
        let personal = node.register(&user).await;
        let (_, app) =
            node.access(&user, &personal, json!({"name": "w", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
        let (st, body) = node.post(&format!("/{user}/streams"), &app, json!({"id": "s", "name": "S"})).await;
        assert_eq!(st, 201, "{body}");
        let (st, body) =
            node.post(&format!("/{user}/webhooks"), &app, json!({"url": r.url_for(&format!("/hook/{user}")), "minIntervalMs": 10})).await;
        assert_eq!(st, 201, "{body}");
        out.push((user, app));
    }
    out
}

/// Create an event; answers when the request was sent. A POST for this change can come before
/// the acknowledgement does, never before the request: any notice received after this instant
/// was sent after the change was committed or while it was.
async fn create_event(node: &Server, user: &str, app: &str) -> Instant {
    let sent = Instant::now();
    let (st, body) = node.post(&format!("/{user}/events"), app, json!({"streamIds": ["s"], "type": "note/txt", "content": "x"})).await;
    assert_eq!(st, 201, "{body}");
    sent
}

/// A node starting alone holds every partition; two more join and each takes its share; the
/// shares always cover all sixteen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_of_the_partitions() {
    let Some((db, nats)) = common::cluster_services("a_joining_node_takes_its_share_of_the_partitions") else { return };
    let env = cluster_env(&db, &nats);
    let _a = Server::start_with(&env);
    assert_eq!(wait_for_holders(&db, &[16], Duration::from_secs(5)).await, vec![16]);
    let _b = Server::start_with(&env);
    assert_eq!(wait_for_holders(&db, &[8, 8], Duration::from_secs(10)).await, vec![8, 8]);
    let _c = Server::start_with(&env);
    assert_eq!(wait_for_holders(&db, &[5, 5, 6], Duration::from_secs(10)).await, vec![5, 5, 6]);
    // An API-only node takes none.
    let mut api_env = env.clone();
    api_env.push(("HERALD_ROLE", "api"));
    let _d = Server::start_with(&api_env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(partition_holders(&db), vec![5, 5, 6]);
}

/// 1,000 changes over 100 webhooks, written through all three nodes, delivered by whichever
/// node holds each webhook's partition: every webhook hears of its last change, and no POST
/// is sent twice (each delivery's `webhook-id` is received once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_any_node_reach_webhooks_delivered_by_the_others_once() {
    let Some((db, nats)) = common::cluster_services("changes_through_any_node_reach_webhooks_delivered_by_the_others_once") else {
        return;
    };
    let env = cluster_env(&db, &nats);
    let (a, b, c) = (Server::start_with(&env), Server::start_with(&env), Server::start_with(&env));
    let nodes = [&a, &b, &c];
    assert_eq!(wait_for_holders(&db, &[5, 5, 6], Duration::from_secs(10)).await, vec![5, 5, 6], "every node delivers a share");
    let r = Receiver::start().await;
    let users = users_with_webhooks(&nodes, &r, 100, "many").await;
    let mut last_write: HashMap<String, Instant> = HashMap::new();
    for round in 0..10 {
        for (i, (user, app)) in users.iter().enumerate() {
            // Each user's writes go through a different node each round.
            let at = create_event(nodes[(i + round) % 3], user, app).await;
            last_write.insert(user.clone(), at);
        }
    }
    let end = Instant::now() + Duration::from_secs(20);
    let unnotified = loop {
        let posts = r.all();
        let missing: Vec<&String> = last_write
            .iter()
            .filter(|(user, at)| {
                !posts
                    .iter()
                    .any(|p| p.path == format!("/hook/{user}") && p.at >= **at && p.messages().iter().any(|m| m == "eventsChanged"))
            })
            .map(|(u, _)| u)
            .collect();
        if missing.is_empty() || Instant::now() > end {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(unnotified, 0, "webhooks never told of their last change");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = r.all();
    let mut ids = HashSet::new();
    for p in &posts {
        let id = p.header("webhook-id").expect("webhook-id").to_string();
        assert!(ids.insert(id.clone()), "a POST was sent twice: {id} to {}", p.path);
    }
    let per_user = posts.iter().filter(|p| p.path.starts_with("/hook/many")).count();
    assert!(per_user <= 100 * 11, "{per_user} POSTs for 1,000 changes and 100 greetings");
}

/// The node delivering a partition is killed (-9) while its POSTs are in flight and right after
/// a change it should deliver was acknowledged: the others take its partitions, every change
/// acknowledged before or after the kill is notified, the first POSTs come within 5 s, and the
/// only repeats are the POSTs that were in flight, with their `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_delivering_node_loses_nothing_and_its_partitions_move_within_5s() {
    let Some((db, nats)) = common::cluster_services("kill9_of_a_delivering_node_loses_nothing_and_its_partitions_move_within_5s") else {
        return;
    };
    let env = cluster_env(&db, &nats);
    let node = |id: &'static str| {
        let mut e = env.clone();
        e.push(("HERALD_NODE_ID", id));
        Server::start_with(&e)
    };
    let (a, b, mut c) = (node("a"), node("b"), node("c"));
    assert_eq!(wait_for_holders(&db, &[5, 5, 6], Duration::from_secs(10)).await, vec![5, 5, 6]);
    let r = Receiver::start().await;
    let users = users_with_webhooks(&[&a, &b], &r, 40, "killuser").await;
    // Slow answers: at the kill, POSTs are in flight on every node.
    r.set_delay(Duration::from_millis(150));
    let mut last_write: HashMap<String, Instant> = HashMap::new();
    for (i, (user, app)) in users.iter().enumerate() {
        last_write.insert(user.clone(), create_event(if i % 2 == 0 { &a } else { &b }, user, app).await);
    }
    // The kill lands the instant after the acknowledgement of a write that C must deliver,
    // then writes go on through the two nodes left.
    let on_c = users_delivered_by(&db, "c");
    let (user, app) = users.iter().find(|(u, _)| on_c.contains(u)).expect("C delivers some of the 40 users");
    last_write.insert(user.clone(), create_event(&a, user, app).await);
    c.kill9();
    let killed_at = Instant::now();
    for (i, (user, app)) in users.iter().enumerate().skip(1).step_by(3) {
        last_write.insert(user.clone(), create_event(if i % 2 == 0 { &a } else { &b }, user, app).await);
    }
    assert_eq!(wait_for_holders(&db, &[8, 8], Duration::from_secs(5)).await, vec![8, 8], "the partitions moved");
    let end = Instant::now() + Duration::from_secs(15);
    let (unnotified, last_notice) = loop {
        let posts = r.all();
        let mut latest = killed_at;
        let mut missing = 0;
        for (user, at) in &last_write {
            match posts.iter().filter(|p| p.path == format!("/hook/{user}") && p.at >= *at).map(|p| p.at).min() {
                Some(t) => latest = latest.max(t),
                None => missing += 1,
            }
        }
        if missing == 0 || Instant::now() > end {
            break (missing, latest);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(unnotified, 0, "acknowledged changes never notified");
    let took = last_notice.duration_since(killed_at);
    assert!(took <= Duration::from_secs(5), "the killed node's webhooks waited {took:?}");
    // A repeat carries the id of the POST it repeats, and the same messages.
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut repeats = 0;
    for p in r.all() {
        let id = p.header("webhook-id").unwrap().to_string();
        if let Some(before) = seen.insert(id, p.messages()) {
            repeats += 1;
            assert_eq!(before, p.messages(), "a repeated webhook-id with other messages");
        }
    }
    assert!(repeats <= users.len(), "{repeats} repeats: more than the POSTs in flight");
    eprintln!("kill -9: last webhook notified {took:?} after the kill; {repeats} POSTs repeated");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame but Engine.IO's pings (answered), within 5 s.
async fn next_frame(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) if t.as_str() == "2" => {
                ws.send(tokio_tungstenite::tungstenite::Message::Text("3".into())).await.ok()?
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => return Some(t.to_string()),
            _ => return None,
        }
    }
}

/// A socket.io client on node C hears a change written through node A, the webhooks console on
/// C hears of a run delivered by another node, and a token deleted through A is refused by B at
/// once, though B had it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_on_one_node_hears_another_and_deleted_tokens_die_everywhere() {
    let Some((db, nats)) = common::cluster_services("socketio_on_one_node_hears_another_and_deleted_tokens_die_everywhere") else {
        return;
    };
    let env = cluster_env(&db, &nats);
    // C serves the API only: whatever it hears of webhook runs comes from the other nodes.
    let mut api_env = env.clone();
    api_env.push(("HERALD_ROLE", "api"));
    let (a, b, c) = (Server::start_with(&env), Server::start_with(&env), Server::start_with(&api_env));
    let personal = a.register("socketuser").await;
    let (_, app) =
        a.access("socketuser", &personal, json!({"name": "w", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, body) = a.post("/socketuser/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201, "{body}");

    // socket.io on C (Engine.IO 4 / Socket.IO 5 frames, as Pryv's client speaks them).
    let host = c.base.trim_start_matches("http://").trim_end_matches('/');
    let url = format!("ws://{host}/socket.io/?auth={app}&EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket upgrade");
    assert!(next_frame(&mut ws).await.is_some_and(|f| f.starts_with("0{")), "engine.io open");
    ws.send(tokio_tungstenite::tungstenite::Message::Text("40/socketuser,".into())).await.unwrap();
    let joined = next_frame(&mut ws).await;
    assert!(joined.as_deref().is_some_and(|f| f.starts_with("40/socketuser,")), "namespace joined: {joined:?}");
    let (st, body) = a.post("/socketuser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "hi"})).await;
    assert_eq!(st, 201, "{body}");
    let heard = loop {
        match next_frame(&mut ws).await {
            Some(f) if f.starts_with("42/socketuser,[\"eventsChanged\"") => break true,
            Some(_) => continue,
            None => break false,
        }
    };
    assert!(heard, "the client on C did not hear the change written through A");

    // The webhooks console's socket on C hears of runs that A or B delivered.
    let r = Receiver::start().await;
    let url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
    let (mut console, _) = tokio_tungstenite::connect_async(url).await.expect("websocket upgrade");
    assert!(next_frame(&mut console).await.is_some_and(|f| f.starts_with("0{")), "engine.io open");
    let join = format!("40/socketuser,{}", json!({"token": personal, "watch": "webhooks"}));
    console.send(tokio_tungstenite::tungstenite::Message::Text(join.into())).await.unwrap();
    let joined = next_frame(&mut console).await;
    assert!(joined.as_deref().is_some_and(|f| f.starts_with("40/socketuser,")), "console joined: {joined:?}");
    let (st, body) = a.post("/socketuser/webhooks", &app, json!({"url": r.url_for("/console")})).await;
    assert_eq!(st, 201, "{body}");
    // Let the creation's own notice pass, then a run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while tokio::time::timeout(Duration::from_millis(50), console.next()).await.is_ok() {}
    let mark = r.count();
    let (st, body) = b.post("/socketuser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "run"})).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(posts_with(&r, "eventsChanged", mark, Duration::from_secs(5)).await, 1);
    let told = loop {
        match next_frame(&mut console).await {
            Some(f) if f.starts_with("42/socketuser,[\"webhooksChanged\"") => break true,
            Some(_) => continue,
            None => break false,
        }
    };
    assert!(told, "the console on C did not hear of the run delivered by another node");

    // A token deleted through A is refused by B, which had it cached.
    let (shared_id, shared) = a
        .access("socketuser", &personal, json!({"name": "reader", "type": "shared", "permissions": [{"streamId": "s", "level": "read"}]}))
        .await;
    let (st, body) = b.get("/socketuser/events", &shared).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = a.delete(&format!("/socketuser/accesses/{shared_id}"), &personal).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = b.get("/socketuser/events", &shared).await;
    assert_eq!(st, 403, "the deleted token still works on the other node: {body}");
}

/// `events.create` trusts the node's caches and checks them inside its own write, without
/// reading the change log before it: still, a stream created through A takes events through B at
/// once, and a token deleted through A is refused by B at once, with nothing written.
#[tokio::test]
async fn creates_on_one_node_see_streams_and_tokens_changed_through_another_at_once() {
    let Some((db, nats)) = common::cluster_services("creates_on_one_node_see_streams_and_tokens_changed_through_another_at_once") else {
        return;
    };
    let env = cluster_env(&db, &nats);
    let (a, b) = (Server::start_with(&env), Server::start_with(&env));
    let personal = a.register("freshuser").await;
    let (app_id, app) =
        a.access("freshuser", &personal, json!({"name": "w", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, body) = a.post("/freshuser/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201, "{body}");
    // B caches the token and the stream tree.
    let (st, body) = b.post("/freshuser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "1"})).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = a.post("/freshuser/streams", &app, json!({"id": "t", "name": "T"})).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = b.post("/freshuser/events", &app, json!({"streamIds": ["t"], "type": "note/txt", "content": "2"})).await;
    assert_eq!(st, 201, "a stream created through A is unknown to B: {body}");
    let (st, body) = a.delete(&format!("/freshuser/accesses/{app_id}"), &personal).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = b.post("/freshuser/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "3"})).await;
    assert_eq!(st, 403, "the deleted token still creates events on the other node: {body}");
    let (st, body) = a.get("/freshuser/events", &personal).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["events"].as_array().map(|e| e.len()), Some(2), "{body}");
}

/// Nodes of another database on the same NATS server hear nothing of this cluster. Were they
/// to, the other cluster's change numbers would pass for their own and their own changes would
/// be dropped as already seen: the notification below would never come.
#[tokio::test]
async fn two_clusters_on_one_nats_server_do_not_hear_each_other() {
    let Some((db1, nats)) = common::cluster_services("two_clusters_on_one_nats_server_do_not_hear_each_other") else { return };
    let db2 = common::new_postgres_database();
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
    let Some((db, nats)) = common::cluster_services("failed_logins_on_one_node_throttle_the_user_on_the_others") else { return };
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
