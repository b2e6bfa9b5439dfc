//! A data dir written by the first release (before the change log and schema versions) opens
//! with this one: the account, its data and each webhook's pending messages are all there, and
//! the pending messages are delivered after `webhooksServiceBoot`.
//!
//! The fixture (`tests/fixtures/data-v0`, made by `make.sh` there with that release) has two
//! webhooks pointing at a closed port with `minIntervalMs` of an hour, so their messages were
//! still pending when it stopped. The test copies it and points the webhooks at its receiver.

mod common;

use std::time::Duration;

use common::{Receiver, Server};

#[tokio::test]
async fn a_data_dir_of_the_first_release_keeps_its_data_and_pending_messages() {
    if std::env::var("HERALD_TEST_STORE").is_ok_and(|v| v == "postgres") {
        // The fixture is a SQLite data dir: nothing to upgrade on PostgreSQL.
        return;
    }
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data-v0/herald.db"), &db).unwrap();
    {
        // Only the receiver's address changes, and the last run moves a day back (as if the
        // upgrade came a day after the fixture was made, past the hour-long retry delay); the
        // rest is as the first release left it.
        let c = rusqlite::Connection::open(&db).unwrap();
        let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 0, "the fixture predates schema versions");
        for kind in ["plain", "scoped"] {
            c.execute(
                "UPDATE webhooks SET url = ?1 WHERE url = ?2",
                [r.url_for(&format!("/{kind}")), format!("http://127.0.0.1:9/{kind}")],
            )
            .unwrap();
        }
        c.execute("UPDATE webhooks SET last_run_time = last_run_time - 86400", []).unwrap();
    }
    let s = Server::start_in(dir, &[]);
    let token = "fixture-app-token";

    // The account and its data.
    let (st, b) = s.get("/fixture/events?limit=10", token).await;
    assert_eq!(st, 200, "{b}");
    let ids: Vec<&str> = b["events"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    for id in ["fixtureevent1", "fixtureevent2", "fixtureevent3", "fixturesleep1"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let (st, b) = s.get("/fixture/streams", token).await;
    assert_eq!(st, 200, "{b}");
    assert!(b.to_string().contains("Sleep log"), "{b}");
    s.login_as("fixture", "fixture-pw", "fixture").await;

    // The pending messages, after the greeting.
    let posts = r.wait_for(2, Duration::from_secs(10)).await;
    let of = |path: &str| posts.iter().find(|p| p.path == path).map(|p| p.messages()).unwrap_or_default();
    assert_eq!(of("/plain"), vec!["webhooksServiceBoot", "eventsChanged", "streamsChanged"], "{posts:?}");
    assert_eq!(of("/scoped"), vec!["webhooksServiceBoot", "activityChanged"], "{posts:?}");

    // The webhooks are listed as before.
    let (st, b) = s.get("/fixture/webhooks", token).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhooks"].as_array().unwrap().len(), 2);
}
