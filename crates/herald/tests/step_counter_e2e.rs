//! The webhooks guide's use case, end to end: a real Herald, the `step-counter` example service
//! (in-process, on a real port) fed by Herald's signed webhook POSTs, reading the steps with its
//! own read token, and a local receiver for its threshold notifications.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Receiver, Server};
use serde_json::{json, Value};

const USER: &str = "walker";
const TIMEOUT: Duration = Duration::from_secs(10);

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

async fn add_steps(s: &Server, token: &str, steps: i64) -> String {
    let (st, b) =
        s.post(&format!("/{USER}/events"), token, json!({"streamIds": ["activity"], "type": "count/steps", "content": steps})).await;
    assert_eq!(st, 201, "{b}");
    b["event"]["id"].as_str().unwrap().to_string()
}

/// Wait until the service counts `want` steps on `date`, and return its stats.
async fn wait_total(svc: &step_counter::Handle, date: &str, want: i64) -> step_counter::Stats {
    let stats = svc.wait_for(TIMEOUT, |s| s.totals.get(date).copied().unwrap_or(0) == want).await;
    assert_eq!(stats.totals.get(date).copied().unwrap_or(0), want, "{stats:?}");
    stats
}

/// Poll `pred` until it holds (or `timeout`).
async fn eventually(timeout: Duration, pred: impl Fn() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !pred() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The user, stream `activity`, the access that manages the webhook (app), and a distinct,
/// read-only one that the service fetches data with: (app token, read token).
async fn accounts(s: &Server) -> (String, String) {
    let personal = s.register(USER).await;
    let (_, app) = s
        .access(USER, &personal, json!({"name": "step-webhooks", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]}))
        .await;
    let (st, b) = s.post(&format!("/{USER}/streams"), &app, json!({"id": "activity", "name": "Activity"})).await;
    assert_eq!(st, 201, "{b}");
    let (_, read) = s.access(USER, &app, json!({"name": "step-counter", "permissions": [{"streamId": "activity", "level": "read"}]})).await;
    (app, read)
}

#[tokio::test]
async fn steps_are_counted_and_the_threshold_is_notified_once_a_day() {
    let s = Server::start();
    let (app, read) = accounts(&s).await;
    // Something in another stream, which the read token cannot see.
    let (st, b) = s.post(&format!("/{USER}/streams"), &app, json!({"id": "elsewhere", "name": "Elsewhere"})).await;
    assert_eq!(st, 201, "{b}");

    let notified = Receiver::start().await;
    // Bind first, so the webhook can be created with the service's URL and its secret given to
    // the service at start.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/herald", listener.local_addr().unwrap());
    let (st, b) = s.post(&format!("/{USER}/webhooks"), &app, json!({"url": url})).await;
    assert_eq!(st, 201, "{b}");
    let webhook_id = b["webhook"]["id"].as_str().unwrap().to_string();
    let secret = b["webhook"]["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{b}");

    let config =
        step_counter::Config::new(s.url(&format!("/{USER}/")), read.clone(), secret.clone(), 10_000).with_notify_url(notified.url.clone());
    let svc = step_counter::start(listener, config).await.unwrap();
    // The first sync runs at start, with nothing to count yet.
    let stats = svc.wait_for(TIMEOUT, |s| s.syncs >= 1).await;
    assert!(stats.syncs >= 1 && stats.totals.is_empty(), "{stats:?}");

    let today = step_counter::utc_date(now());
    let a = add_steps(&s, &app, 4000).await;
    let b_id = add_steps(&s, &app, 3000).await;
    let _c = add_steps(&s, &app, 2500).await;
    let stats = wait_total(&svc, &today, 9500).await;
    assert!(stats.webhooks_accepted >= 1, "{stats:?}");
    assert!(stats.notifications.is_empty(), "{stats:?}");
    assert_eq!(notified.count(), 0);

    // Other types and other streams do not count.
    let (st, b) =
        s.post(&format!("/{USER}/events"), &app, json!({"streamIds": ["activity"], "type": "note/txt", "content": "walked"})).await;
    assert_eq!(st, 201, "{b}");
    let (st, b) =
        s.post(&format!("/{USER}/events"), &app, json!({"streamIds": ["elsewhere"], "type": "count/steps", "content": 50_000})).await;
    assert_eq!(st, 201, "{b}");

    // Crossing the threshold: exactly one notification, with the day's total. The service
    // notifies before it publishes the totals of a sync, so once 10500 shows, the POST is done.
    let _d = add_steps(&s, &app, 1000).await;
    let stats = wait_total(&svc, &today, 10_500).await;
    let want = step_counter::Notification { date: today.clone(), steps: 10_500, threshold: 10_000 };
    assert_eq!(stats.notifications, vec![want]);
    let got = notified.all();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, json!({"date": today, "steps": 10_500, "threshold": 10_000}));

    // An update: 3000 → 500, below the threshold again.
    let (st, b) = s.put(&format!("/{USER}/events/{b_id}"), &app, json!({"content": 500})).await;
    assert_eq!(st, 200, "{b}");
    wait_total(&svc, &today, 8000).await;
    // A deletion, in Pryv's two steps: the first DELETE trashes…
    let (st, b) = s.delete(&format!("/{USER}/events/{a}"), &app).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["event"]["trashed"], true, "{b}");
    wait_total(&svc, &today, 4000).await;
    // …the second deletes for good (it comes back as an eventDeletion).
    let (st, b) = s.delete(&format!("/{USER}/events/{a}"), &app).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["eventDeletion"]["id"].is_string(), "{b}");
    // Over the threshold again the same day: no second notification.
    add_steps(&s, &app, 7000).await;
    let stats = wait_total(&svc, &today, 11_000).await;
    assert_eq!(stats.notifications.len(), 1, "{stats:?}");
    assert_eq!(stats.events, 4, "a (deleted) is gone, b c d and the 7000 remain: {stats:?}");
    assert_eq!(notified.count(), 1);

    // Steps of another day have their own total (and their own notification).
    let yesterday = now() - 86_400.0;
    let (st, b) = s
        .post(
            &format!("/{USER}/events"),
            &app,
            json!({"streamIds": ["activity"], "type": "count/steps", "content": 12_000, "time": yesterday}),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let ydate = step_counter::utc_date(yesterday);
    let stats = wait_total(&svc, &ydate, 12_000).await;
    assert_eq!(stats.totals.get(&today), Some(&11_000));
    assert_eq!(stats.notifications.len(), 2, "{stats:?}");
    assert_eq!(stats.notifications[1], step_counter::Notification { date: ydate, steps: 12_000, threshold: 10_000 });
    assert!(eventually(TIMEOUT, || notified.count() == 2).await);

    // Herald's runs were all answered 200.
    let (st, w) = s.get(&format!("/{USER}/webhooks/{webhook_id}"), &app).await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["webhook"]["failCount"], 0, "{w}");
    assert!(w["webhook"]["runs"].as_array().unwrap().iter().all(|r| r["status"] == 200), "{w}");
    assert_eq!(svc.stats().webhooks_rejected, 0);
    assert_eq!(svc.stats().sync_failures, 0, "{:?}", svc.stats());
}

#[tokio::test]
async fn unsigned_or_badly_signed_posts_are_refused() {
    let s = Server::start();
    let personal = s.register(USER).await;
    let (st, b) = s.post(&format!("/{USER}/streams"), &personal, json!({"id": "activity", "name": "Activity"})).await;
    assert_eq!(st, 201, "{b}");
    let (_, read) =
        s.access(USER, &personal, json!({"name": "step-counter", "permissions": [{"streamId": "activity", "level": "read"}]})).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = step_counter::start(listener, step_counter::Config::new(s.url(&format!("/{USER}/")), read, secret, 10_000)).await.unwrap();
    let first = svc.wait_for(TIMEOUT, |s| s.syncs >= 1).await;
    assert_eq!(first.syncs, 1, "{first:?}");

    let client = reqwest::Client::new();
    let body =
        serde_json::to_vec(&json!({"messages": ["eventsChanged"], "meta": {"apiVersion": "1.9.2", "serverTime": now(), "serial": "1"}}))
            .unwrap();
    let post = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut r = client.post(svc.url()).header("content-type", "application/json").body(body);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let ts = now() as i64;
    let good = step_counter::sign(secret, "msg_1", ts, &body).unwrap();
    let headers = |id: &str, ts: i64, sig: &str| {
        vec![("webhook-id", id.to_string()), ("webhook-timestamp", ts.to_string()), ("webhook-signature", sig.to_string())]
    };

    // No signature at all (Pryv.io's plain POST).
    assert_eq!(post(vec![], body.clone()).await, 401);
    // A wrong signature, a signature for another body, another secret, another id.
    assert_eq!(post(headers("msg_1", ts, "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), body.clone()).await, 401);
    assert_eq!(post(headers("msg_1", ts, &good), b"{\"messages\":[\"test\"]}".to_vec()).await, 401);
    let other = step_counter::sign("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "msg_1", ts, &body).unwrap();
    assert_eq!(post(headers("msg_1", ts, &other), body.clone()).await, 401);
    assert_eq!(post(headers("msg_2", ts, &good), body.clone()).await, 401);
    // Correctly signed, but more than five minutes old or ahead.
    for skew in [-400, 400] {
        let sig = step_counter::sign(secret, "msg_1", ts + skew, &body).unwrap();
        assert_eq!(post(headers("msg_1", ts + skew, &sig), body.clone()).await, 401);
    }
    let stats = svc.stats();
    assert_eq!((stats.webhooks_rejected, stats.webhooks_accepted, stats.syncs), (7, 0, 1), "{stats:?}");

    // Correctly signed, within the tolerance: accepted, and it triggers a sync — whatever the
    // message (here webhooksServiceBoot).
    let boot = serde_json::to_vec(&json!({"messages": ["webhooksServiceBoot"], "meta": {}})).unwrap();
    let sig = step_counter::sign(secret, "msg_3", ts - 60, &boot).unwrap();
    assert_eq!(post(headers("msg_3", ts - 60, &sig), boot).await, 200);
    let stats = svc.wait_for(TIMEOUT, |s| s.syncs >= 2).await;
    assert_eq!((stats.webhooks_accepted, stats.syncs), (1, 2), "{stats:?}");
    // Other methods are not webhooks; the status page is there.
    let st = client.get(svc.url()).send().await.unwrap().status().as_u16();
    assert_eq!(st, 405);
    let status: Value = client.get(format!("{}status", svc.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["webhooksRejected"], 7, "{status}");
}

/// A burst of changes while a sync is running is caught up by one more sync; syncs never run
/// at once, and nothing is missed, with the plain `modifiedSince = <last serverTime>` pattern
/// (`Config::overlap` is zero).
#[tokio::test]
async fn bursts_are_coalesced_and_nothing_is_missed() {
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "10")]);
    let (app, read) = accounts(&s).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (st, b) = s.post(&format!("/{USER}/webhooks"), &app, json!({"url": url})).await;
    assert_eq!(st, 201, "{b}");
    let secret = b["webhook"]["secret"].as_str().unwrap().to_string();
    let mut config = step_counter::Config::new(s.url(&format!("/{USER}/")), read, secret, 1_000_000);
    // Small pages, to exercise paging.
    config.page_size = 7;
    let svc = step_counter::start(listener, config).await.unwrap();
    let today = step_counter::utc_date(now());
    // 60 events written one after the other, as fast as possible…
    let mut want = 0;
    for i in 1..=60 {
        add_steps(&s, &app, i).await;
        want += i;
    }
    // …then 20 at once.
    let writes = (0..20).map(|i| {
        let (client, url, app) = (s.client.clone(), s.url(&format!("/{USER}/events")), app.clone());
        tokio::spawn(async move {
            let r = client
                .post(url)
                .header("Authorization", app)
                .json(&json!({"streamIds": ["activity"], "type": "count/steps", "content": 1000 + i}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
        })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    want += (0..20).map(|i| 1000 + i).sum::<i64>();
    let stats = wait_total(&svc, &today, want).await;
    assert_eq!(stats.events, 80, "{stats:?}");
    assert_eq!(stats.sync_failures, 0, "{stats:?}");
    assert!(stats.notifications.is_empty());
    // One more sync changes nothing.
    svc.sync_now().await.unwrap();
    assert_eq!(svc.total(&today), want);
}
