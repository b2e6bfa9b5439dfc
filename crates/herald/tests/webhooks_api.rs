//! Black-box tests of the webhooks API (`webhooks.*`) over real HTTP against the real `herald`
//! binary: every case of Pryv.io's `webhooks.test.js` (spec 6.1, by its id), `[3AE9]` (spec 6.5)
//! and Herald's own choices (contract 3.4-3.8, 3.10).
//!
//! Scoped webhooks (spec 4.1) are in `webhooks_scopes.rs`.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{assert_error, Receiver, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// One user with a personal token, two app accesses and a shared access (spec 6.1 fixture).
struct Fx {
    s: Server,
    u: String,
    personal: String,
    app1: (String, String),
    app2: (String, String),
    shared: (String, String),
}

impl Fx {
    async fn new() -> Fx {
        Self::on(Server::start()).await
    }

    async fn on(s: Server) -> Fx {
        let u = "whuser".to_string();
        let personal = s.register(&u).await;
        let (st, b) = s.post(&format!("/{u}/streams"), &personal, json!({"id": "diary", "name": "Diary"})).await;
        assert_eq!(st, 201, "{b}");
        let perms = json!([{"streamId": "diary", "level": "contribute"}]);
        let app1 = s.access(&u, &personal, json!({"name": "app-one", "type": "app", "permissions": perms})).await;
        let app2 = s.access(&u, &personal, json!({"name": "app-two", "type": "app", "permissions": perms})).await;
        let shared = s
            .access(&u, &personal, json!({"name": "shared-one", "type": "shared", "permissions": [{"streamId": "diary", "level": "read"}]}))
            .await;
        Fx { s, u, personal, app1, app2, shared }
    }

    fn p(&self, rest: &str) -> String {
        format!("/{}{}", self.u, rest)
    }

    fn wh(&self, id: &str) -> String {
        self.p(&format!("/webhooks/{id}"))
    }

    /// Create a webhook with `token`; returns the webhook object.
    async fn create(&self, token: &str, body: Value) -> Value {
        let (st, b) = self.s.post(&self.p("/webhooks"), token, body).await;
        assert_eq!(st, 201, "{b}");
        b["webhook"].clone()
    }

    async fn create_url(&self, token: &str, url: &str) -> Value {
        self.create(token, json!({ "url": url })).await
    }

    async fn list(&self, token: &str) -> Vec<Value> {
        let (st, b) = self.s.get(&self.p("/webhooks"), token).await;
        assert_eq!(st, 200, "{b}");
        b["webhooks"].as_array().unwrap_or_else(|| panic!("no webhooks array: {b}")).clone()
    }

    async fn get_one(&self, token: &str, id: &str) -> Value {
        let (st, b) = self.s.get(&self.wh(id), token).await;
        assert_eq!(st, 200, "{b}");
        assert_webhook_schema(&b["webhook"]);
        b["webhook"].clone()
    }
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|w| w["id"].as_str().unwrap().to_string()).collect()
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect();
    k.sort();
    k
}

const READ_KEYS: &[&str] = &[
    "accessId",
    "created",
    "createdBy",
    "currentRetries",
    "failCount",
    "id",
    "lastRun",
    "maxRetries",
    "minIntervalMs",
    "modified",
    "modifiedBy",
    "runCount",
    "runs",
    "secret",
    "state",
    "url",
];

/// The READ schema (spec 1.2 + contract 3.10): exactly these keys, plus `scopes` only when set.
fn assert_webhook_schema(w: &Value) {
    let mut want: Vec<String> = READ_KEYS.iter().map(|s| s.to_string()).collect();
    if w.get("scopes").is_some() {
        want.push("scopes".into());
        want.sort();
        assert!(w["scopes"].is_object(), "{w}");
    }
    assert_eq!(sorted_keys(w), want, "{w}");
    for k in ["id", "accessId", "url", "createdBy", "modifiedBy", "secret"] {
        assert!(w[k].is_string(), "{k}: {w}");
    }
    assert!(w["state"] == "active" || w["state"] == "inactive", "{w}");
    for k in ["runCount", "failCount", "currentRetries", "maxRetries", "minIntervalMs"] {
        assert!(w[k].is_u64(), "{k}: {w}");
    }
    for k in ["created", "modified"] {
        let t = w[k].as_f64().unwrap_or_else(|| panic!("{k}: {w}"));
        assert!(t > 1.5e9 && t < 1.0e10, "{k} must be in seconds: {w}");
    }
    assert_eq!(sorted_keys(&w["lastRun"]), vec!["status", "timestamp"], "{w}");
    assert!(w["runs"].is_array(), "{w}");
}

/// A freshly created webhook: Pryv's defaults with the platform values (spec 2.4, [Z1XD]).
fn assert_fresh(w: &Value, access_id: &str, url: &str, min_interval_ms: u64, max_retries: u64) {
    assert_webhook_schema(w);
    assert!(w.get("scopes").is_none(), "{w}");
    assert!(!w["id"].as_str().unwrap().is_empty());
    assert_eq!(w["accessId"], access_id, "{w}");
    assert_eq!(w["url"], url, "{w}");
    assert_eq!(w["state"], "active", "{w}");
    assert_eq!(w["runCount"], 0, "{w}");
    assert_eq!(w["failCount"], 0, "{w}");
    assert_eq!(w["lastRun"]["status"], 0, "{w}");
    assert_eq!(w["lastRun"]["timestamp"].as_f64(), Some(0.0), "{w}");
    assert_eq!(w["runs"], json!([]), "{w}");
    assert_eq!(w["currentRetries"], 0, "{w}");
    assert_eq!(w["maxRetries"], max_retries, "{w}");
    assert_eq!(w["minIntervalMs"], min_interval_ms, "{w}");
    assert_eq!(w["createdBy"], access_id, "{w}");
    assert_eq!(w["modifiedBy"], access_id, "{w}");
    assert_eq!(w["created"], w["modified"], "{w}");
    let secret = w["secret"].as_str().unwrap();
    let raw = secret.strip_prefix("whsec_").unwrap_or_else(|| panic!("secret: {secret}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).expect("secret is base64");
    assert_eq!(bytes.len(), 24, "{secret}");
}

/// Poll `getOne` until `pred` holds (or panic after `timeout`).
async fn wait_webhook(fx: &Fx, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + timeout;
    loop {
        let w = fx.get_one(&fx.personal, id).await;
        if pred(&w) {
            return w;
        }
        assert!(Instant::now() < end, "condition not reached in {timeout:?}: {w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// GET /webhooks
// ---------------------------------------------------------------------------------------------

/// [R5KD] [67CX] [WSJG]: an app token lists only its own webhooks.
#[tokio::test]
async fn get_list_app_token_sees_only_its_own_r5kd_67cx_wsjg() {
    let fx = Fx::new().await;
    let w1 = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    let ws = fx.create_url(&fx.shared.1, "https://example.com/shared").await;
    let list = fx.list(&fx.app1.1).await;
    assert!(!list.is_empty());
    for w in &list {
        assert_webhook_schema(w);
        assert_eq!(w["accessId"], fx.app1.0.as_str(), "[67CX] {w}");
        assert_ne!(w["accessId"], fx.app2.0.as_str(), "[WSJG] {w}");
    }
    assert_eq!(ids(&list), vec![w1["id"].as_str().unwrap().to_string()]);
    // Query parameters of `webhooks.get` are ignored (spec 1.2); the token may come from `auth`.
    let (st, b) = fx.s.req("GET", &format!("{}?foo=bar&auth={}", fx.p("/webhooks"), fx.app1.1), None, None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhooks"], json!(list), "{b}");
    let list2 = ids(&fx.list(&fx.app2.1).await);
    assert_eq!(list2, vec![w2["id"].as_str().unwrap().to_string()]);
    assert!(!list2.contains(&ws["id"].as_str().unwrap().to_string()));
}

/// [6MNC] [4YFQ]: a personal token lists the webhooks of every access.
#[tokio::test]
async fn get_list_personal_sees_all_6mnc_4yfq() {
    let fx = Fx::new().await;
    let w1 = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    let ws = fx.create_url(&fx.shared.1, "https://example.com/shared").await;
    let list = fx.list(&fx.personal).await;
    list.iter().for_each(assert_webhook_schema);
    let got = ids(&list);
    assert_eq!(got.len(), 3, "{list:?}");
    for w in [&w1, &w2, &ws] {
        assert!(got.contains(&w["id"].as_str().unwrap().to_string()), "{w}");
    }
}

/// [RIZV] and contract 3.7: a shared token gets 200 and sees only its own webhooks.
#[tokio::test]
async fn get_list_shared_sees_only_its_own_rizv() {
    let fx = Fx::new().await;
    fx.create_url(&fx.app1.1, "http://127.0.0.1:9/one").await;
    let ws = fx.create_url(&fx.shared.1, "http://127.0.0.1:9/shared").await;
    let list = fx.list(&fx.shared.1).await;
    list.iter().for_each(assert_webhook_schema);
    assert_eq!(ids(&list), vec![ws["id"].as_str().unwrap().to_string()]);
    // Nothing yet for a shared access that owns none.
    let (_, other_shared) =
        fx.s.access(
            &fx.u,
            &fx.personal,
            json!({"name": "shared-two", "type": "shared", "permissions": [{"streamId": "diary", "level": "read"}]}),
        )
        .await;
    assert!(fx.list(&other_shared).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// GET /webhooks/:id
// ---------------------------------------------------------------------------------------------

/// [XMB7] [W2SC]: each app access reads its own webhook.
#[tokio::test]
async fn get_one_own_xmb7_w2sc() {
    let fx = Fx::new().await;
    let w1 = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    assert_eq!(fx.get_one(&fx.app1.1, w1["id"].as_str().unwrap()).await, w1, "[XMB7]");
    assert_eq!(fx.get_one(&fx.app2.1, w2["id"].as_str().unwrap()).await, w2, "[W2SC]");
}

/// [BDC2]: an app token cannot read another access's webhook.
#[tokio::test]
async fn get_one_other_access_forbidden_bdc2() {
    let fx = Fx::new().await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    let (st, b) = fx.s.get(&fx.wh(w2["id"].as_str().unwrap()), &fx.app1.1).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.s.get(&fx.wh(w2["id"].as_str().unwrap()), &fx.shared.1).await;
    assert_error(st, &b, 403, "forbidden");
}

/// [O6MM]: unknown id → 404.
#[tokio::test]
async fn get_one_doesnotexist_o6mm() {
    let fx = Fx::new().await;
    let (st, b) = fx.s.get(&fx.wh("doesnotexist"), &fx.app1.1).await;
    assert_error(st, &b, 404, "unknown-resource");
    let (st, b) = fx.s.get(&fx.wh("doesnotexist"), &fx.personal).await;
    assert_error(st, &b, 404, "unknown-resource");
}

/// [D8YQ]: a personal token reads an app's webhook.
#[tokio::test]
async fn get_one_personal_reads_app_webhook_d8yq() {
    let fx = Fx::new().await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    assert_eq!(fx.get_one(&fx.personal, w2["id"].as_str().unwrap()).await, w2);
}

/// [604H]: a shared token reads its own webhook.
#[tokio::test]
async fn get_one_shared_own_604h() {
    let fx = Fx::new().await;
    let ws = fx.create_url(&fx.shared.1, "https://example.com/shared").await;
    assert_eq!(fx.get_one(&fx.shared.1, ws["id"].as_str().unwrap()).await, ws);
}

// ---------------------------------------------------------------------------------------------
// POST /webhooks
// ---------------------------------------------------------------------------------------------

/// [Z1XD] [XKLU]: 201 with exactly the default fields; the stored webhook is the same.
#[tokio::test]
async fn create_app_defaults_z1xd_xklu() {
    let fx = Fx::new().await;
    let url = "https://example.com/pryv";
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({ "url": url })).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(sorted_keys(&b), vec!["meta", "webhook"]);
    let w = &b["webhook"];
    assert_fresh(w, &fx.app1.0, url, 50, 5);
    // [XKLU]: what was stored is what was returned.
    assert_eq!(&fx.get_one(&fx.app1.1, w["id"].as_str().unwrap()).await, w);
    assert_eq!(fx.list(&fx.app1.1).await, vec![w.clone()]);
}

/// [Z1XD] with other platform values: the defaults follow `HERALD_WEBHOOKS_*`.
#[tokio::test]
async fn create_defaults_follow_platform_settings() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "1234"), ("HERALD_WEBHOOKS_MAX_RETRIES", "3")])).await;
    let w = fx.create_url(&fx.app1.1, "https://example.com/pryv").await;
    assert_fresh(&w, &fx.app1.0, "https://example.com/pryv", 1234, 3);
}

/// [60OQ]: the same url twice for one access → 409 with `data.url`; another access may use it.
#[tokio::test]
async fn create_duplicate_url_60oq() {
    let fx = Fx::new().await;
    let url = "https://example.com/dup";
    let first = fx.create_url(&fx.app1.1, url).await;
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({ "url": url })).await;
    assert_error(st, &b, 409, "item-already-exists");
    assert_eq!(b["error"]["data"]["url"], url, "{b}");
    assert_eq!(ids(&fx.list(&fx.app1.1).await), vec![first["id"].as_str().unwrap().to_string()]);
    // Another access may use the same url.
    let other = fx.create_url(&fx.app2.1, url).await;
    assert_eq!(other["url"], url);
    let other_shared = fx.create_url(&fx.shared.1, url).await;
    assert_eq!(other_shared["url"], url);
    // Once deleted, the url is free again for that access.
    let (st, b) = fx.s.delete(&fx.wh(first["id"].as_str().unwrap()), &fx.app1.1).await;
    assert_eq!(st, 200, "{b}");
    fx.create_url(&fx.app1.1, url).await;
}

/// [3VIU]: `url: 123` → 400; a missing url → 400.
#[tokio::test]
async fn create_url_not_a_string_3viu() {
    let fx = Fx::new().await;
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({ "url": 123 })).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({})).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({ "url": null })).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    assert!(fx.list(&fx.personal).await.is_empty());
}

/// [YTLW] [UC6J]: a shared token creates; `accessId` is the shared access.
#[tokio::test]
async fn create_shared_ytlw_uc6j() {
    let fx = Fx::new().await;
    let url = "https://example.com/shared";
    let w = fx.create_url(&fx.shared.1, url).await;
    assert_fresh(&w, &fx.shared.0, url, 50, 5);
    assert_eq!(fx.get_one(&fx.shared.1, w["id"].as_str().unwrap()).await, w, "[UC6J]");
}

/// [3AZO]: a personal token cannot create webhooks (checked before the params).
#[tokio::test]
async fn create_personal_forbidden_3azo() {
    let fx = Fx::new().await;
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.personal, json!({ "url": "doesntmatter" })).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.personal, json!({ "url": "https://example.com/ok" })).await;
    assert_error(st, &b, 403, "forbidden");
    assert!(fx.list(&fx.personal).await.is_empty());
}

/// [3AE9] (spec 6.5): an app token whose only permission is `create-only` can create a webhook.
#[tokio::test]
async fn create_with_create_only_permission_3ae9() {
    let fx = Fx::new().await;
    let (id, token) = fx
        .s
        .access(&fx.u, &fx.personal, json!({"name": "co", "type": "app", "permissions": [{"streamId": "diary", "level": "create-only"}]}))
        .await;
    let w = fx.create_url(&token, "https://example.com/co").await;
    assert_fresh(&w, &id, "https://example.com/co", 50, 5);
}

/// Contract 3.4: `minIntervalMs` not below the platform value, `maxRetries` not above it.
#[tokio::test]
async fn create_limits_on_interval_and_retries() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_MIN_INTERVAL_MS", "1000"), ("HERALD_WEBHOOKS_MAX_RETRIES", "3")])).await;
    let path = fx.p("/webhooks");
    let post = |body: Value| fx.s.post(&path, &fx.app1.1, body);
    for bad in [
        json!({"url": "https://example.com/a", "minIntervalMs": 999}),
        json!({"url": "https://example.com/a", "minIntervalMs": 0}),
        json!({"url": "https://example.com/a", "minIntervalMs": -5}),
        json!({"url": "https://example.com/a", "minIntervalMs": "soon"}),
        json!({"url": "https://example.com/a", "maxRetries": 4}),
        json!({"url": "https://example.com/a", "maxRetries": 100}),
        json!({"url": "https://example.com/a", "maxRetries": -1}),
        json!({"url": "https://example.com/a", "maxRetries": 1.5}),
    ] {
        let (st, b) = post(bad.clone()).await;
        assert_error(st, &b, 400, "invalid-parameters-format");
    }
    assert!(fx.list(&fx.app1.1).await.is_empty());
    // In range: stored as given.
    let w = fx.create(&fx.app1.1, json!({"url": "https://example.com/b", "minIntervalMs": 1500, "maxRetries": 2})).await;
    assert_eq!(w["minIntervalMs"], 1500, "{w}");
    assert_eq!(w["maxRetries"], 2, "{w}");
    let w = fx.get_one(&fx.app1.1, w["id"].as_str().unwrap()).await;
    assert_eq!((w["minIntervalMs"].clone(), w["maxRetries"].clone()), (json!(1500), json!(2)));
    // The bounds themselves are fine.
    let w = fx.create(&fx.app1.1, json!({"url": "https://example.com/c", "minIntervalMs": 1000, "maxRetries": 3})).await;
    assert_eq!((w["minIntervalMs"].clone(), w["maxRetries"].clone()), (json!(1000), json!(3)));
    let w = fx.create(&fx.app1.1, json!({"url": "https://example.com/d", "maxRetries": 0})).await;
    assert_eq!(w["maxRetries"], 0, "{w}");
}

/// Contract 3.4: server-owned fields on create → 403 forbidden; unknown keys → 400.
#[tokio::test]
async fn create_server_owned_and_unknown_fields() {
    let fx = Fx::new().await;
    let url = "https://example.com/owned";
    for (k, v) in [
        ("id", json!("my-own-id")),
        ("accessId", json!(fx.app2.0)),
        ("state", json!("inactive")),
        ("runCount", json!(3)),
        ("failCount", json!(1)),
        ("currentRetries", json!(0)),
        ("lastRun", json!({"status": 200, "timestamp": 1})),
        ("runs", json!([])),
        ("created", json!(1.0)),
        ("createdBy", json!("someone")),
        ("modified", json!(1.0)),
        ("modifiedBy", json!("someone")),
        ("secret", json!("whsec_AAAA")),
    ] {
        let mut body = json!({ "url": url });
        body[k] = v;
        let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, body).await;
        assert_error(st, &b, 403, "forbidden");
        assert!(b["error"]["message"].as_str().unwrap().contains(k), "{k}: {b}");
    }
    for body in [json!({"url": url, "foo": 1}), json!({"url": url, "deleted": 1}), json!({"url": url, "runsSize": 3})] {
        let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, body).await;
        assert_error(st, &b, 400, "invalid-parameters-format");
    }
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!([{ "url": url }])).await;
    assert!(st == 400, "{b}");
    assert!(fx.list(&fx.personal).await.is_empty());
}

/// Contract 3.5: absolute http(s) URLs of at most 2048 characters.
#[tokio::test]
async fn create_url_format() {
    let fx = Fx::new().await;
    let long = |n: usize| {
        let base = "https://example.com/";
        format!("{base}{}", "a".repeat(n - base.len()))
    };
    for bad in [
        "ftp://example.com/hook".to_string(),
        "file:///etc/passwd".to_string(),
        "javascript:alert(1)".to_string(),
        "/relative/hook".to_string(),
        "example.com/hook".to_string(),
        "yololo".to_string(),
        String::new(),
        long(2049),
    ] {
        let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({ "url": bad })).await;
        assert_error(st, &b, 400, "invalid-parameters-format");
    }
    assert!(fx.list(&fx.app1.1).await.is_empty());
    for good in ["http://example.com/hook".to_string(), "https://example.com:8443/a?b=c".to_string(), long(2048)] {
        let w = fx.create_url(&fx.app1.1, &good).await;
        assert_eq!(w["url"], good.as_str());
    }
}

/// Contract 3.6: without `HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS`, literal private addresses and
/// `localhost` are refused at create.
#[tokio::test]
async fn create_refuses_private_urls_by_default() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS", "false")])).await;
    for bad in [
        "http://127.0.0.1:8080/hook",
        "http://127.1.2.3/hook",
        "http://localhost/hook",
        "http://LOCALHOST:3000/hook",
        "http://api.localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        // Numeric host spellings that URL parsers turn into 127.0.0.1 / 10.0.0.1.
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://0177.0.0.1/hook",
        "http://10.1/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://[::]/hook",
        "http://localhost./hook",
        "http://100.64.0.1/hook",
        "http://224.0.0.1/hook",
        "http://255.255.255.255/hook",
    ] {
        let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({ "url": bad })).await;
        assert_error(st, &b, 400, "invalid-parameters-format");
    }
    assert!(fx.list(&fx.app1.1).await.is_empty());
    let w = fx.create_url(&fx.app1.1, "https://example.com/hook").await;
    assert_eq!(w["url"], "https://example.com/hook");
    let w = fx.create_url(&fx.app1.1, "http://8.8.8.8/hook").await;
    assert_eq!(w["url"], "http://8.8.8.8/hook");
}

/// The test harness allows private URLs: the local receiver is accepted.
#[tokio::test]
async fn create_accepts_private_urls_when_allowed() {
    let fx = Fx::new().await;
    for url in ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook", "http://10.0.0.1/hook"] {
        fx.create_url(&fx.app1.1, url).await;
    }
}

/// `HERALD_WEBHOOKS_MAX_PER_ACCESS`: the access's next create fails and creates nothing.
#[tokio::test]
async fn create_max_per_access() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_MAX_PER_ACCESS", "2")])).await;
    let w1 = fx.create_url(&fx.app1.1, "https://example.com/1").await;
    fx.create_url(&fx.app1.1, "https://example.com/2").await;
    let (st, b) = fx.s.post(&fx.p("/webhooks"), &fx.app1.1, json!({"url": "https://example.com/3"})).await;
    assert!((400..500).contains(&st), "{st} {b}");
    assert!(b["error"]["id"].is_string() && b["error"]["message"].is_string(), "{b}");
    assert!(b["meta"].is_object(), "{b}");
    let list = fx.list(&fx.app1.1).await;
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|w| w["url"] != "https://example.com/3"));
    // The limit is per access.
    fx.create_url(&fx.app2.1, "https://example.com/3").await;
    // Deleting one frees a place.
    let (st, b) = fx.s.delete(&fx.wh(w1["id"].as_str().unwrap()), &fx.app1.1).await;
    assert_eq!(st, 200, "{b}");
    fx.create_url(&fx.app1.1, "https://example.com/3").await;
    assert_eq!(fx.list(&fx.personal).await.len(), 3);
}

/// Spec 2.1: webhooks methods are callable in a batch.
#[tokio::test]
async fn webhooks_in_batch() {
    let fx = Fx::new().await;
    let url = "https://example.com/batch";
    let (st, b) =
        fx.s.post(
            &fx.p("/"),
            &fx.app1.1,
            json!([
                {"method": "webhooks.create", "params": {"url": url}},
                {"method": "webhooks.get", "params": {}},
                {"method": "webhooks.create", "params": {"url": url}},
                {"method": "webhooks.create", "params": {"url": 123}},
            ]),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let r = b["results"].as_array().unwrap_or_else(|| panic!("{b}"));
    assert_eq!(r.len(), 4, "{b}");
    let w = &r[0]["webhook"];
    assert_fresh(w, &fx.app1.0, url, 50, 5);
    assert_eq!(r[1]["webhooks"], json!([w.clone()]), "{b}");
    assert_eq!(r[2]["error"]["id"], "item-already-exists", "{b}");
    assert_eq!(r[3]["error"]["id"], "invalid-parameters-format", "{b}");
    // Personal tokens are refused in a batch as well; getOne, update and delete work there too.
    let id = w["id"].as_str().unwrap();
    let (st, b) =
        fx.s.post(
            &fx.p("/"),
            &fx.personal,
            json!([
                {"method": "webhooks.create", "params": {"url": "https://example.com/p"}},
                {"method": "webhooks.getOne", "params": {"id": id}},
                {"method": "webhooks.update", "params": {"id": id, "update": {"state": "inactive"}}},
                {"method": "webhooks.delete", "params": {"id": id}},
                {"method": "webhooks.get", "params": {}},
            ]),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let r = b["results"].as_array().unwrap();
    assert_eq!(r[0]["error"]["id"], "forbidden", "{b}");
    assert_eq!(r[1]["webhook"]["id"], id, "{b}");
    assert_eq!(r[2]["webhook"]["state"], "inactive", "{b}");
    assert_eq!(r[3]["webhookDeletion"]["id"], id, "{b}");
    assert_eq!(r[4]["webhooks"], json!([]), "{b}");
}

// ---------------------------------------------------------------------------------------------
// PUT /webhooks/:id
// ---------------------------------------------------------------------------------------------

/// [C9FU] [JSOH]: `{state:'inactive'}` then `{state:'active'}`; activation resets
/// `currentRetries` to 0, and the stored webhook agrees.
#[tokio::test]
async fn update_state_and_reset_retries_c9fu_jsoh() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    rx.set_status(500);
    let w = fx.create(&fx.app1.1, json!({"url": rx.url, "maxRetries": 1, "minIntervalMs": 50})).await;
    let id = w["id"].as_str().unwrap().to_string();

    // Plain state toggles.
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app1.1, json!({"state": "inactive"})).await;
    assert_eq!(st, 200, "{b}");
    assert_webhook_schema(&b["webhook"]);
    assert_eq!(b["webhook"]["state"], "inactive");
    assert_eq!(fx.get_one(&fx.app1.1, &id).await["state"], "inactive");
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app1.1, json!({"state": "active"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["state"], "active");
    assert_eq!(b["webhook"]["currentRetries"], 0);

    // Make the endpoint fail until the webhook turns inactive with retries counted.
    let (st, b) = fx.s.post(&fx.p("/events"), &fx.personal, json!({"streamIds": ["diary"], "type": "note/txt", "content": "hello"})).await;
    assert_eq!(st, 201, "{b}");
    let failed = wait_webhook(&fx, &id, Duration::from_secs(10), |w| w["state"] == "inactive").await;
    assert!(failed["currentRetries"].as_u64().unwrap() > 0, "{failed}");
    assert!(failed["failCount"].as_u64().unwrap() > 0, "{failed}");

    rx.set_status(200);
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app1.1, json!({"state": "active"})).await;
    assert_eq!(st, 200, "{b}");
    let up = &b["webhook"];
    assert_webhook_schema(up);
    assert_eq!(up["state"], "active", "{up}");
    assert_eq!(up["currentRetries"], 0, "{up}");
    // Only state, currentRetries and the modification fields changed.
    for k in ["id", "accessId", "url", "maxRetries", "minIntervalMs", "created", "createdBy", "secret"] {
        assert_eq!(up[k], w[k], "{k}");
    }
    assert_eq!(up["maxRetries"], 1);
    assert_eq!(up["modifiedBy"], fx.app1.0.as_str());
    assert!(up["modified"].as_f64() >= w["modified"].as_f64());
    // [JSOH]: stored as returned.
    let stored = fx.get_one(&fx.app1.1, &id).await;
    assert_eq!(stored["state"], "active", "{stored}");
    assert_eq!(stored["currentRetries"], 0, "{stored}");
}

/// [PW4I]: protected fields → 403 forbidden; nothing changes.
#[tokio::test]
async fn update_protected_fields_forbidden_pw4i() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let id = w["id"].as_str().unwrap();
    for body in [
        json!({"lastRun": {"status": 201, "timestamp": 1700000000.0}}),
        json!({"url": "https://example.com/other"}),
        json!({"runCount": 4}),
        json!({"state": "inactive", "runCount": 4}),
        json!({"id": "x"}),
        json!({"accessId": fx.app2.0}),
        json!({"minIntervalMs": 10000}),
        json!({"maxRetries": 1}),
        json!({"secret": "whsec_AAAA"}),
    ] {
        let (st, b) = fx.s.put(&fx.wh(id), &fx.app1.1, body.clone()).await;
        assert_error(st, &b, 403, "forbidden");
    }
    assert_eq!(fx.get_one(&fx.app1.1, id).await, w);
}

/// Unknown keys and invalid states → 400.
#[tokio::test]
async fn update_invalid_params() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let id = w["id"].as_str().unwrap();
    for body in [json!({"foo": "bar"}), json!({"state": "foo"}), json!({"state": 1}), json!({"state": null}), json!({"state": "ACTIVE"})] {
        let (st, b) = fx.s.put(&fx.wh(id), &fx.app1.1, body.clone()).await;
        assert_error(st, &b, 400, "invalid-parameters-format");
    }
    assert_eq!(fx.get_one(&fx.app1.1, id).await, w);
}

/// [8T2G]: another access's webhook → 403.
#[tokio::test]
async fn update_other_access_forbidden_8t2g() {
    let fx = Fx::new().await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    let id = w2["id"].as_str().unwrap();
    let (st, b) = fx.s.put(&fx.wh(id), &fx.app1.1, json!({"state": "inactive"})).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.s.put(&fx.wh(id), &fx.shared.1, json!({"state": "inactive"})).await;
    assert_error(st, &b, 403, "forbidden");
    assert_eq!(fx.get_one(&fx.personal, id).await["state"], "active");
}

/// [AR5R]: unknown id → 404.
#[tokio::test]
async fn update_doesnotexist_ar5r() {
    let fx = Fx::new().await;
    let (st, b) = fx.s.put(&fx.wh("doesnotexist"), &fx.app1.1, json!({"state": "inactive"})).await;
    assert_error(st, &b, 404, "unknown-resource");
}

/// [LCKN]: a personal token updates an app's webhook.
#[tokio::test]
async fn update_personal_on_app_webhook_lckn() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.put(&fx.wh(id), &fx.personal, json!({"state": "inactive"})).await;
    assert_eq!(st, 200, "{b}");
    assert_webhook_schema(&b["webhook"]);
    assert_eq!(b["webhook"]["state"], "inactive");
    assert_eq!(b["webhook"]["accessId"], fx.app1.0.as_str());
    assert_eq!(fx.get_one(&fx.app1.1, id).await["state"], "inactive");
}

/// [TMIZ]: a shared token updates its own webhook.
#[tokio::test]
async fn update_shared_own_tmiz() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.shared.1, "https://example.com/shared").await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.put(&fx.wh(id), &fx.shared.1, json!({"state": "inactive"})).await;
    assert_eq!(st, 200, "{b}");
    assert_webhook_schema(&b["webhook"]);
    assert_eq!(b["webhook"]["state"], "inactive");
    assert_eq!(b["webhook"]["modifiedBy"], fx.shared.0.as_str());
}

// ---------------------------------------------------------------------------------------------
// DELETE /webhooks/:id
// ---------------------------------------------------------------------------------------------

fn assert_deletion(b: &Value, id: &str) {
    assert_eq!(sorted_keys(b), vec!["meta", "webhookDeletion"], "{b}");
    assert_eq!(sorted_keys(&b["webhookDeletion"]), vec!["deleted", "id"], "{b}");
    assert_eq!(b["webhookDeletion"]["id"], id, "{b}");
    assert!(b["webhookDeletion"]["deleted"].as_f64().is_some_and(|t| t > 1.5e9 && t < 1.0e10), "{b}");
}

/// [A0CG] [KA98] [5UX7]: delete own → 200 `{webhookDeletion:{id, deleted}}`; it is gone, and a
/// second delete, getOne, update or test → 404.
#[tokio::test]
async fn delete_own_a0cg_ka98_5ux7() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let keep = fx.create_url(&fx.app1.1, "https://example.com/keep").await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.app1.1).await;
    assert_eq!(st, 200, "{b}");
    assert_deletion(&b, id);
    // [KA98]
    let (st, b) = fx.s.get(&fx.wh(id), &fx.app1.1).await;
    assert_error(st, &b, 404, "unknown-resource");
    let (st, b) = fx.s.get(&fx.wh(id), &fx.personal).await;
    assert_error(st, &b, 404, "unknown-resource");
    assert_eq!(ids(&fx.list(&fx.personal).await), vec![keep["id"].as_str().unwrap().to_string()]);
    // [5UX7]
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.app1.1).await;
    assert_error(st, &b, 404, "unknown-resource");
    let (st, b) = fx.s.put(&fx.wh(id), &fx.app1.1, json!({"state": "inactive"})).await;
    assert_error(st, &b, 404, "unknown-resource");
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(id)), &fx.app1.1, json!({})).await;
    assert_error(st, &b, 404, "unknown-resource");
}

/// [ZPRT]: unknown id → 404.
#[tokio::test]
async fn delete_doesnotexist_zprt() {
    let fx = Fx::new().await;
    let (st, b) = fx.s.delete(&fx.wh("doesnotexist"), &fx.app1.1).await;
    assert_error(st, &b, 404, "unknown-resource");
}

/// [7O0F]: another access's webhook → 403, and it stays.
#[tokio::test]
async fn delete_other_access_forbidden_7o0f() {
    let fx = Fx::new().await;
    let w2 = fx.create_url(&fx.app2.1, "https://example.com/two").await;
    let id = w2["id"].as_str().unwrap();
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.app1.1).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.shared.1).await;
    assert_error(st, &b, 403, "forbidden");
    assert_eq!(fx.get_one(&fx.app2.1, id).await, w2);
}

/// [P6X4]: a personal token deletes an app's webhook; then getOne → 404.
#[tokio::test]
async fn delete_personal_on_app_webhook_p6x4() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.app1.1, "https://example.com/one").await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.personal).await;
    assert_eq!(st, 200, "{b}");
    assert_deletion(&b, id);
    let (st, b) = fx.s.get(&fx.wh(id), &fx.app1.1).await;
    assert_error(st, &b, 404, "unknown-resource");
    assert!(fx.list(&fx.app1.1).await.is_empty());
}

/// [OZZB]: a shared token deletes its own webhook.
#[tokio::test]
async fn delete_shared_own_ozzb() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.shared.1, "https://example.com/shared").await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.shared.1).await;
    assert_eq!(st, 200, "{b}");
    assert_deletion(&b, id);
    let (st, b) = fx.s.get(&fx.wh(id), &fx.shared.1).await;
    assert_error(st, &b, 404, "unknown-resource");
}

// ---------------------------------------------------------------------------------------------
// POST /webhooks/:id/test
// ---------------------------------------------------------------------------------------------

/// The test POSTs the receiver got.
fn test_posts(rx: &Receiver) -> Vec<common::Received> {
    rx.all().into_iter().filter(|r| r.messages() == vec!["test".to_string()]).collect()
}

/// Check one test POST: Pryv's body with full `meta` (contract 3.1) and the Standard Webhooks
/// headers, whose signature verifies with the webhook's secret (contract 3.10).
fn assert_test_post(r: &common::Received, secret: &str) {
    let body = &r.body;
    assert_eq!(sorted_keys(body), vec!["messages", "meta"], "{body}");
    assert_eq!(body["messages"], json!(["test"]), "{body}");
    assert_eq!(sorted_keys(&body["meta"]), vec!["apiVersion", "serial", "serverTime"], "{body}");
    assert!(body["meta"]["apiVersion"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(body["meta"]["serial"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(body["meta"]["serverTime"].as_f64().is_some_and(|t| t > 1.5e9 && t < 1.0e10), "{body}");

    let msg_id = r.header("webhook-id").expect("webhook-id header");
    assert!(!msg_id.is_empty());
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp header");
    let ts_n: u64 = ts.parse().unwrap_or_else(|_| panic!("webhook-timestamp: {ts}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(ts_n.abs_diff(now) < 60, "webhook-timestamp {ts_n} vs now {now}");
    let sig = r.header("webhook-signature").expect("webhook-signature header");
    let sig = sig.strip_prefix("v1,").unwrap_or_else(|| panic!("webhook-signature: {sig}"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig_bytes = b64.decode(sig).expect("signature is base64");
    assert_eq!(sig_bytes.len(), 32);
    // The receiver keeps the parsed body; with `preserve_order` its serialization is the sent bytes.
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{msg_id}.{ts}.{}", serde_json::to_string(body).unwrap()).as_bytes());
    assert_eq!(mac.finalize().into_bytes().to_vec(), sig_bytes, "signature does not verify");
}

/// [ZM2B] [Q7KL]: own webhook, receiver at 200 → 200 `{webhook}`; one POST arrived; no run counted.
#[tokio::test]
async fn test_own_webhook_zm2b_q7kl() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    let w = fx.create_url(&fx.app1.1, &rx.url).await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(id)), &fx.app1.1, json!({})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(sorted_keys(&b), vec!["meta", "webhook"]);
    assert_webhook_schema(&b["webhook"]);
    assert_eq!(b["webhook"]["id"], id);
    // [Q7KL]: the POST was made before the answer.
    let posts = rx.all();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_test_post(&posts[0], w["secret"].as_str().unwrap());
    // The test is not a run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = fx.get_one(&fx.app1.1, id).await;
    assert_eq!(after["runCount"], 0, "{after}");
    assert_eq!(after["failCount"], 0, "{after}");
    assert_eq!(after["runs"], json!([]), "{after}");
    assert_eq!(after["lastRun"]["status"], 0, "{after}");
    assert_eq!(after["state"], "active", "{after}");
    assert_eq!(test_posts(&rx).len(), 1);
}

/// [KLRO]: the receiver answers 404 → 400 unknown-referenced-resource with `data.url`.
#[tokio::test]
async fn test_failing_endpoint_klro() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    rx.set_status(404);
    let w = fx.create_url(&fx.app1.1, &rx.url).await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(id)), &fx.app1.1, json!({})).await;
    assert_error(st, &b, 400, "unknown-referenced-resource");
    assert_eq!(b["error"]["data"]["url"], rx.url.as_str(), "{b}");
    assert_eq!(rx.count(), 1);
    // A failed test is not a run either.
    let after = fx.get_one(&fx.app1.1, id).await;
    assert_eq!((after["runCount"].clone(), after["failCount"].clone(), after["currentRetries"].clone()), (json!(0), json!(0), json!(0)));
    assert_eq!(after["state"], "active");
    // A 500 and an endpoint that does not listen fail the same way.
    rx.set_status(500);
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(id)), &fx.app1.1, json!({})).await;
    assert_error(st, &b, 400, "unknown-referenced-resource");
    let dead = fx.create_url(&fx.app1.1, "http://127.0.0.1:9/nothing-here").await;
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(dead["id"].as_str().unwrap())), &fx.app1.1, json!({})).await;
    assert_error(st, &b, 400, "unknown-referenced-resource");
    assert_eq!(b["error"]["data"]["url"], "http://127.0.0.1:9/nothing-here", "{b}");
}

/// [KXA8]: unknown id → 404.
#[tokio::test]
async fn test_doesnotexist_kxa8() {
    let fx = Fx::new().await;
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh("doesnotexist")), &fx.app1.1, json!({})).await;
    assert_error(st, &b, 404, "unknown-resource");
}

/// [KZJD]: another access's webhook → 403 and no POST.
#[tokio::test]
async fn test_other_access_forbidden_kzjd() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    let w2 = fx.create_url(&fx.app2.1, &rx.url).await;
    let path = format!("{}/test", fx.wh(w2["id"].as_str().unwrap()));
    let (st, b) = fx.s.post(&path, &fx.app1.1, json!({})).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.s.post(&path, &fx.shared.1, json!({})).await;
    assert_error(st, &b, 403, "forbidden");
    assert_eq!(rx.count(), 0);
}

/// `webhooks.test` calls the endpoint whatever the webhook's state, and does not change it.
#[tokio::test]
async fn test_inactive_webhook_still_posts() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    let w = fx.create_url(&fx.app1.1, &rx.url).await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.put(&fx.wh(id), &fx.app1.1, json!({"state": "inactive"})).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(id)), &fx.app1.1, json!({})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["state"], "inactive", "{b}");
    assert_eq!(test_posts(&rx).len(), 1);
    assert_eq!(fx.get_one(&fx.app1.1, id).await["state"], "inactive");
}

/// [HYZZ] [SBI7]: a personal token tests an app's webhook.
#[tokio::test]
async fn test_personal_on_app_webhook_hyzz_sbi7() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    let w = fx.create_url(&fx.app1.1, &rx.url).await;
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(w["id"].as_str().unwrap())), &fx.personal, json!({})).await;
    assert_eq!(st, 200, "{b}");
    assert_webhook_schema(&b["webhook"]);
    let posts = test_posts(&rx);
    assert_eq!(posts.len(), 1, "[SBI7]");
    assert_test_post(&posts[0], w["secret"].as_str().unwrap());
}

/// [O8PB] [C62I]: a shared token tests its own webhook.
#[tokio::test]
async fn test_shared_own_o8pb_c62i() {
    let fx = Fx::new().await;
    let rx = Receiver::start().await;
    let w = fx.create_url(&fx.shared.1, &rx.url).await;
    let (st, b) = fx.s.post(&format!("{}/test", fx.wh(w["id"].as_str().unwrap())), &fx.shared.1, json!({})).await;
    assert_eq!(st, 200, "{b}");
    assert_webhook_schema(&b["webhook"]);
    let posts = test_posts(&rx);
    assert_eq!(posts.len(), 1, "[C62I]");
    assert_test_post(&posts[0], w["secret"].as_str().unwrap());
}

// ---------------------------------------------------------------------------------------------
// Contract 3.8: deleting the creating access
// ---------------------------------------------------------------------------------------------

/// Default `keep`: the app's webhook stays; a personal token lists and deletes it.
#[tokio::test]
async fn access_deletion_keeps_webhooks_by_default() {
    let fx = Fx::new().await;
    let w = fx.create_url(&fx.app1.1, "http://127.0.0.1:9/one").await;
    let id = w["id"].as_str().unwrap();
    let (st, b) = fx.s.delete(&fx.p(&format!("/accesses/{}", fx.app1.0)), &fx.personal).await;
    assert_eq!(st, 200, "{b}");
    // (The access deletion itself is announced to the webhook: compare what the API owns.)
    let list = fx.list(&fx.personal).await;
    assert_eq!(ids(&list), vec![id.to_string()]);
    for k in ["accessId", "url", "state", "created", "createdBy", "secret"] {
        assert_eq!(list[0][k], w[k], "{k}");
    }
    assert_eq!(list[0]["state"], "active");
    // The deleted token is no longer usable.
    let (st, _) = fx.s.get(&fx.p("/webhooks"), &fx.app1.1).await;
    assert!(st == 401 || st == 403, "{st}");
    let (st, b) = fx.s.delete(&fx.wh(id), &fx.personal).await;
    assert_eq!(st, 200, "{b}");
    assert_deletion(&b, id);
    assert!(fx.list(&fx.personal).await.is_empty());
}

/// `deactivate`: the webhook stays, inactive; other accesses' webhooks are untouched.
#[tokio::test]
async fn access_deletion_deactivate() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_ON_ACCESS_DELETION", "deactivate")])).await;
    let w = fx.create_url(&fx.app1.1, "http://127.0.0.1:9/one").await;
    let other = fx.create_url(&fx.app2.1, "http://127.0.0.1:9/two").await;
    let (st, b) = fx.s.delete(&fx.p(&format!("/accesses/{}", fx.app1.0)), &fx.personal).await;
    assert_eq!(st, 200, "{b}");
    let got = fx.get_one(&fx.personal, w["id"].as_str().unwrap()).await;
    assert_eq!(got["state"], "inactive", "{got}");
    assert_eq!(got["url"], w["url"]);
    assert_eq!(fx.get_one(&fx.personal, other["id"].as_str().unwrap()).await["state"], "active");
    assert_eq!(fx.list(&fx.personal).await.len(), 2);
}

/// `delete`: the webhook is gone; other accesses' webhooks are untouched.
#[tokio::test]
async fn access_deletion_delete() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_ON_ACCESS_DELETION", "delete")])).await;
    let w = fx.create_url(&fx.app1.1, "http://127.0.0.1:9/one").await;
    let other = fx.create_url(&fx.app2.1, "http://127.0.0.1:9/two").await;
    let (st, b) = fx.s.delete(&fx.p(&format!("/accesses/{}", fx.app1.0)), &fx.personal).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = fx.s.get(&fx.wh(w["id"].as_str().unwrap()), &fx.personal).await;
    assert_error(st, &b, 404, "unknown-resource");
    assert_eq!(ids(&fx.list(&fx.personal).await), vec![other["id"].as_str().unwrap().to_string()]);
}

/// [WCAD1] [WCAD2] [WCAD3] (spec 6.5) under `delete`: an app access deleting itself takes its
/// webhook and those of the shared accesses it created along; an unrelated shared access's
/// webhook stays.
#[tokio::test]
async fn access_deletion_delete_cascades_to_created_accesses_wcad() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_ON_ACCESS_DELETION", "delete")])).await;
    let (child_id, child_token) =
        fx.s.access(&fx.u, &fx.app1.1, json!({"name": "child", "type": "shared", "permissions": [{"streamId": "diary", "level": "read"}]}))
            .await;
    let w_app = fx.create_url(&fx.app1.1, "http://127.0.0.1:9/app").await;
    let w_child = fx.create_url(&child_token, "http://127.0.0.1:9/child").await;
    assert_eq!(w_child["accessId"], child_id.as_str());
    let w_unrelated = fx.create_url(&fx.shared.1, "http://127.0.0.1:9/unrelated").await;
    let (st, b) = fx.s.delete(&fx.p(&format!("/accesses/{}", fx.app1.0)), &fx.app1.1).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["relatedDeletions"][0]["id"], child_id.as_str(), "{b}");
    for gone in [&w_app, &w_child] {
        let (st, b) = fx.s.get(&fx.wh(gone["id"].as_str().unwrap()), &fx.personal).await;
        assert_error(st, &b, 404, "unknown-resource");
    }
    assert_eq!(ids(&fx.list(&fx.personal).await), vec![w_unrelated["id"].as_str().unwrap().to_string()]);
}

/// `deactivate` also applies to the webhooks of the accesses deleted along.
#[tokio::test]
async fn access_deletion_deactivate_cascades_to_created_accesses() {
    let fx = Fx::on(Server::start_with(&[("HERALD_WEBHOOKS_ON_ACCESS_DELETION", "deactivate")])).await;
    let (_, child_token) =
        fx.s.access(&fx.u, &fx.app1.1, json!({"name": "child", "type": "shared", "permissions": [{"streamId": "diary", "level": "read"}]}))
            .await;
    let w_child = fx.create_url(&child_token, "http://127.0.0.1:9/child").await;
    let w_unrelated = fx.create_url(&fx.shared.1, "http://127.0.0.1:9/unrelated").await;
    let (st, b) = fx.s.delete(&fx.p(&format!("/accesses/{}", fx.app1.0)), &fx.personal).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(fx.get_one(&fx.personal, w_child["id"].as_str().unwrap()).await["state"], "inactive");
    assert_eq!(fx.get_one(&fx.personal, w_unrelated["id"].as_str().unwrap()).await["state"], "active");
}
