//! `herald admin` against real data dirs: users, webhooks, the change log, and a backup taken
//! under write load, restored into a fresh server whose data matches.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Receiver, Server};
use serde_json::{json, Value};

/// Run `herald admin ARGS` on `dir` (or the server's PostgreSQL database): (success, stdout, stderr).
fn admin(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("admin").args(args).env("HERALD_DATA_DIR", dir).env("HERALD_AUTH_ARGON2_MEMORY_KIB", "1024");
    if let Ok(url) = std::fs::read_to_string(dir.join("postgres-database")) {
        cmd.env("HERALD_DATABASE_URL", url);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("herald admin");
    if let Some(input) = stdin {
        // A command that fails before reading its input closes the pipe: its own error (below,
        // in stderr) says why, not this write's.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (success, out, err) = admin(dir, args, None);
    assert!(success, "herald admin {args:?} failed: {err}");
    out
}

#[tokio::test]
async fn users_create_list_delete() {
    let mut s = Server::start();
    let dir = s.data_dir().to_path_buf();
    // Created by the CLI, the user logs in through the API with the password given on stdin.
    let (success, out, err) = admin(&dir, &["users", "create", "admin-made", "--email", "admin-made@example.com"], Some("cli-pass-123\n"));
    assert!(success, "{err}");
    assert!(out.contains("created admin-made"), "{out}");
    let token = s.login_as("admin-made", "cli-pass-123", "herald-tests").await;
    let (st, _) = s.post("/admin-made/streams", &token, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201);
    let (st, _) = s.post("/admin-made/events", &token, json!({"streamIds": ["s"], "type": "note/txt", "content": "x"})).await;
    assert_eq!(st, 201);
    s.register("other-user").await;
    // A taken username, an invalid one, a short password: refused.
    let (success, _, err) = admin(&dir, &["users", "create", "admin-made", "--email", "x@example.com"], Some("cli-pass-123\n"));
    assert!(!success && err.contains("exists"), "{err}");
    let (success, _, _) = admin(&dir, &["users", "create", "-bad-", "--email", "y@example.com"], Some("cli-pass-123\n"));
    assert!(!success);
    let (success, _, err) = admin(&dir, &["users", "create", "shortpw", "--email", "z@example.com"], Some("abc\n"));
    assert!(!success && err.contains("6 to 100"), "{err}");

    let list = ok(&dir, &["users", "list"]);
    let names: Vec<&str> = list.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["admin-made", "other-user"], "{list}");
    assert!(!list.contains("$argon2"), "no password hash in the listing");

    // Data of issue 10 too: an attached file, a profile, a past state of an event, a pending
    // password reset.
    let (ct, body) = common::multipart_body(&[
        ("event", None, None, br#"{"streamIds":["s"],"type":"picture/attached"}"#.to_vec()),
        ("file", Some("a.txt"), Some("text/plain"), b"attached bytes".to_vec()),
    ]);
    let r = s.client.post(s.url("/admin-made/events")).header("content-type", ct).header("authorization", &token).body(body);
    let b: Value = r.send().await.unwrap().json().await.unwrap();
    let file_id = b["event"]["attachments"][0]["id"].as_str().unwrap_or_else(|| panic!("{b}")).to_string();
    let event_id = b["event"]["id"].as_str().unwrap().to_string();
    let (st, b) = s.put("/admin-made/profile/public", &token, json!({"name": "Admin"})).await;
    assert_eq!(st, 200, "{b}");
    let store = s.open_store().await;
    let user_id = store.user_by_name("admin-made").await.unwrap().unwrap().id;
    store.insert_event_version(&user_id, &event_id, "v1", 1.0, &json!({"id": "v1"})).await.unwrap();
    store.insert_password_reset(&user_id, "reset-token-of-admin-made", f64::MAX).await.unwrap();
    assert!(store.read_file(&user_id, &file_id).await.unwrap().is_some());
    let files_dir = dir.join("attachments").join(&user_id);
    assert_eq!(files_dir.exists(), !s.on_postgres());
    drop(store);

    // Deleted with everything of theirs: a restarted server no longer knows the user.
    let out = ok(&dir, &["users", "delete", "admin-made"]);
    assert!(out.contains("deleted admin-made"), "{out}");
    s.restart();
    let (st, b) = s
        .req(
            "POST",
            "/admin-made/auth/login",
            None,
            Some(json!({"username": "admin-made", "password": "cli-pass-123", "appId": "herald-tests"})),
        )
        .await;
    assert!(st == 404 || st == 401, "{st} {b}");
    let list = ok(&dir, &["users", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    let store = s.open_store().await;
    let gone = store.user_by_name("admin-made").await.unwrap();
    assert!(gone.is_none());
    assert!(store.read_file(&user_id, &file_id).await.unwrap().is_none(), "the attached file is gone");
    assert!(!files_dir.exists(), "the user's attachments directory is gone");
    assert!(store.profile(&user_id, "public").await.unwrap().is_none());
    assert!(store.event_history(&user_id, &event_id).await.unwrap().is_empty());
    assert!(store.take_password_reset("reset-token-of-admin-made", 0.0).await.unwrap().is_none());
    let (success, _, err) = admin(&dir, &["users", "delete", "admin-made"], None);
    assert!(!success && err.contains("no user"), "{err}");
}

#[tokio::test]
async fn webhooks_list_reactivate_delete_and_change_log_status() {
    let s = Server::start();
    let dir = s.data_dir().to_path_buf();
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let personal = s.register("hook-owner").await;
    let (_, app) =
        s.access("hook-owner", &personal, json!({"name": "h", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, b) = s.post("/hook-owner/webhooks", &app, json!({"url": receiver.url, "maxRetries": 1, "minIntervalMs": 50})).await;
    assert_eq!(st, 201, "{b}");
    let id = b["webhook"]["id"].as_str().unwrap().to_string();
    let (st, _) = s.post("/hook-owner/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201);
    // Two failures with maxRetries 1 (the first try and one retry): inactive.
    async fn webhook_of(s: &Server, app: &str, id: &str) -> Value {
        s.get(&format!("/hook-owner/webhooks/{id}"), app).await.1["webhook"].clone()
    }
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while webhook_of(&s, &app, &id).await["state"] != "inactive" {
        assert!(std::time::Instant::now() < end, "never turned inactive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = ok(&dir, &["webhooks", "list"]);
    let line = list.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{list}"));
    assert!(line.starts_with("hook-owner\t") && line.contains("\tinactive\t") && line.contains("failures=2"), "{line}");
    assert!(line.ends_with(&receiver.url), "{line}");
    assert_eq!(ok(&dir, &["webhooks", "list", "--state", "active"]).lines().count(), 0);
    assert_eq!(ok(&dir, &["webhooks", "list", "--user", "hook-owner"]).lines().count(), 1);

    // Reactivated while the server runs: its dispatcher hears it through the change log and
    // delivers the next change.
    receiver.set_status(200);
    let before = receiver.count();
    assert!(ok(&dir, &["webhooks", "reactivate", "hook-owner", &id]).contains("reactivated"));
    assert_eq!(webhook_of(&s, &app, &id).await["state"], "active");
    let (st, _) = s.post("/hook-owner/events", &app, json!({"streamIds": ["s"], "type": "note/txt", "content": "after"})).await;
    assert_eq!(st, 201);
    let got = receiver.wait_for(before + 1, Duration::from_secs(10)).await;
    assert!(got.len() > before, "the reactivated webhook delivers");

    let status = ok(&dir, &["change-log", "status"]);
    assert!(status.contains("consumer dispatcher\tcursor=") || status.contains("consumer dispatcher-p0\tcursor="), "{status}");
    let last: u64 = status.lines().find_map(|l| l.strip_prefix("last\t")).unwrap().parse().unwrap();
    assert!(last >= 4, "{status}");

    assert!(ok(&dir, &["webhooks", "delete", "hook-owner", &id]).contains("deleted"));
    let (st, b) = s.get(&format!("/hook-owner/webhooks/{id}"), &app).await;
    assert_eq!(st, 404, "{b}");
    let (success, _, err) = admin(&dir, &["webhooks", "delete", "hook-owner", &id], None);
    assert!(!success && err.contains("no webhook"), "{err}");
}

/// A backup taken while events are written holds a consistent prefix of them: restored into a
/// fresh data dir, the server there answers exactly those events, identical to the original's.
#[tokio::test]
async fn backup_under_write_load_restores_into_a_fresh_server() {
    let s = Server::start();
    if s.on_postgres() {
        // PostgreSQL is backed up with pg_dump; the command says so.
        let (success, _, err) = admin(s.data_dir(), &["backup", "/tmp/never"], None);
        assert!(!success && err.contains("pg_dump"), "{err}");
        return;
    }
    let personal = s.register("backed-up").await;
    let (_, app) =
        s.access("backed-up", &personal, json!({"name": "b", "type": "app", "permissions": [{"streamId": "*", "level": "manage"}]})).await;
    let (st, _) = s.post("/backed-up/streams", &app, json!({"id": "s", "name": "S"})).await;
    assert_eq!(st, 201);
    // Writers keep creating events during the backup.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..4 {
        let (client, url, app, stop) = (s.client.clone(), s.url("/backed-up/events"), app.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .header("Authorization", &app)
                    .json(&json!({"streamIds": ["s"], "type": "count/generic", "content": w * 1_000_000 + n}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    async fn events_of(s: &Server, app: &str) -> Vec<Value> {
        let (st, b) = s.get("/backed-up/events?limit=1000000&state=all", app).await;
        assert_eq!(st, 200);
        b["events"].as_array().unwrap().clone()
    }
    let count_before = events_of(&s, &app).await.len();
    let target = tempfile::tempdir().unwrap();
    let backup_dir = target.path().join("backup");
    let dir = s.data_dir().to_path_buf();
    let out = tokio::task::spawn_blocking(move || ok(&dir, &["backup", backup_dir.to_str().unwrap()])).await.unwrap();
    assert!(out.contains("backed up"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    let original = events_of(&s, &app).await;
    assert_eq!(original.len() as u64, written);

    // Into a fresh data dir; a second restore over it needs --force.
    let fresh = tempfile::tempdir().unwrap();
    let backup_dir = target.path().join("backup");
    let out = ok(fresh.path(), &["restore", backup_dir.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
    let (success, _, err) = admin(fresh.path(), &["restore", backup_dir.to_str().unwrap()], None);
    assert!(!success && err.contains("--force"), "{err}");
    // Nothing overwrites an existing backup either.
    let (success, _, _) = admin(s.data_dir(), &["backup", backup_dir.to_str().unwrap()], None);
    assert!(!success);

    let restored = Server::start_in(fresh, &[]);
    let token = restored.login_as("backed-up", "secret-pw", "herald-tests").await;
    let (st, b) = restored.get("/backed-up/events?limit=1000000&state=all", &token).await;
    assert_eq!(st, 200, "{b}");
    let copy = b["events"].as_array().unwrap().clone();
    assert!(
        copy.len() >= count_before && copy.len() < original.len(),
        "the backup was taken under load: {} <= {} < {}",
        count_before,
        copy.len(),
        original.len()
    );
    // Each restored event is the original's, unchanged; and the backup is a prefix in commit
    // order: whatever it holds, it holds every event written before it.
    let by_id: std::collections::HashMap<&str, &Value> = original.iter().map(|e| (e["id"].as_str().unwrap(), e)).collect();
    for e in &copy {
        assert_eq!(Some(&e), by_id.get(e["id"].as_str().unwrap()), "restored event differs");
    }
    let latest_copied = copy.iter().map(|e| e["created"].as_f64().unwrap()).fold(0.0, f64::max);
    let missing_older = original
        .iter()
        .filter(|e| e["created"].as_f64().unwrap() < latest_copied - 1.0)
        .filter(|e| !copy.iter().any(|c| c["id"] == e["id"]))
        .count();
    assert_eq!(missing_older, 0, "the backup is one snapshot");
    // The app token from before the backup works on the restored server.
    let (st, _) = restored.get("/backed-up/streams", &app).await;
    assert_eq!(st, 200);
}
