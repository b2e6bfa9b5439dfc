//! The delivery engine, black-box: a real Herald, real local receivers, real HTTP.
//! Pryv.io's dispatcher cases (spec 6.2, 6.3) and each point of contract section 3.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Receiver, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECOND: Duration = Duration::from_secs(1);

/// A user with a stream `diary` and an app access (manage on `*`): (app token, personal token).
async fn setup(s: &Server, user: &str) -> (String, String) {
    let personal = s.register(user).await;
    let (_, app) =
        s.access(user, &personal, json!({"name": "notifier", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, b) = s.post(&format!("/{user}/streams"), &app, json!({"id": "diary", "name": "Diary"})).await;
    assert_eq!(st, 201, "{b}");
    (app, personal)
}

async fn create_webhook(s: &Server, user: &str, token: &str, body: Value) -> Value {
    let (st, b) = s.post(&format!("/{user}/webhooks"), token, body).await;
    assert_eq!(st, 201, "{b}");
    b["webhook"].clone()
}

async fn add_event(s: &Server, user: &str, token: &str, stream: &str) {
    let (st, b) = s.post(&format!("/{user}/events"), token, json!({"streamIds": [stream], "type": "count/steps", "content": 10})).await;
    assert_eq!(st, 201, "{b}");
}

async fn webhook(s: &Server, user: &str, token: &str, id: &str) -> Value {
    let (st, b) = s.get(&format!("/{user}/webhooks/{id}"), token).await;
    assert_eq!(st, 200, "{b}");
    b["webhook"].clone()
}

/// Poll the webhook until `pred` holds (the engine saves asynchronously).
async fn webhook_until(s: &Server, user: &str, token: &str, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + 5 * SECOND;
    loop {
        let w = webhook(s, user, token, id).await;
        if pred(&w) || Instant::now() > end {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// [3TMH] [7N4L] [Q7B2] [22X1]: one change, one POST at once, one run recorded.
#[tokio::test]
async fn a_change_is_posted_at_once_and_recorded() {
    let s = Server::start();
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap();
    let t = now();
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(1, 5 * SECOND).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].messages(), vec!["eventsChanged"]);
    let meta = &got[0].body["meta"];
    assert_eq!(meta["apiVersion"], "1.9.2");
    assert!(meta["serial"].is_string());
    assert!((meta["serverTime"].as_f64().unwrap() - t).abs() < 0.5);
    let w = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 1).await;
    assert_eq!(w["runCount"], 1);
    assert_eq!(w["failCount"], 0);
    assert_eq!(w["runs"].as_array().unwrap().len(), 1);
    assert_eq!(w["runs"][0]["status"], 200);
    assert!((w["runs"][0]["timestamp"].as_f64().unwrap() - t).abs() < 0.5);
    assert_eq!(w["lastRun"], w["runs"][0]);
}

/// Contract 3.1: each kind of change has its documented name; access changes fire too.
#[tokio::test]
async fn messages_name_the_kind_of_change() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    s.post("/alice/streams", &app, json!({"name": "Other"})).await;
    r.wait_for(1, 5 * SECOND).await;
    s.access("alice", &app, json!({"name": "reader", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    r.wait_for(2, 5 * SECOND).await;
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(3, 5 * SECOND).await;
    let all: Vec<String> = got.iter().flat_map(|g| g.messages()).collect();
    assert_eq!(all, vec!["streamsChanged", "accessesChanged", "eventsChanged"]);
}

/// Spec [73TG]-[86OP] with the real server: changes within minIntervalMs are bundled,
/// de-duplicated, in the next POST, not before the interval.
#[tokio::test]
async fn changes_within_the_interval_are_bundled() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "400")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    add_event(&s, "alice", &app, "diary").await;
    r.wait_for(1, 5 * SECOND).await;
    add_event(&s, "alice", &app, "diary").await;
    add_event(&s, "alice", &app, "diary").await;
    s.post("/alice/streams", &app, json!({"name": "Other"})).await;
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(2, 5 * SECOND).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].messages(), vec!["eventsChanged", "streamsChanged"]);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(380), "second POST after {gap:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 2, "nothing more to send");
}

/// [8Q4E] [PY61] [768L] [PX10] [BLNP] [ODNM] + contract 3.2-3.3: 1 + maxRetries attempts with
/// growing delays, then inactive and silent; reactivation resets retries and delivers again.
#[tokio::test]
async fn failing_endpoint_is_retried_then_deactivated_then_reactivated() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "20")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    r.set_status(400);
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap();
    s.post("/alice/streams", &app, json!({"name": "Other"})).await;
    let got = r.wait_for(6, 10 * SECOND).await;
    assert_eq!(got.len(), 6);
    for g in &got {
        assert_eq!(g.messages(), vec!["streamsChanged"]);
    }
    // Delays 20, 40, 80, 160, 320 ms: each gap at least the one before it.
    let gaps: Vec<Duration> = got.windows(2).map(|p| p[1].at.duration_since(p[0].at)).collect();
    for (gap, want) in gaps.iter().zip([20u64, 40, 80, 160, 320]) {
        assert!(*gap >= Duration::from_millis(want - 5), "gaps {gaps:?}");
    }
    let w = webhook_until(&s, "alice", &app, id, |w| w["state"] == "inactive").await;
    assert_eq!(w["state"], "inactive");
    assert_eq!((w["runCount"].as_u64(), w["failCount"].as_u64(), w["currentRetries"].as_u64()), (Some(6), Some(6), Some(6)));
    assert_eq!(w["runs"][0]["status"], 400);
    // Inactive: no more POSTs.
    add_event(&s, "alice", &app, "diary").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 6);
    // Reactivation.
    r.set_status(200);
    let (st, b) = s.put(&format!("/alice/webhooks/{id}"), &app, json!({"state": "active"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["currentRetries"], 0);
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(7, 5 * SECOND).await;
    assert!(got.len() >= 7);
    let w = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 7).await;
    assert_eq!(w["state"], "active");
    assert_eq!(w["currentRetries"], 0);
}

/// [E5VQ]-[1VIT]: a 503 is retried with the same messages (and the same webhook-id); after the
/// success everything is clear.
#[tokio::test]
async fn a_retry_resends_the_same_delivery() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "100")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    r.set_status(503);
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap();
    add_event(&s, "alice", &app, "diary").await;
    r.wait_for(1, 5 * SECOND).await;
    let w1 = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 1).await;
    assert_eq!(w1["currentRetries"], 1);
    assert_eq!(w1["lastRun"]["status"], 503);
    assert_eq!(w1["lastRun"], w1["runs"][0]);
    r.set_status(201);
    let got = r.wait_for(2, 5 * SECOND).await;
    assert_eq!(got[1].messages(), got[0].messages());
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    let w2 = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 2).await;
    assert_eq!(w2["currentRetries"], 0);
    assert_eq!(w2["failCount"], 1);
    assert_eq!(w2["runs"][0]["status"], 201);
    // A new delivery gets a new webhook-id.
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(3, 5 * SECOND).await;
    assert_ne!(got[2].header("webhook-id"), got[1].header("webhook-id"));
}

/// [6UJH]-[V5NH]: no answer at all is a failed run with status 0; so are a timeout (contract
/// 3.9) and a redirect, which is not followed (contract 3.6).
#[tokio::test]
async fn no_answer_timeout_and_redirect_are_failures() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "5000"), ("HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS", "300")]);
    let (app, _) = setup(&s, "alice").await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = create_webhook(&s, "alice", &app, json!({"url": format!("http://{closed}/gone")})).await;
    let slow = Receiver::start().await;
    slow.set_delay(3 * SECOND);
    let hanging = create_webhook(&s, "alice", &app, json!({"url": slow.url})).await;
    let moved = Receiver::start().await;
    moved.set_status(302);
    let redirect = create_webhook(&s, "alice", &app, json!({"url": moved.url})).await;
    add_event(&s, "alice", &app, "diary").await;
    for (w, status) in [(&dead, 0), (&hanging, 0), (&redirect, 302)] {
        let id = w["id"].as_str().unwrap();
        let got = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 1).await;
        assert_eq!(got["runs"].as_array().unwrap().len(), 1, "{got}");
        assert_eq!(got["runs"][0]["status"], status, "{got}");
        assert_eq!((got["failCount"].as_u64(), got["currentRetries"].as_u64()), (Some(1), Some(1)), "{got}");
        assert_eq!(got["state"], "active");
    }
    assert_eq!(moved.count(), 1, "the redirect was not followed");
}

/// Contract 3.13: 410 Gone turns the webhook inactive at once; 429 with Retry-After delays the
/// next attempt at least that long.
#[tokio::test]
async fn receivers_hints_are_honoured() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let (app, _) = setup(&s, "alice").await;
    let gone = Receiver::start().await;
    gone.set_status(410);
    let g = create_webhook(&s, "alice", &app, json!({"url": gone.url})).await;
    let busy = Receiver::start().await;
    busy.set_status(429);
    busy.set_retry_after(Some(1));
    create_webhook(&s, "alice", &app, json!({"url": busy.url})).await;
    add_event(&s, "alice", &app, "diary").await;
    let w = webhook_until(&s, "alice", &app, g["id"].as_str().unwrap(), |w| w["state"] == "inactive").await;
    assert_eq!((w["state"].as_str(), w["runCount"].as_u64()), (Some("inactive"), Some(1)));
    busy.wait_for(1, 5 * SECOND).await;
    busy.set_status(200);
    let got = busy.wait_for(2, 5 * SECOND).await;
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?} despite Retry-After: 1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gone.count(), 1);
}

/// Contract 3.3: `{state: "inactive"}` stops delivery at once.
#[tokio::test]
async fn deactivation_takes_effect_at_once() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap();
    let (st, _) = s.put(&format!("/alice/webhooks/{id}"), &app, json!({"state": "inactive"})).await;
    assert_eq!(st, 200);
    add_event(&s, "alice", &app, "diary").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 0);
    let w = webhook(&s, "alice", &app, id).await;
    assert_eq!((w["state"].as_str(), w["runCount"].as_u64()), (Some("inactive"), Some(0)));
}

/// Contract 3.10: the signature verifies with the webhook's secret (Standard Webhooks).
#[tokio::test]
async fn posts_are_signed() {
    let s = Server::start();
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(1, 5 * SECOND).await;
    let p = &got[0];
    let (id, ts, sig) = (p.header("webhook-id").unwrap(), p.header("webhook-timestamp").unwrap(), p.header("webhook-signature").unwrap());
    assert!((ts.parse::<f64>().unwrap() - now()).abs() < 5.0);
    let key = base64::engine::general_purpose::STANDARD.decode(w["secret"].as_str().unwrap().trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(serde_json::to_string(&p.body).unwrap().as_bytes());
    let want = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(sig, want);
}

/// Contract 3.11 and [YD6N]/[UM4T]: a change pending at a `kill -9` is delivered after the
/// restart, together with `webhooksServiceBoot`; inactive webhooks get nothing.
#[tokio::test]
async fn nothing_pending_is_lost_on_kill_9() {
    let mut s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "3000")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap().to_string();
    let quiet = Receiver::start().await;
    let w2 = create_webhook(&s, "alice", &app, json!({"url": quiet.url})).await;
    let id2 = w2["id"].as_str().unwrap().to_string();
    s.put(&format!("/alice/webhooks/{id2}"), &app, json!({"state": "inactive"})).await;
    add_event(&s, "alice", &app, "diary").await;
    r.wait_for(1, 5 * SECOND).await;
    // Within the 3 s interval: this change waits, and is saved as pending.
    s.post("/alice/streams", &app, json!({"name": "Other"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 1);
    s.kill9();
    s.restart();
    let got = r.wait_for(2, 8 * SECOND).await;
    assert_eq!(got.len(), 2, "the pending change came after the restart");
    assert_eq!(got[1].messages(), vec!["webhooksServiceBoot", "streamsChanged"]);
    assert_eq!(got[1].body["meta"]["apiVersion"], "1.9.2");
    let w = webhook_until(&s, "alice", &app, &id, |w| w["runCount"] == 2).await;
    assert_eq!(w["runCount"], 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(quiet.count(), 0);
    assert_eq!(webhook(&s, "alice", &app, &id2).await["runCount"], 0);
}

/// Contract 3.12: endpoints that hang do not delay a healthy webhook.
#[tokio::test]
async fn hanging_endpoints_do_not_delay_a_healthy_one() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS", "20000")]);
    let hang = Receiver::start().await;
    hang.set_delay(Duration::from_secs(30));
    // 40 users whose webhook hangs, and one healthy one.
    for i in 0..40 {
        let user = format!("hang{i:02}");
        let (app, _) = setup(&s, &user).await;
        create_webhook(&s, &user, &app, json!({"url": format!("{}?u={user}", hang.url)})).await;
        add_event(&s, &user, &app, "diary").await;
    }
    hang.wait_for(40, 10 * SECOND).await;
    let (app, _) = setup(&s, "healthy").await;
    let ok = Receiver::start().await;
    create_webhook(&s, "healthy", &app, json!({"url": ok.url})).await;
    let t = Instant::now();
    add_event(&s, "healthy", &app, "diary").await;
    let got = ok.wait_for(1, 5 * SECOND).await;
    assert_eq!(got.len(), 1);
    let latency = got[0].at.duration_since(t);
    assert!(latency < Duration::from_millis(1000), "healthy webhook delivered after {latency:?}");
}

/// Contract 3.6: a host name resolving to a private address is refused where the connection
/// is made (a failed run, status 0), even though the URL was accepted.
#[tokio::test]
async fn private_addresses_are_refused_at_connect_time() {
    use std::net::ToSocketAddrs;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let loopback = !host.is_empty()
        && host != "localhost"
        && (host.as_str(), 80).to_socket_addrs().map(|mut a| a.all(|x| x.ip().is_loopback())).unwrap_or(false);
    if !loopback {
        eprintln!("skipped: no host name resolving to loopback on this machine");
        return;
    }
    let s = Server::start_with(&[("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS", "false")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let port = r.url.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
    let w = create_webhook(&s, "alice", &app, json!({"url": format!("http://{host}:{port}/notify")})).await;
    let id = w["id"].as_str().unwrap();
    add_event(&s, "alice", &app, "diary").await;
    let w = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 1).await;
    assert_eq!(w["runs"][0]["status"], 0);
    let (st, b) = s.post(&format!("/alice/webhooks/{id}/test"), &app, json!({})).await;
    common::assert_error(st, &b, 400, "unknown-referenced-resource");
    assert_eq!(r.count(), 0, "the private address was never reached");
}

/// [SNWH1] and issue 3: a scoped webhook fires only for matching changes, with its keys, and a
/// stream created later under a watched one counts.
#[tokio::test]
async fn scoped_webhooks_fire_on_matching_changes_only() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let (app, _) = setup(&s, "alice").await;
    s.post("/alice/streams", &app, json!({"id": "health", "name": "Health"})).await;
    let r = Receiver::start().await;
    create_webhook(
        &s,
        "alice",
        &app,
        json!({"url": r.url, "scopes": {
            "diary": {"kind": "events", "query": {"streams": ["diary"]}},
            "weights": {"kind": "events", "query": {"types": ["mass/*"]}},
            "structure": {"kind": "streams", "query": {"streams": ["diary"]}},
        }}),
    )
    .await;
    add_event(&s, "alice", &app, "health").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.count(), 0, "a change outside every scope is not delivered");
    add_event(&s, "alice", &app, "diary").await;
    let got = r.wait_for(1, 5 * SECOND).await;
    assert_eq!(got[0].messages(), vec!["diary"]);
    s.post("/alice/events", &app, json!({"streamIds": ["health"], "type": "mass/kg", "content": 70})).await;
    let got = r.wait_for(2, 5 * SECOND).await;
    assert_eq!(got[1].messages(), vec!["weights"]);
    let (st, _) = s.post("/alice/streams", &app, json!({"id": "late", "name": "Late", "parentId": "diary"})).await;
    assert_eq!(st, 201);
    let got = r.wait_for(3, 5 * SECOND).await;
    assert_eq!(got[2].messages(), vec!["structure"]);
    add_event(&s, "alice", &app, "late").await;
    let got = r.wait_for(4, 5 * SECOND).await;
    assert_eq!(got[3].messages(), vec!["diary"]);
}

/// Spec [FYOR] and HERALD_WEBHOOKS_RUNS_SIZE: runs keep the newest, newest first.
#[tokio::test]
async fn runs_are_capped_newest_first() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10"), ("HERALD_WEBHOOKS_RUNS_SIZE", "3")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap();
    for i in 1..=5 {
        add_event(&s, "alice", &app, "diary").await;
        r.wait_for(i, 5 * SECOND).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let w = webhook_until(&s, "alice", &app, id, |w| w["runCount"] == 5).await;
    let runs = w["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(w["lastRun"], runs[0]);
    let ts: Vec<f64> = runs.iter().map(|r| r["timestamp"].as_f64().unwrap()).collect();
    assert!(ts[0] >= ts[1] && ts[1] >= ts[2], "{ts:?}");
}

/// A graceful stop lets the POST in flight finish and saves its run: after the restart it is
/// counted, and the boot greeting waits for minIntervalMs after it.
// Multi-threaded: the receiver must keep answering while this thread waits for Herald to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_saves_the_last_runs() {
    let mut s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "1500")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    // The receiver answers after 300 ms: the stop comes while the POST is in flight.
    r.set_delay(Duration::from_millis(300));
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    let id = w["id"].as_str().unwrap().to_string();
    add_event(&s, "alice", &app, "diary").await;
    r.wait_for(1, 5 * SECOND).await;
    s.terminate();
    s.restart();
    r.set_delay(Duration::ZERO);
    let w = webhook(&s, "alice", &app, &id).await;
    assert_eq!(w["runCount"], 1, "{w}");
    assert_eq!(w["runs"][0]["status"], 200, "{w}");
    let got = r.wait_for(2, 5 * SECOND).await;
    assert_eq!(got[1].messages(), vec!["webhooksServiceBoot"]);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(1400), "boot POST {gap:?} after the last run");
}

/// [EXQD] [904D]: a webhook created through the API is live in the dispatcher at once; once
/// deleted it receives nothing more.
#[tokio::test]
async fn created_webhooks_are_live_and_deleted_ones_are_silent() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let (app, _) = setup(&s, "alice").await;
    let r = Receiver::start().await;
    let w = create_webhook(&s, "alice", &app, json!({"url": r.url})).await;
    add_event(&s, "alice", &app, "diary").await;
    assert_eq!(r.wait_for(1, 5 * SECOND).await.len(), 1);
    let (st, b) = s.delete(&format!("/alice/webhooks/{}", w["id"].as_str().unwrap()), &app).await;
    assert_eq!(st, 200, "{b}");
    // At once: the very next change must not reach it.
    add_event(&s, "alice", &app, "diary").await;
    s.post("/alice/streams", &app, json!({"name": "Other"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 1, "a deleted webhook was called");
}
