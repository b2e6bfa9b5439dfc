//! Herald's web pages in a real browser: headless Chromium driven over WebDriver (fantoccini)
//! against the real binary. The consent page's whole flow (an app starts a request, the person
//! signs in and accepts, the app's poll gets a working token), Refuse, unknown and expired
//! keys, and the webhooks console (failed runs, reactivation, a new run appearing live).
//! Each test saves screenshots under `target/screenshots/`.
//!
//! They need `chromedriver` and Chromium (Debian: `chromium`, `chromium-driver`; `.ci/run`
//! installs them). Without chromedriver they say so and pass, so `cargo test` works anywhere;
//! under CI (`CI` or `HERALD_REQUIRE_BROWSER` set, as `.ci/run` does) they fail instead.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Receiver, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A headless Chromium behind its own chromedriver, with a fresh profile.
struct Browser {
    client: Client,
    driver: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Stop chromedriver with its `/shutdown` endpoint, which quits the Chromium it started,
    /// then kill it if it is still there. Killing it alone left its Chromium processes running
    /// (36 per run of this file, 80 after one `.ci/run`), on the machine the benchmarks use next.
    /// Blocking: `Drop` cannot await, and this runs even when the test panicked.
    fn drop(&mut self) {
        shutdown_driver(self.port);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.driver.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `GET /shutdown` to the chromedriver on `port`, over a plain socket; errors are ignored (the
/// caller kills the driver after a while anyway).
fn shutdown_driver(port: u16) {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.write_all(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
}

fn chromedriver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HERALD_CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join("chromedriver")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

async fn browser() -> Option<Browser> {
    let Some(driver_path) = chromedriver() else {
        // Under CI (`.ci/run` installs it), a missing driver is a failure, as for the cluster's
        // services.
        let required = std::env::var_os("CI").is_some() || std::env::var_os("HERALD_REQUIRE_BROWSER").is_some();
        assert!(!required, "chromedriver is required under CI (CI or HERALD_REQUIRE_BROWSER is set)");
        eprintln!("skipped: chromedriver is not installed (Debian: apt-get install chromium chromium-driver)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = Command::new(driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    // This machine has no network: without the background-networking flags Chromium stalls on
    // its own update and sync requests.
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1200,900".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let mut options = json!({ "args": [] });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    options["args"] = json!(std::mem::take(&mut args));
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let mut driver = driver;
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                shutdown_driver(port);
                let _ = driver.kill();
                panic!("cannot start a Chromium session through chromedriver: {e}");
            }
        }
    };
    Some(Browser { client, driver, port, _profile: profile })
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Desktop, then phone width (then back): both layouts on record.
async fn screenshots(c: &Client, name: &str) {
    screenshot(c, name).await;
    c.set_window_size(390, 844).await.unwrap();
    screenshot(c, &format!("{name}-phone")).await;
    c.set_window_size(1200, 900).await.unwrap();
}

/// Wait until `css` matches a displayed element whose text contains `text`.
async fn wait_text(c: &Client, css: &str, text: &str) -> fantoccini::elements::Element {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(found) = c.find_all(Locator::Css(css)).await {
            for e in found {
                if e.is_displayed().await.unwrap_or(false) && e.text().await.unwrap_or_default().contains(text) {
                    return e;
                }
            }
        }
        if Instant::now() > end {
            let body = match c.find(Locator::Css("body")).await {
                Ok(b) => b.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("no displayed {css} containing {text:?}; the page shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map(|v| v.len()).unwrap_or(0)
}

async fn start_request(s: &Server, body: Value) -> Value {
    let (st, b) = s.req("POST", "/reg/access", None, Some(body)).await;
    assert_eq!(st, 201, "{b}");
    b
}

fn diary_request() -> Value {
    json!({
        "requestingAppId": "step-notifier",
        "requestedPermissions": [
            {"streamId": "diary", "level": "contribute", "defaultName": "Diary"},
            {"streamId": "*", "level": "read"}
        ],
        "returnURL": false
    })
}

/// Sign in on the page with the keyboard: type, then Enter.
async fn sign_in(c: &Client, username: &str) {
    wait_text(c, "label", "Username").await;
    c.find(Locator::Id("username")).await.unwrap().send_keys(username).await.unwrap();
    c.find(Locator::Id("password")).await.unwrap().send_keys("secret-pw\u{E007}").await.unwrap();
}

#[tokio::test]
async fn consent_accept_gives_the_app_a_working_token() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let s = Server::start();
    s.register("alice").await;
    let req = start_request(&s, diary_request()).await;
    c.goto(req["authUrl"].as_str().unwrap()).await.unwrap();
    wait_text(c, "h2", "step-notifier asks for access").await;
    screenshots(c, "consent-signin").await;
    sign_in(c, "alice").await;
    wait_text(c, "#permissions li", "see and add to your stream “Diary” (a new stream)").await;
    wait_text(c, "#permissions li", "see all of your data").await;
    screenshots(c, "consent-permissions").await;
    // The app is still waiting.
    let (st, _) = s.req("GET", &format!("/reg/access/{}", req["key"].as_str().unwrap()), None, None).await;
    assert_eq!(st, 201);
    c.find(Locator::Id("accept")).await.unwrap().click().await.unwrap();
    wait_text(c, "#done h2", "Access granted").await;
    screenshot(c, "consent-accepted").await;

    // The app's next poll: ACCEPTED, with a token that works.
    let (st, p) = s.req("GET", &format!("/reg/access/{}", req["key"].as_str().unwrap()), None, None).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["status"], "ACCEPTED");
    assert_eq!(p["username"], "alice");
    let token = p["token"].as_str().unwrap();
    assert!(p["apiEndpoint"].as_str().unwrap().contains(&format!("{token}@")));
    let (st, info) = s.get("/alice/access-info", token).await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(info["type"], "app");
    assert_eq!(info["name"], "step-notifier");
    let (st, e) = s.post("/alice/events", token, json!({"streamIds": ["diary"], "type": "count/steps", "content": 1200})).await;
    assert_eq!(st, 201, "{e}");
    // The token never appeared in the page's address.
    assert!(!c.current_url().await.unwrap().as_str().contains(token));

    // A second request of the same app, accepted again: the same access is reused (checkApp).
    let again = start_request(&s, diary_request()).await;
    c.goto(again["authUrl"].as_str().unwrap()).await.unwrap();
    sign_in(c, "alice").await;
    wait_text(c, "#permissions li", "Diary").await;
    c.find(Locator::Id("accept")).await.unwrap().click().await.unwrap();
    wait_text(c, "#done h2", "Access granted").await;
    let (_, p2) = s.req("GET", &format!("/reg/access/{}", again["key"].as_str().unwrap()), None, None).await;
    assert_eq!(p2["token"], token, "{p2}");
}

#[tokio::test]
async fn consent_refuse() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let s = Server::start();
    s.register("bobby").await;
    let req = start_request(&s, diary_request()).await;
    c.goto(req["authUrl"].as_str().unwrap()).await.unwrap();
    sign_in(c, "bobby").await;
    wait_text(c, "#permissions li", "Diary").await;
    // Keyboard only: Tab from Accept to Refuse, then Enter.
    c.find(Locator::Id("accept")).await.unwrap().send_keys("\u{E004}").await.unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("refuse"));
    focused.send_keys("\u{E007}").await.unwrap();
    wait_text(c, "#done h2", "Access refused").await;
    screenshots(c, "consent-refused").await;
    let (st, p) = s.req("GET", &format!("/reg/access/{}", req["key"].as_str().unwrap()), None, None).await;
    assert_eq!(st, 403);
    assert_eq!(p["status"], "REFUSED");
    assert_eq!(p["reasonId"], "REFUSED_BY_USER");
    // No access was created for the app.
    let personal = s.login("bobby").await;
    let (_, list) = s.get("/bobby/accesses", &personal).await;
    assert!(list["accesses"].as_array().unwrap().iter().all(|a| a["name"] != "step-notifier"), "{list}");
}

#[tokio::test]
async fn consent_unknown_expired_and_answered_keys() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let s = Server::start();
    c.goto(&s.url("/auth?key=AAAAAAAAAAAAAAAA&poll=https%3A%2F%2Fevil.example%2F")).await.unwrap();
    wait_text(c, "#problem-text", "unknown or has expired").await;
    screenshots(c, "consent-unknown-key").await;

    c.goto(&s.url("/auth")).await.unwrap();
    wait_text(c, "#problem-text", "no valid request key").await;

    let mut short = diary_request();
    short["expireAfter"] = json!(300);
    let req = start_request(&s, short).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.goto(req["authUrl"].as_str().unwrap()).await.unwrap();
    wait_text(c, "#problem-text", "unknown or has expired").await;
    screenshot(c, "consent-expired-key").await;

    let req = start_request(&s, diary_request()).await;
    s.req("POST", &format!("/reg/access/{}", req["key"].as_str().unwrap()), None, Some(json!({"status": "REFUSED"}))).await;
    c.goto(req["authUrl"].as_str().unwrap()).await.unwrap();
    wait_text(c, "#problem-text", "already answered (refused)").await;
}

#[tokio::test]
async fn console_shows_failed_runs_and_a_new_run_after_reactivation_live() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let s = Server::start_with(&[("HERALD_WEBHOOKS_MAX_RETRIES", "1")]);
    let personal = s.register("carol").await;
    let (_, app) = s
        .access("carol", &personal, json!({"name": "notifier", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]}))
        .await;
    s.post("/carol/streams", &app, json!({"id": "steps", "name": "Steps"})).await;
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let (st, w) = s.post("/carol/webhooks", &app, json!({"url": receiver.url})).await;
    assert_eq!(st, 201, "{w}");
    let id = w["webhook"]["id"].as_str().unwrap().to_string();
    s.post("/carol/events", &app, json!({"streamIds": ["steps"], "type": "count/steps", "content": 10})).await;
    // One attempt and one retry fail: the webhook turns inactive.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, w) = s.get(&format!("/carol/webhooks/{id}"), &app).await;
        if w["webhook"]["state"] == "inactive" {
            break;
        }
        assert!(Instant::now() < end, "the webhook never turned inactive: {w}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.goto(&s.url("/www/webhooks")).await.unwrap();
    sign_in(c, "carol").await;
    let card = format!("article[data-id=\"{id}\"]");
    wait_text(c, &format!("{card} .badge"), "inactive").await;
    wait_text(c, &format!("{card} h3"), &receiver.url).await;
    wait_text(c, &format!("{card} dl"), "notifier (app)").await;
    wait_text(c, "#live", "Live").await;
    let failed = count(c, &format!("{card} ol.timeline li.fail")).await;
    assert!(failed >= 2, "{failed} failed runs shown");
    assert_eq!(count(c, &format!("{card} ol.timeline li.ok")).await, 0);
    screenshots(c, "console-failed-runs").await;

    // Mark the page: a reload would lose the mark.
    c.execute("window.heraldTestMark = 42; return true;", vec![]).await.unwrap();
    receiver.set_status(200);
    c.find(Locator::Css(&format!("{card} button[data-action=\"reactivate\"]"))).await.unwrap().click().await.unwrap();
    wait_text(c, &format!("{card} .badge"), "active").await;
    // The app writes again: the delivery's run appears without any reload.
    s.post("/carol/events", &app, json!({"streamIds": ["steps"], "type": "count/steps", "content": 20})).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    let end = Instant::now() + Duration::from_secs(15);
    while count(c, &format!("{card} ol.timeline li.ok")).await == 0 {
        assert!(Instant::now() < end, "no successful run appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mark = c.execute("return window.heraldTestMark;", vec![]).await.unwrap();
    assert_eq!(mark, json!(42), "the page was reloaded");
    wait_text(c, &format!("{card} dl"), "HTTP 200").await;
    screenshots(c, "console-after-reactivation").await;

    // Delete, with its confirmation step.
    let del = format!("{card} button[data-action=\"delete\"]");
    c.find(Locator::Css(&del)).await.unwrap().click().await.unwrap();
    wait_text(c, &del, "Confirm delete").await;
    c.find(Locator::Css(&del)).await.unwrap().click().await.unwrap();
    wait_text(c, "#empty", "no webhooks").await;
    let (st, _) = s.get(&format!("/carol/webhooks/{id}"), &app).await;
    assert_eq!(st, 404);
}
