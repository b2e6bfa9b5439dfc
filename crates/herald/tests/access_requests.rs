//! Access requests over real HTTP (`pryv-api-extras.md` §1, contract §4): creation, polls and
//! their statuses, outcomes posted as a consent page posts them, Herald's checks of an ACCEPTED
//! token, expiry, retention, the cap, and `accesses.checkApp`.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

fn diary_request() -> Value {
    json!({
        "requestingAppId": "diary-app",
        "requestedPermissions": [{"streamId": "diary", "level": "contribute", "defaultName": "Diary"}],
        "languageCode": "fr",
        "returnURL": false,
        "clientData": {"app": {"version": 1}}
    })
}

async fn start_request(s: &Server, body: Value) -> Value {
    let (st, b) = s.req("POST", "/reg/access", None, Some(body)).await;
    assert_eq!(st, 201, "{b}");
    b
}

/// What a consent page does on Accept: a new app access with the checked permissions.
async fn grant(s: &Server, user: &str, personal: &str, request: &Value) -> String {
    let (st, check) = s
        .post(
            &format!("/{user}/accesses/check-app"),
            personal,
            json!({"requestingAppId": request["requestingAppId"], "requestedPermissions": request["requestedPermissions"]}),
        )
        .await;
    assert_eq!(st, 200, "{check}");
    let (_, token) = s
        .access(user, personal, json!({"name": request["requestingAppId"], "type": "app", "permissions": check["checkedPermissions"]}))
        .await;
    token
}

#[tokio::test]
async fn create_and_poll_answer_as_pryv() {
    let s = Server::start();
    let b = start_request(&s, diary_request()).await;
    assert_eq!(b.as_object().unwrap().keys().collect::<Vec<_>>(), ["status", "key", "authUrl", "poll", "poll_rate_ms"], "{b}");
    assert_eq!(b["status"], "NEED_SIGNIN");
    let key = b["key"].as_str().unwrap();
    assert_eq!(key.len(), 16);
    assert!(key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    assert_eq!(b["poll"], format!("{}/reg/access/{key}", s.base));
    assert_eq!(b["poll_rate_ms"], 1000);
    let auth = b["authUrl"].as_str().unwrap();
    assert!(auth.starts_with(&format!("{}/auth?lang=fr&key={key}&requestingAppId=diary-app&poll=", s.base)), "{auth}");
    assert!(!auth.contains("returnURL"), "false is not appended: {auth}");
    assert!(b.get("meta").is_none(), "register-style answers carry no meta: {b}");

    // lib-js keeps the trailing slash of serviceInfo.access.
    let (st, _) = s.req("POST", "/reg/access/", None, Some(diary_request())).await;
    assert_eq!(st, 201);

    let (st, p) = s.req("GET", &format!("/reg/access/{key}"), None, None).await;
    assert_eq!(st, 201, "{p}");
    let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "status",
            "serviceInfo",
            "key",
            "requestingAppId",
            "requestedPermissions",
            "poll",
            "authUrl",
            "poll_rate_ms",
            "lang",
            "returnURL",
            "oauthState",
            "clientData"
        ]
    );
    assert_eq!(p["returnURL"], false);
    assert_eq!(p["lang"], "fr");
    assert_eq!(p["clientData"], json!({"app": {"version": 1}}));
    assert_eq!(p["serviceInfo"]["access"], format!("{}/reg/access/", s.base));
    assert!(p["serviceInfo"].get("features").is_none());
    assert!(p.get("deviceName").is_none());

    // Service info leads to it, and to the assets of Pryv's sign-in button.
    let (_, info) = s.req("GET", "/reg/service/info", None, None).await;
    assert_eq!(info["access"], format!("{}/reg/access/", s.base));
    let assets = info["assets"]["definitions"].as_str().unwrap();
    let index: Value = reqwest::get(assets).await.unwrap().json().await.unwrap();
    for file in ["button.css", "button.html", "messages.json"] {
        assert_eq!(
            index["lib-js"]["buttonSignIn"][file.split('.').nth(1).map(|e| if e == "json" { "messages" } else { e }).unwrap()],
            file
        );
        let r = reqwest::get(format!("{}/www/assets/{file}", s.base)).await.unwrap();
        assert_eq!(r.status(), 200, "{file}");
    }
}

#[tokio::test]
async fn bad_creations_are_refused_and_store_nothing() {
    let s = Server::start_with(&[("HERALD_ACCESS_MAX_LIVE_REQUESTS", "2")]);
    let cases = [
        (json!({"requestedPermissions": [{"streamId": "a", "level": "read"}]}), "Missing or invalid requestingAppId"),
        (json!({"requestingAppId": 3, "requestedPermissions": [{"streamId": "a", "level": "read"}]}), "Missing or invalid requestingAppId"),
        (json!({"requestingAppId": "x"}), "Missing or invalid requestedPermissions"),
        (json!({"requestingAppId": "x", "requestedPermissions": []}), "Missing or invalid requestedPermissions"),
        (
            json!({"requestingAppId": "x", "requestedPermissions": [{}], "authUrl": "https://evil.example/consent"}),
            "authUrl does not match any access:trustedAuthUrls entry (none configured)",
        ),
        (
            json!({"requestingAppId": "x", "requestedPermissions": [{}], "returnURL": "javascript:alert(1)"}),
            "Invalid returnURL: it must be an absolute http(s) URL without credentials",
        ),
        (json!({"requestingAppId": "x", "requestedPermissions": [{}], "expireAfter": -5}), ""),
        (json!([1, 2]), "The request body must be a JSON object"),
    ];
    for (body, message) in cases {
        let (st, b) = s.req("POST", "/reg/access", None, Some(body.clone())).await;
        assert_eq!(st, 400, "{body} → {b}");
        assert_eq!(b["error"]["id"], "invalid-parameters", "{b}");
        if !message.is_empty() {
            assert_eq!(b["error"]["message"], message);
        }
    }
    // Not JSON at all.
    let r = s.client.post(s.url("/reg/access")).header("Content-Type", "application/json").body("{nope").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["id"], "invalid-parameters");

    // None of these counted: two fit under the cap of 2, the third is refused.
    start_request(&s, diary_request()).await;
    start_request(&s, diary_request()).await;
    let (st, b) = s.req("POST", "/reg/access", None, Some(diary_request())).await;
    assert_eq!(st, 429, "{b}");
    assert_eq!(b["error"]["id"], "too-many-requests");
}

#[tokio::test]
async fn unknown_keys_and_bad_outcomes() {
    let s = Server::start();
    for path in ["/reg/access/AAAAAAAAAAAAAAAA", "/reg/access/short", "/reg/access/..%2F..%2Fetc"] {
        let (st, b) = s.req("GET", path, None, None).await;
        assert_eq!(st, 400, "{path}: {b}");
        assert_eq!(b, json!({"error": {"id": "unknown-access-key", "message": "Unknown or expired access key"}}));
        let (st, b) = s.req("POST", path, None, Some(json!({"status": "REFUSED"}))).await;
        assert_eq!((st, b["error"]["id"].clone()), (400, json!("unknown-access-key")));
    }
    let key = start_request(&s, diary_request()).await["key"].as_str().unwrap().to_string();
    let path = format!("/reg/access/{key}");
    for (body, message) in [
        (json!({"status": "MAYBE"}), "status must be ACCEPTED, REFUSED, ERROR, or REDIRECTED"),
        (json!({"status": "ACCEPTED", "username": "someone"}), "ACCEPTED requires username and token"),
        (json!({"status": "REDIRECTED", "redirectUrl": "https://elsewhere.example/"}), ""),
    ] {
        let (st, b) = s.req("POST", &path, None, Some(body.clone())).await;
        assert_eq!(st, 400, "{body}: {b}");
        assert_eq!(b["error"]["id"], "invalid-parameters");
        if !message.is_empty() {
            assert_eq!(b["error"]["message"], message);
        }
    }
    // PUT is not a route (as Pryv: it falls through to the per-user router).
    let (st, _) = s.req("PUT", &path, None, Some(json!({"status": "REFUSED"}))).await;
    assert_eq!(st, 404);
    // Still waiting.
    let (st, p) = s.req("GET", &path, None, None).await;
    assert_eq!((st, p["status"].clone()), (201, json!("NEED_SIGNIN")));
}

#[tokio::test]
async fn accepted_with_a_verified_token_then_the_app_uses_it() {
    let s = Server::start();
    let personal = s.register("alice").await;
    let req = start_request(&s, diary_request()).await;
    let key = req["key"].as_str().unwrap();
    let path = format!("/reg/access/{key}");
    let (_, waiting) = s.req("GET", &path, None, None).await;

    // A token that is not an app access of alice, or that grants something else, is refused
    // and changes nothing.
    let (_, other) =
        s.access("alice", &personal, json!({"name": "other", "type": "app", "permissions": [{"streamId": "*", "level": "read"}]})).await;
    for (token, reason) in
        [("not-a-token", "token-invalid"), (personal.as_str(), "not-app-access"), (other.as_str(), "permissions-mismatch")]
    {
        let (st, b) = s.req("POST", &path, None, Some(json!({"status": "ACCEPTED", "username": "alice", "token": token}))).await;
        assert_eq!(st, 400, "{b}");
        assert_eq!(b["error"]["id"], "invalid-consent-grant");
        assert_eq!(b["error"]["data"]["reason"], reason);
    }
    let (st, b) = s.req("POST", &path, None, Some(json!({"status": "ACCEPTED", "username": "nobody", "token": other}))).await;
    assert_eq!((st, b["error"]["data"]["reason"].clone()), (400, json!("token-invalid")));
    let (st, p) = s.req("GET", &path, None, None).await;
    assert_eq!((st, &p), (201, &waiting));

    // The consent page's way: checkApp, a new app access, ACCEPTED without apiEndpoint.
    let token = grant(&s, "alice", &personal, &waiting).await;
    let (st, b) = s
        .req("POST", &path, None, Some(json!({"status": "ACCEPTED", "username": "alice", "token": token, "requestingAppId": "evil"})))
        .await;
    assert_eq!(st, 200, "{b}");
    let endpoint = s.base.replace("http://", &format!("http://{token}@")) + "/alice/";
    assert_eq!(b, json!({"status": "ACCEPTED", "username": "alice", "token": token, "apiEndpoint": endpoint}));
    let (st, p) = s.req("GET", &path, None, None).await;
    assert_eq!((st, &p), (200, &b));

    // The token works, with what was asked (the stream was created from its defaultName).
    let (st, info) = s.get("/alice/access-info", &token).await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(info["permissions"], json!([{"streamId": "diary", "level": "contribute"}]));
    let (st, e) = s.post("/alice/events", &token, json!({"streamIds": ["diary"], "type": "note/txt", "content": "hi"})).await;
    assert_eq!(st, 201, "{e}");

    // A decided request never changes.
    let (st, r) = s.req("POST", &path, None, Some(json!({"status": "REFUSED"}))).await;
    assert_eq!((st, r["error"]["id"].clone()), (400, json!("invalid-parameters")));
    let (_, p) = s.req("GET", &path, None, None).await;
    assert_eq!(p["status"], "ACCEPTED");

    // The next request of the same app finds this access: checkApp matches.
    let (st, c) = s
        .post(
            "/alice/accesses/check-app",
            &personal,
            json!({"requestingAppId": "diary-app", "requestedPermissions": waiting["requestedPermissions"], "clientData": null}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["matchingAccess"]["token"], token);
    assert!(c["matchingAccess"].get("apiEndpoint").is_none());
}

#[tokio::test]
async fn refused_and_error_outcomes() {
    let s = Server::start();
    let key = start_request(&s, diary_request()).await["key"].as_str().unwrap().to_string();
    let path = format!("/reg/access/{key}");
    let refusal = json!({"status": "REFUSED", "reasonId": "REFUSED_BY_USER", "message": "The user refused to give access to the requested permissions"});
    let (st, b) = s.req("POST", &path, None, Some(refusal.clone())).await;
    assert_eq!((st, &b), (403, &refusal));
    let (st, p) = s.req("GET", &path, None, None).await;
    assert_eq!((st, p), (403, refusal));

    let key = start_request(&s, diary_request()).await["key"].as_str().unwrap().to_string();
    let (st, b) = s.req("POST", &format!("/reg/access/{key}"), None, Some(json!({"status": "ERROR", "message": "boom", "id": "x"}))).await;
    assert_eq!((st, b), (403, json!({"status": "ERROR", "message": "boom"})));
}

#[tokio::test]
async fn requests_expire_and_decided_ones_are_kept_briefly() {
    let s = Server::start_with(&[("HERALD_ACCESS_TERMINAL_RETENTION_MS", "600")]);
    let mut short = diary_request();
    short["expireAfter"] = json!(700);
    let key = start_request(&s, short).await["key"].as_str().unwrap().to_string();
    let (st, _) = s.req("GET", &format!("/reg/access/{key}"), None, None).await;
    assert_eq!(st, 201);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (st, b) = s.req("GET", &format!("/reg/access/{key}"), None, None).await;
    assert_eq!((st, b["error"]["id"].clone()), (400, json!("unknown-access-key")));
    let (st, b) = s.req("POST", &format!("/reg/access/{key}"), None, Some(json!({"status": "REFUSED"}))).await;
    assert_eq!((st, b["error"]["id"].clone()), (400, json!("unknown-access-key")));

    // Decided: readable for the retention after its first poll, then unknown.
    let key = start_request(&s, diary_request()).await["key"].as_str().unwrap().to_string();
    let path = format!("/reg/access/{key}");
    s.req("POST", &path, None, Some(json!({"status": "REFUSED"}))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (st, _) = s.req("GET", &path, None, None).await;
    assert_eq!(st, 403, "the retention counts from the first poll");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, _) = s.req("GET", &path, None, None).await;
    assert_eq!(st, 403);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, b) = s.req("GET", &path, None, None).await;
    assert_eq!((st, b["error"]["id"].clone()), (400, json!("unknown-access-key")));
}

#[tokio::test]
async fn a_waiting_request_survives_a_restart() {
    let mut s = Server::start();
    let key = start_request(&s, diary_request()).await["key"].as_str().unwrap().to_string();
    s.restart();
    let (st, p) = s.req("GET", &format!("/reg/access/{key}"), None, None).await;
    assert_eq!((st, p["status"].clone()), (201, json!("NEED_SIGNIN")));
    assert_eq!(p["requestingAppId"], "diary-app");
}

#[tokio::test]
async fn check_app_as_pryv() {
    let s = Server::start();
    let personal = s.register("carol").await;
    s.post("/carol/streams", &personal, json!({"id": "diary", "name": "Diary"})).await;
    s.post("/carol/streams", &personal, json!({"id": "other", "name": "Mood"})).await;
    let (st, c) = s
        .post(
            "/carol/accesses/check-app",
            &personal,
            json!({"requestingAppId": "app", "requestedPermissions": [
                {"streamId": "diary", "level": "read", "defaultName": "Whatever"},
                {"streamId": "mood", "level": "read", "defaultName": "Mood"},
                {"streamId": "*", "level": "read", "defaultName": "All"}
            ]}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        c["checkedPermissions"],
        json!([
            {"streamId": "diary", "level": "read", "name": "Diary"},
            {"streamId": "mood", "level": "read", "defaultName": "Mood (1)"},
            {"streamId": "*", "level": "read"}
        ])
    );
    assert_eq!(c["error"]["id"], "item-already-exists");
    assert!(c.get("mismatchingAccess").is_none());

    // An access of that name granting something else is the mismatching one.
    let (id, app) =
        s.access("carol", &personal, json!({"name": "app", "type": "app", "permissions": [{"streamId": "diary", "level": "read"}]})).await;
    let (_, c) = s
        .post(
            "/carol/accesses/check-app",
            &personal,
            json!({"requestingAppId": "app", "requestedPermissions": [{"streamId": "diary", "level": "manage"}]}),
        )
        .await;
    assert_eq!(c["mismatchingAccess"]["id"], id);

    // Errors: a stream to create with no defaultName; not a personal token; unknown keys.
    let (st, e) = s
        .post(
            "/carol/accesses/check-app",
            &personal,
            json!({"requestingAppId": "app", "requestedPermissions": [{"streamId": "nope", "level": "read"}]}),
        )
        .await;
    assert_eq!((st, e["error"]["id"].clone()), (400, json!("invalid-parameters-format")));
    assert_eq!(e["error"]["data"], "The permission for stream \"nope\" (and maybe others) is missing the required \"defaultName\".");
    let (st, e) = s.post("/carol/accesses/check-app", &app, json!({"requestingAppId": "app", "requestedPermissions": []})).await;
    common::assert_error(st, &e, 403, "forbidden");
    let (st, e) = s
        .post("/carol/accesses/check-app", &personal, json!({"requestingAppId": "app", "requestedPermissions": [], "deviceName": null}))
        .await;
    common::assert_error(st, &e, 400, "invalid-parameters-format");
    let (st, e) =
        s.post("/carol/accesses/check-app", &personal, json!({"requestingAppId": "app", "requestedPermissions": [], "x": 1})).await;
    assert_eq!(st, 400, "{e}");
    // Also in a batch.
    let (st, b) = s.post("/carol/", &personal, json!([{"method": "accesses.checkApp", "params": {"requestingAppId": "app", "requestedPermissions": [{"streamId": "diary", "level": "read"}]}}])).await;
    assert_eq!(st, 200);
    assert_eq!(b["results"][0]["matchingAccess"]["id"], id);
}

#[tokio::test]
async fn pages_are_served_with_a_strict_policy() {
    let s = Server::start();
    for path in ["/auth", "/auth?key=x&poll=y", "/www/webhooks"] {
        let r = reqwest::get(s.url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let html = r.text().await.unwrap();
        assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");
        assert!(!html.contains("https://"), "nothing loaded from elsewhere");
    }
    let r = reqwest::get(s.url("/www/nothing.js")).await.unwrap();
    assert_eq!(r.status(), 404);
}
