//! Issue 10 over HTTP: unknown users, register lookups, `account.*` (password reset with a
//! real SMTP conversation to a local sink), `profile.*`.

mod common;

use std::sync::{Arc, Mutex};

use common::{assert_error, multipart_body, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn unknown_users_answer_as_pryv_does() {
    let s = Server::start();
    let t = s.register("alice").await;
    for (m, p) in [
        ("GET", "/nobody1/service/info"),
        ("GET", "/nobody1/service/infos"),
        ("GET", "/nobody1/events"),
        ("GET", "/nobody1/access-info"),
        ("POST", "/nobody1/account/request-password-reset"),
        ("POST", "/nobody1/"),
        ("GET", "/nobody1/whatever/else"),
        ("GET", "/nobody1/events/x/y"),
    ] {
        // With a token of another user, and with none: the user check comes first.
        for token in [Some(t.as_str()), None] {
            let body = (m == "POST").then(|| json!({}));
            let (st, b) = s.req(m, p, token, body).await;
            assert_error(st, &b, 404, "unknown-resource");
            let who = p.split('/').nth(1).unwrap();
            assert_eq!(b["error"]["message"], format!("Unknown user \"{who}\""), "{p}: {b}");
        }
    }
    // Multipart create for an unknown user: 404, nothing read.
    let (ct, body) = multipart_body(&[("event", None, None, br#"{"streamIds":["s"],"type":"note/txt"}"#.to_vec())]);
    let r = s.client.post(s.url("/nobody1/events")).header("content-type", ct).header("authorization", &t).body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // The root of a user answers without checking it, as Pryv does.
    let (st, b) = s.req("GET", "/nobody1/", None, None).await;
    assert_eq!((st, b["cheersFrom"].as_str()), (200, Some("Pryv API")), "{b}");
    // A known user's service info, and an unknown route of a known user.
    let (st, b) = s.req("GET", "/alice/service/info", None, None).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["api"].is_string());
    let (st, b) = s.req("GET", "/alice/nothing-here", Some(&t), None).await;
    assert_error(st, &b, 404, "unknown-resource");
    assert!(b["error"]["message"].as_str().unwrap().starts_with("Unknown route"), "{b}");
}

#[tokio::test]
async fn register_lookups() {
    let s = Server::start();
    s.register("alice").await;
    let (st, b) = s.req("GET", "/reg/alice@example.com/uid", None, None).await;
    assert_eq!((st, &b), (200, &json!({"uid": "alice"})));
    let (st, b) = s.req("GET", "/reg/alice@example.com/username", None, None).await;
    assert_eq!((st, &b), (200, &json!({"username": "alice"})));
    let (st, b) = s.req("GET", "/reg/nobody@example.com/uid", None, None).await;
    assert_eq!((st, &b), (404, &json!({"error": {"id": "unknown-email", "message": "Unknown email"}})));
    // Availability checks: username and email.
    let (st, b) = s.req("GET", "/reg/alice/check_username", None, None).await;
    assert_eq!((st, &b["reserved"]), (200, &json!(true)));
    let (st, b) = s.req("GET", "/reg/freename/check_username", None, None).await;
    assert_eq!((st, &b["reserved"]), (200, &json!(false)));
    let (st, b) = s.req("GET", "/reg/A!/check_username", None, None).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    assert_eq!(b["error"]["data"][0]["code"], "username-invalid");
    let (st, b) = s.req("GET", "/reg/free@example.com/check_email", None, None).await;
    assert_eq!((st, &b["reserved"]), (200, &json!(false)), "{b}");
    let (st, b) = s.req("GET", "/reg/alice@example.com/check_email", None, None).await;
    assert_error(st, &b, 409, "item-already-exists");
    assert_eq!(b["error"]["data"]["email"], "alice@example.com");
    // userExists: POST /reg/{u}/server.
    let (st, b) = s.req("POST", "/reg/alice/server", None, None).await;
    assert_eq!((st, &b["alias"]), (200, &json!("alice")), "{b}");
    assert_eq!(b["server"], s.base);
    assert!(b.get("meta").is_none());
    let (st, b) = s.req("POST", "/reg/nobody1/server", None, None).await;
    assert_eq!((st, &b), (404, &json!({"error": {"id": "unknown-user", "message": "Unknown user"}})));
}

#[tokio::test]
async fn account_get_update_and_change_password() {
    let s = Server::start();
    let t = s.register("alice").await;
    s.register("bobby").await;
    let (_, app) =
        s.access("alice", &t, json!({"name": "app", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (_, b) = s.post("/alice/streams", &t, json!({"id": "s", "name": "S"})).await;
    assert!(b["stream"].is_object());
    s.post("/alice/events", &t, json!({"streamIds": ["s"], "type": "note/txt", "content": "x"})).await;

    let (st, b) = s.get("/alice/account", &t).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["account"],
        json!({"username": "alice", "email": "alice@example.com", "language": "en", "storageUsed": {"dbDocuments": 2, "attachedFiles": 0}})
    );
    // Personal only.
    for (m, p, body) in [
        ("GET", "/alice/account", None),
        ("PUT", "/alice/account", Some(json!({"language": "fr"}))),
        ("POST", "/alice/account/change-password", Some(json!({"oldPassword": "secret-pw", "newPassword": "other-pw"}))),
    ] {
        let (st, b) = s.req(m, p, Some(&app), body).await;
        assert_error(st, &b, 403, "forbidden");
    }
    let (st, b) = s.req("GET", "/alice/account", None, None).await;
    assert_error(st, &b, 401, "invalid-access-token");

    let (st, b) = s.put("/alice/account", &t, json!({"language": "fr", "email": "alice2@example.com"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!((b["account"]["language"].as_str(), b["account"]["email"].as_str()), (Some("fr"), Some("alice2@example.com")));
    let (st, b) = s.put("/alice/account", &t, json!({"email": "bobby@example.com"})).await;
    assert_error(st, &b, 409, "item-already-exists");
    let (st, b) = s.put("/alice/account", &t, json!({"username": "x"})).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let (_, b) = s.get("/alice/account", &t).await;
    assert_eq!(b["account"]["email"], "alice2@example.com", "refused updates changed nothing: {b}");
    let (st, b) = s.req("GET", "/reg/alice2@example.com/uid", None, None).await;
    assert_eq!((st, &b["uid"]), (200, &json!("alice")));

    let (st, b) = s.post("/alice/account/change-password", &t, json!({"oldPassword": "wrong-pw", "newPassword": "other-pw"})).await;
    assert_error(st, &b, 400, "invalid-operation");
    let (st, b) = s.post("/alice/account/change-password", &t, json!({"oldPassword": "secret-pw", "newPassword": "short"})).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let (st, b) = s.post("/alice/account/change-password", &t, json!({"oldPassword": "secret-pw", "newPassword": "other-pw"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b.as_object().unwrap().keys().collect::<Vec<_>>(), ["meta"]);
    // The new password logs in, the old one does not; the session stays valid.
    s.login_as("alice", "other-pw", "herald-tests").await;
    let (st, b) = s
        .req("POST", "/alice/auth/login", None, Some(json!({"username": "alice", "password": "secret-pw", "appId": "herald-tests"})))
        .await;
    assert_error(st, &b, 401, "invalid-credentials");
    assert_eq!(s.get("/alice/account", &t).await.0, 200);
    // In a batch call too.
    let (st, b) = s.post("/alice/", &t, json!([{"method": "account.get", "params": {}}])).await;
    assert_eq!((st, &b["results"][0]["account"]["username"]), (200, &json!("alice")), "{b}");
}

#[tokio::test]
async fn profiles_public_app_private() {
    let s = Server::start();
    let t = s.register("alice").await;
    let (_, app) =
        s.access("alice", &t, json!({"name": "my-app", "type": "app", "permissions": [{"streamId": "*", "level": "read"}]})).await;
    let (_, shared) =
        s.access("alice", &t, json!({"name": "share", "type": "shared", "permissions": [{"streamId": "*", "level": "read"}]})).await;

    assert_eq!(s.get("/alice/profile/public", &app).await.1["profile"], json!({}));
    let (st, b) = s.put("/alice/profile/public", &t, json!({"name": "Alice", "obj": {"a": 1, "b": 2}})).await;
    assert_eq!((st, &b["profile"]), (200, &json!({"name": "Alice", "obj": {"a": 1, "b": 2}})));
    // A shallow merge; null removes.
    let (_, b) = s.put("/alice/profile/public", &t, json!({"name": null, "obj": {"c": 3}, "x": 1})).await;
    assert_eq!(b["profile"], json!({"obj": {"c": 3}, "x": 1}));
    for tok in [&t, &app, &shared] {
        assert_eq!(s.get("/alice/profile/public", tok).await.1["profile"], json!({"obj": {"c": 3}, "x": 1}));
    }
    // Private: personal only.
    let (_, b) = s.put("/alice/profile/private", &t, json!({"secret": 1})).await;
    assert_eq!(b["profile"], json!({"secret": 1}));
    assert_eq!(s.get("/alice/profile/private", &t).await.1["profile"], json!({"secret": 1}));
    let (st, b) = s.get("/alice/profile/private", &app).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = s.put("/alice/profile/public", &app, json!({"x": 2})).await;
    assert_error(st, &b, 403, "forbidden");
    // App: app accesses only, one set per app name.
    assert_eq!(s.get("/alice/profile/app", &app).await.1["profile"], json!({}));
    let (st, b) = s.put("/alice/profile/app", &app, json!({"theme": "dark"})).await;
    assert_eq!((st, &b["profile"]), (200, &json!({"theme": "dark"})));
    assert_eq!(s.get("/alice/profile/app", &app).await.1["profile"], json!({"theme": "dark"}));
    for tok in [&t, &shared] {
        let (st, b) = s.get("/alice/profile/app", tok).await;
        assert_error(st, &b, 400, "invalid-operation");
    }
    let (st, b) = s.req("PUT", "/alice/profile/app", Some(&app), Some(json!([1]))).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let (st, b) = s.req("GET", "/alice/profile/public", None, None).await;
    assert_error(st, &b, 401, "invalid-access-token");
    // Batch form.
    let (_, b) = s.post("/alice/", &t, json!([{"method": "profile.get", "params": {"id": "private"}}])).await;
    assert_eq!(b["results"][0]["profile"], json!({"secret": 1}));
}

/// A tiny SMTP server: it speaks the protocol's happy path and keeps each message's data.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let kept = mails.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_ascii_uppercase();
                    if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        w.write_all(b"250-sink\r\n250 8BITMIME\r\n").await.unwrap();
                    } else if cmd == "DATA" {
                        w.write_all(b"354 go on\r\n").await.unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).await.unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(&line);
                        }
                        kept.lock().unwrap().push(data);
                        w.write_all(b"250 queued\r\n").await.unwrap();
                    } else if cmd == "QUIT" {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    (port, mails)
}

fn reset_token(mail: &str) -> String {
    // The body may be quoted-printable: join soft line breaks first.
    let text = mail.replace("=\r\n", "").replace("=3D", "=");
    let at = text.find("resetToken=").expect("a reset link") + "resetToken=".len();
    text[at..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect()
}

#[tokio::test]
async fn password_reset_without_relay_is_unavailable() {
    let s = Server::start();
    s.register("alice").await;
    for p in ["/alice/account/request-password-reset", "/alice/account/reset-password"] {
        let (st, b) = s.req("POST", p, None, Some(json!({"appId": "herald-tests", "resetToken": "x", "newPassword": "whatever"}))).await;
        assert_error(st, &b, 503, "api-unavailable");
        assert!(b["error"]["message"].as_str().unwrap().contains("HERALD_EMAIL_SMTP_URL"), "{b}");
    }
}

#[tokio::test]
async fn password_reset_by_email_through_an_smtp_relay() {
    let (port, mails) = smtp_sink().await;
    let relay = format!("smtp://127.0.0.1:{port}");
    let s = Server::start_with(&[
        ("HERALD_EMAIL_SMTP_URL", &relay),
        ("HERALD_EMAIL_FROM", "Herald <herald@example.com>"),
        ("HERALD_EMAIL_RESET_PAGE_URL", "https://app.example.com/reset"),
        ("HERALD_TRUSTED_APPS", "herald-tests@*,pryv-*@https://*.example.com"),
    ]);
    s.register("alice").await;
    let (st, b) = s.req("POST", "/alice/account/request-password-reset", None, Some(json!({"username": "alice"}))).await;
    assert_error(st, &b, 400, "invalid-parameters-format");
    let r = s
        .client
        .post(s.url("/alice/account/request-password-reset"))
        .header("origin", "https://evil.org")
        .json(&json!({"appId": "pryv-app"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["id"], "invalid-credentials");
    assert!(mails.lock().unwrap().is_empty());

    let (st, b) =
        s.req("POST", "/alice/account/request-password-reset", None, Some(json!({"appId": "herald-tests", "username": "alice"}))).await;
    assert_eq!(st, 200, "{b}");
    let mail = mails.lock().unwrap().first().cloned().expect("an email reached the sink");
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(mail.contains("herald@example.com"), "{mail}");
    assert!(mail.replace("=\r\n", "").replace("=3D", "=").contains("https://app.example.com/reset?resetToken="), "{mail}");
    let token = reset_token(&mail);

    let reset = |tok: String, pw: &'static str| json!({"appId": "herald-tests", "username": "alice", "resetToken": tok, "newPassword": pw});
    let (st, b) = s.req("POST", "/alice/account/reset-password", None, Some(reset("not-a-token".into(), "new-pass-1"))).await;
    assert_error(st, &b, 401, "invalid-access-token");
    let (st, b) = s.req("POST", "/alice/account/reset-password", None, Some(reset(token.clone(), "new-pass-1"))).await;
    assert_eq!(st, 200, "{b}");
    s.login_as("alice", "new-pass-1", "herald-tests").await;
    // Single use.
    let (st, b) = s.req("POST", "/alice/account/reset-password", None, Some(reset(token, "new-pass-2"))).await;
    assert_error(st, &b, 401, "invalid-access-token");
}
