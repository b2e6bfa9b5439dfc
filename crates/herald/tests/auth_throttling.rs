//! Password guessing (issue 15), over real HTTP against the `herald` binary: failed logins are
//! throttled per user and per client address (429 with `Retry-After`, even for the right
//! password), a success clears the user's failures, quiet time forgets them, registrations are
//! limited per address, the trusted proxy header counts only when a setting names it, and a full
//! password-hashing pool answers 503. Windows are shortened by settings; nothing here depends on
//! how fast the machine is, except where a sleep must outlast a block of a second or two.
mod common;

use std::time::Duration;

use common::{assert_error, Server};
use serde_json::{json, Value};

/// Cheap hashes, no refusal delay, blocks long enough never to end during a test unless it
/// waits for them.
const BASE: &[(&str, &str)] = &[
    ("HERALD_AUTH_ARGON2_MEMORY_KIB", "1024"),
    ("HERALD_AUTH_ARGON2_ITERATIONS", "1"),
    ("HERALD_AUTH_REFUSAL_DELAY_MS", "0"),
    ("HERALD_AUTH_THROTTLE_DELAY_MS", "60000"),
];

fn server(extra: &[(&str, &str)]) -> Server {
    let mut env = BASE.to_vec();
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn post(server: &Server, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
    let mut r = server.client.post(server.url(path)).json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().expect("Retry-After in seconds"));
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    Answer { status, retry_after, body }
}

async fn login_from(server: &Server, username: &str, password: &str, headers: &[(&str, &str)]) -> Answer {
    let body = json!({"username": username, "password": password, "appId": "herald-tests"});
    post(server, &format!("/{username}/auth/login"), headers, body).await
}

async fn login(server: &Server, username: &str, password: &str) -> Answer {
    login_from(server, username, password, &[]).await
}

async fn register_user(server: &Server, username: &str) -> Answer {
    let body = json!({"appId": "herald-tests", "username": username, "password": "secret-pw", "email": format!("{username}@example.com")});
    post(server, "/users", &[], body).await
}

/// 401 invalid-credentials: the password was checked and was wrong.
fn assert_wrong(a: &Answer) {
    assert_error(a.status, &a.body, 401, "invalid-credentials");
    assert_eq!(a.retry_after, None);
}

/// 429 with `Retry-After` (and the same wait in `data.retryAfter`); returns the wait.
fn assert_throttled(a: &Answer) -> u64 {
    assert_error(a.status, &a.body, 429, "too-many-requests");
    let secs = a.retry_after.unwrap_or_else(|| panic!("no Retry-After: {}", a.body));
    assert!(secs >= 1, "{secs}");
    assert_eq!(a.body["error"]["data"]["retryAfter"], json!(secs), "{}", a.body);
    secs
}

#[tokio::test]
async fn failed_logins_block_the_user_even_for_the_right_password() {
    let s = server(&[("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "3"), ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "0")]);
    s.register("alice").await;
    s.register("bobby").await;
    for _ in 0..3 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    let wait = assert_throttled(&login(&s, "alice", "wrong-pw").await);
    assert!((55..=60).contains(&wait), "{wait}");
    // While blocked, the right password is refused too (and nothing is hashed to find out).
    let a = login(&s, "alice", "secret-pw").await;
    assert_throttled(&a);
    assert!(a.body.get("token").is_none(), "{}", a.body);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("user"), "{}", a.body);
    // Another user, from the same address, is not concerned.
    let a = login(&s, "bobby", "secret-pw").await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn a_success_clears_the_failures_of_the_user() {
    let s = server(&[("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "3"), ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "0")]);
    s.register("alice").await;
    for _ in 0..2 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    assert_eq!(login(&s, "alice", "secret-pw").await.status, 200);
    // Two more failures: four in all, but only two since the success.
    for _ in 0..2 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    assert_eq!(login(&s, "alice", "secret-pw").await.status, 200);
    // And the third failure in a row blocks.
    for _ in 0..3 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    assert_throttled(&login(&s, "alice", "secret-pw").await);
}

#[tokio::test]
async fn the_block_doubles_with_each_further_failure() {
    let s = server(&[
        ("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "2"),
        ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "0"),
        ("HERALD_AUTH_THROTTLE_DELAY_MS", "1000"),
    ]);
    s.register("alice").await;
    for _ in 0..2 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    assert_eq!(assert_throttled(&login(&s, "alice", "wrong-pw").await), 1);
    // Once the first block is over, one more failure blocks twice as long.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_wrong(&login(&s, "alice", "wrong-pw").await);
    assert_eq!(assert_throttled(&login(&s, "alice", "secret-pw").await), 2);
}

#[tokio::test]
async fn quiet_time_forgets_failures() {
    let s = server(&[
        ("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "3"),
        ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "0"),
        ("HERALD_AUTH_THROTTLE_QUIET_MS", "300"),
    ]);
    s.register("alice").await;
    for _ in 0..2 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Forgotten: two more failures are two, not four.
    for _ in 0..2 {
        assert_wrong(&login(&s, "alice", "wrong-pw").await);
    }
    assert_eq!(login(&s, "alice", "secret-pw").await.status, 200);
}

#[tokio::test]
async fn failed_logins_from_one_address_block_it_for_every_user() {
    let s = server(&[("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "0"), ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "3")]);
    for u in ["alice", "bobby", "carol"] {
        s.register(u).await;
    }
    assert_wrong(&login(&s, "alice", "wrong-pw").await);
    assert_wrong(&login(&s, "bobby", "wrong-pw").await);
    // Guessing at usernames counts as well.
    let a = login(&s, "nobody-here", "wrong-pw").await;
    assert_error(a.status, &a.body, 404, "unknown-resource");
    let a = login(&s, "carol", "secret-pw").await;
    assert_throttled(&a);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("address"), "{}", a.body);
    assert_throttled(&login(&s, "nobody-else", "wrong-pw").await);
    // A success does not clear an address: a guesser cannot wash it with its own account.
    assert_throttled(&login(&s, "alice", "secret-pw").await);
    // Other requests from that address are not throttled.
    let a = register_user(&s, "dave1").await;
    assert_eq!(a.status, 201, "{}", a.body);
    let (st, b) = s.req("GET", "/service/info", None, None).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn the_proxy_header_names_the_client_only_when_a_setting_says_so() {
    let limits = [("HERALD_AUTH_LOGIN_FAILURES_PER_USER", "0"), ("HERALD_AUTH_LOGIN_FAILURES_PER_ADDRESS", "2")];
    let mut env = limits.to_vec();
    env.push(("HERALD_AUTH_CLIENT_ADDRESS_HEADER", "X-Forwarded-For"));
    let s = server(&env);
    s.register("alice").await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    for _ in 0..2 {
        assert_wrong(&login_from(&s, "alice", "wrong-pw", &from("203.0.113.7")).await);
    }
    assert_throttled(&login_from(&s, "alice", "secret-pw", &from("203.0.113.7")).await);
    // The proxy appends the address it saw: what the client wrote before it does not count.
    assert_throttled(&login_from(&s, "alice", "secret-pw", &from("198.51.100.1, 203.0.113.7")).await);
    assert_eq!(login_from(&s, "alice", "secret-pw", &from("203.0.113.7, 198.51.100.1")).await.status, 200);
    assert_eq!(login_from(&s, "alice", "secret-pw", &from("203.0.113.8")).await.status, 200);

    // Without the setting, the header is ignored: every guess comes from 127.0.0.1.
    let s = server(&limits);
    s.register("alice").await;
    assert_wrong(&login_from(&s, "alice", "wrong-pw", &from("203.0.113.7")).await);
    assert_wrong(&login_from(&s, "alice", "wrong-pw", &from("203.0.113.8")).await);
    assert_throttled(&login_from(&s, "alice", "secret-pw", &from("203.0.113.9")).await);
}

#[tokio::test]
async fn registrations_from_one_address_are_limited() {
    let s = server(&[("HERALD_AUTH_REGISTRATIONS_PER_ADDRESS", "2")]);
    for u in ["alice", "bobby"] {
        let a = register_user(&s, u).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = register_user(&s, "carol").await;
    assert_throttled(&a);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("registrations"), "{}", a.body);
    let (st, b) = s.req("GET", "/reg/carol/check_username", None, None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["reserved"], false, "carol was not created");
    // Logins are another matter.
    assert_eq!(login(&s, "alice", "secret-pw").await.status, 200);
}

#[tokio::test]
async fn a_full_hashing_pool_answers_503_at_once() {
    // One hashing thread, no queue, and hashes that take a while: of several logins sent at
    // once, one holds the thread and the others are refused instead of waiting.
    let s = Server::start_with(&[
        ("HERALD_AUTH_HASH_THREADS", "1"),
        ("HERALD_AUTH_HASH_QUEUE", "0"),
        ("HERALD_AUTH_ARGON2_MEMORY_KIB", "65536"),
        ("HERALD_AUTH_ARGON2_ITERATIONS", "6"),
        ("HERALD_AUTH_REFUSAL_DELAY_MS", "0"),
    ]);
    s.register("alice").await;
    let answers = futures::future::join_all((0..4).map(|_| login(&s, "alice", "secret-pw"))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(ok >= 1, "{:?}", answers.iter().map(|a| &a.body).collect::<Vec<_>>());
    assert!(!busy.is_empty(), "{:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    assert_eq!(ok + busy.len(), 4);
    for a in busy {
        assert_error(a.status, &a.body, 503, "api-unavailable");
        assert_eq!(a.retry_after, Some(1));
    }
    // Refusals by the pool are not failed logins: the user is not throttled.
    assert_eq!(login(&s, "alice", "secret-pw").await.status, 200);
}
