//! Registration, login, logout and service info, over real HTTP against the `herald` binary.
mod common;

use common::{assert_error, Server};
use serde_json::{json, Value};

/// POST without a token and with extra headers; returns (status, JSON body).
async fn post_with_headers(server: &Server, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut r = server.client.post(server.url(path)).json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// The token inside an `http://{token}@host/{username}/` endpoint.
fn endpoint_token(endpoint: &str) -> String {
    let rest = endpoint.split("://").nth(1).expect("scheme");
    let (token, _) = rest.split_once('@').unwrap_or_else(|| panic!("no token in {endpoint}"));
    token.to_string()
}

fn registration(username: &str, password: &str, email: &str) -> Value {
    json!({"appId": "herald-tests", "username": username, "password": password, "email": email})
}

#[tokio::test]
async fn registration_creates_users_with_a_personal_endpoint() {
    let server = Server::start();

    let (s, b) = server.req("POST", "/users", None, Some(registration("alice", "secret-pw", "alice@example.com"))).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["username"], "alice");
    let endpoint = b["apiEndpoint"].as_str().expect("apiEndpoint");
    assert!(endpoint.ends_with("/alice/"), "{endpoint}");
    assert!(b["meta"]["serverTime"].is_number(), "{b}");

    // The endpoint embeds a working personal token.
    let token = endpoint_token(endpoint);
    let (s, info) = server.get("/alice/access-info", &token).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["type"], "personal");
    assert_eq!(info["user"]["username"], "alice");

    // The /reg alias.
    let (s, b) = server.req("POST", "/reg/users", None, Some(registration("bobby-2", "secret-pw", "bob@example.com"))).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["username"], "bobby-2");
    assert!(b["apiEndpoint"].as_str().unwrap().ends_with("/bobby-2/"), "{b}");

    let (s, b) = server.req("GET", "/reg/alice/check_username", None, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["reserved"], true);
    let (s, b) = server.req("GET", "/reg/nobody-here/check_username", None, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["reserved"], false);

    // Duplicates.
    let (s, b) = server.req("POST", "/users", None, Some(registration("alice", "secret-pw", "other@example.com"))).await;
    assert_error(s, &b, 409, "item-already-exists");
    let (s, b) = server.req("POST", "/reg/users", None, Some(registration("alice", "secret-pw", "other2@example.com"))).await;
    assert_error(s, &b, 409, "item-already-exists");
    let (s, b) = server.req("POST", "/users", None, Some(registration("carol", "secret-pw", "alice@example.com"))).await;
    assert_error(s, &b, 409, "item-already-exists");

    // Invalid usernames, passwords, e-mails.
    for bad in ["abc", "Alice", "-alice", "alice-", "al ice", "al_ice"] {
        let (s, b) = server.req("POST", "/users", None, Some(registration(bad, "secret-pw", "x@example.com"))).await;
        assert_error(s, &b, 400, "invalid-parameters-format");
    }
    let (s, b) = server.req("POST", "/users", None, Some(registration("dave1", "12345", "dave@example.com"))).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.req("POST", "/users", None, Some(registration("dave1", "secret-pw", "not-an-email"))).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    let (s, b) = server.req("POST", "/users", None, Some(json!({"appId": "herald-tests", "username": "dave1"}))).await;
    assert_error(s, &b, 400, "invalid-parameters-format");
    // None of the failed attempts created the user.
    let (s, b) = server.req("GET", "/reg/dave1/check_username", None, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["reserved"], false);
}

#[tokio::test]
async fn login_gives_a_personal_token_and_checks_credentials() {
    let server = Server::start();
    let first = server.register("alice").await;

    let (s, b) = server
        .req("POST", "/alice/auth/login", None, Some(json!({"username": "alice", "password": "secret-pw", "appId": "other-app"})))
        .await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"].as_str().expect("token").to_string();
    assert_ne!(token, first, "another app gets another session");
    let endpoint = b["apiEndpoint"].as_str().unwrap();
    assert!(endpoint.contains(&format!("{token}@")), "{endpoint}");
    assert!(endpoint.ends_with("/alice/"), "{endpoint}");
    let (s, info) = server.get("/alice/access-info", &token).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["type"], "personal");
    assert_eq!(info["name"], "other-app");

    let (s, b) = server
        .req("POST", "/alice/auth/login", None, Some(json!({"username": "alice", "password": "wrong-pw", "appId": "herald-tests"})))
        .await;
    assert_error(s, &b, 401, "invalid-credentials");
    assert!(b.get("token").is_none(), "{b}");

    for body in [
        json!({"username": "alice", "appId": "herald-tests"}),
        json!({"password": "secret-pw", "appId": "herald-tests"}),
        json!({"username": "alice", "password": "secret-pw"}),
        json!({}),
    ] {
        let (s, b) = server.req("POST", "/alice/auth/login", None, Some(body)).await;
        assert_error(s, &b, 400, "invalid-operation");
    }
}

#[tokio::test]
async fn login_requires_a_trusted_app_and_origin() {
    let server = Server::start_with(&[("HERALD_TRUSTED_APPS", "trusted-*@https://ok.example")]);
    let (s, b) = server.req("POST", "/users", None, Some(registration("alice", "secret-pw", "alice@example.com"))).await;
    assert_eq!(s, 201, "{b}");
    let creds = |app: &str| json!({"username": "alice", "password": "secret-pw", "appId": app});

    // Untrusted app, even from the right origin.
    let (s, b) = post_with_headers(&server, "/alice/auth/login", &[("Origin", "https://ok.example")], creds("other-app")).await;
    assert_error(s, &b, 401, "invalid-credentials");
    // Trusted app, wrong origin or none.
    let (s, b) = post_with_headers(&server, "/alice/auth/login", &[("Origin", "https://evil.example")], creds("trusted-app")).await;
    assert_error(s, &b, 401, "invalid-credentials");
    let (s, b) = post_with_headers(&server, "/alice/auth/login", &[], creds("trusted-app")).await;
    assert_error(s, &b, 401, "invalid-credentials");

    // Trusted app from the trusted origin.
    let (s, b) = post_with_headers(&server, "/alice/auth/login", &[("Origin", "https://ok.example")], creds("trusted-app")).await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"].as_str().unwrap();
    let (s, info) = server.get("/alice/access-info", token).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["type"], "personal");
}

#[tokio::test]
async fn logout_makes_the_token_unusable() {
    let server = Server::start();
    let token = server.register("alice").await;
    let (s, b) = server.get("/alice/access-info", &token).await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = server.post("/alice/auth/logout", &token, json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["meta"]["serverTime"].is_number(), "{b}");

    let (s, b) = server.get("/alice/access-info", &token).await;
    assert_error(s, &b, 403, "invalid-access-token");
    let (s, b) = server.get("/alice/events", &token).await;
    assert_error(s, &b, 403, "invalid-access-token");

    // Logging in again gives a new, working session.
    let again = server.login("alice").await;
    assert_ne!(again, token);
    let (s, b) = server.get("/alice/access-info", &again).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn service_info_describes_the_platform() {
    let server = Server::start();
    let (s, info) = server.req("GET", "/service/info", None, None).await;
    assert_eq!(s, 200, "{info}");
    for field in ["api", "access", "register", "name"] {
        assert!(info[field].is_string(), "{field} in {info}");
    }
    assert!(info["api"].as_str().unwrap().contains("{username}"), "{info}");
    assert!(info["meta"]["apiVersion"].is_string(), "{info}");

    let (s, reg) = server.req("GET", "/reg/service/info", None, None).await;
    assert_eq!(s, 200, "{reg}");
    for field in ["api", "access", "register", "name"] {
        assert!(reg[field].is_string(), "{field} in {reg}");
        assert_eq!(reg[field], info[field], "{field}");
    }
}

#[tokio::test]
async fn passwords_are_not_stored_in_clear() {
    let server = Server::start();
    let password = "Clear-Text-Passw0rd-4242";
    let (s, b) = server.req("POST", "/users", None, Some(registration("alice", password, "alice@example.com"))).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = server
        .req("POST", "/alice/auth/login", None, Some(json!({"username": "alice", "password": password, "appId": "herald-tests"})))
        .await;
    assert_eq!(s, 200, "{b}");

    // On PostgreSQL: the stored hash, as the database gives it.
    if server.on_postgres() {
        let user = server.open_store().await.user_by_name("alice").await.unwrap().unwrap();
        assert!(user.password_hash.starts_with("$argon2id$") && !user.password_hash.contains(password), "{}", user.password_hash);
        return;
    }
    // The database and its journal files.
    let mut checked = 0;
    let mut saw_user = false;
    for entry in std::fs::read_dir(server.data_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("herald.db") || !entry.file_type().unwrap().is_file() {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        checked += 1;
        saw_user |= contains(&bytes, b"alice@example.com");
        assert!(!contains(&bytes, password.as_bytes()), "{name} holds the password in clear");
    }
    assert!(checked >= 1, "no herald.db in {:?}", server.data_dir());
    assert!(saw_user, "the user should be in the database files");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
