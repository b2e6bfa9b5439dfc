//! The change log on the real stores, SQLite and PostgreSQL (each test runs on both; PostgreSQL
//! at `HERALD_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`, in a
//! database of its own): appended in the write's transaction, numbered in commit order, read
//! back, trimmed only behind every consumer; and a data dir of the first release migrated with
//! its data.

mod common;

use common::{admin_url, drop_db, on_each_store, pg_store};
use herald_model::access::{Access, AccessType};
use herald_model::change::{Change, ChangeKind, ChangeType, ChangedItem};
use herald_model::event::Event;
use herald_storage::postgres::PgStore;
use herald_storage::sqlite::{Durability, SqliteStore};
use herald_storage::{LogCursor, Store, StoreError};

fn event(id: &str, stream: &str) -> Event {
    Event {
        id: id.into(),
        stream_ids: vec![stream.into()],
        time: 1.0,
        duration: Some(0.0),
        event_type: "count/steps".into(),
        content: None,
        description: None,
        client_data: None,
        trashed: false,
        created: 1.0,
        created_by: "a".into(),
        modified: 1.0,
        modified_by: "a".into(),
        attachments: vec![],
    }
}

fn created(e: &Event) -> Change {
    Change::new(
        "u1",
        "alice",
        ChangeKind::Events,
        ChangeType::Create,
        vec![ChangedItem::Event { id: e.id.clone(), stream_ids: e.stream_ids.clone(), event_type: e.event_type.clone() }],
    )
}

#[tokio::test]
async fn a_write_logs_its_change_with_a_growing_number() {
    on_each_store(|store| async move {
        let a = event("a", "s1");
        let b = event("b", "s2");
        let la = store.insert_event("u1", &a, vec![created(&a)]).await.unwrap();
        let lb = store.insert_event("u1", &b, vec![created(&b)]).await.unwrap();
        assert_eq!(la.len(), 1);
        assert!(la[0].seq > 0 && lb[0].seq > la[0].seq, "{} then {}", la[0].seq, lb[0].seq);
        let read = store.changes_after(0, 10).await.unwrap();
        assert_eq!(read, vec![la[0].clone(), lb[0].clone()], "read back exactly as logged, items included");
        assert_eq!(store.changes_after(la[0].seq, 10).await.unwrap(), lb);
        assert_eq!(store.changes_after(0, 1).await.unwrap().len(), 1, "pages");
        assert_eq!(store.last_seq().await.unwrap(), lb[0].seq);
    })
    .await;
}

#[tokio::test]
async fn a_write_that_fails_logs_nothing() {
    on_each_store(|store| async move {
        let a = event("a", "s1");
        store.insert_event("u1", &a, vec![created(&a)]).await.unwrap();
        let again = store.insert_event("u1", &a, vec![created(&a)]).await;
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
        let missing = store.update_event("u1", &event("nope", "s1"), vec![created(&a)]).await;
        assert_eq!(missing, Err(StoreError::NotFound));
        assert_eq!(store.changes_after(0, 10).await.unwrap().len(), 1, "only the committed write is logged");
    })
    .await;
}

#[tokio::test]
async fn concurrent_writes_are_numbered_in_commit_order_without_gaps() {
    on_each_store(|store| async move {
        let mut tasks = vec![];
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let e = event(&format!("e{i}"), "s");
                store.insert_event("u1", &e, vec![created(&e)]).await.unwrap()[0].seq
            }));
        }
        let mut seqs = vec![];
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
        let read: Vec<u64> = store.changes_after(0, 1000).await.unwrap().iter().map(|c| c.seq).collect();
        assert_eq!(read, seqs);
    })
    .await;
}

/// The group commit's worst moment: many creates at once, among them one of an id that exists,
/// two of one new id, and one over a deleted event's tombstone. Exactly the duplicates fail (with
/// a conflict on `id`); every other create is committed, readable, and logged with dense numbers
/// that the log returns in order.
#[tokio::test]
async fn a_duplicate_among_concurrent_creates_fails_alone() {
    on_each_store(|store| async move {
        let taken = event("taken", "s");
        store.insert_event("u1", &taken, vec![created(&taken)]).await.unwrap();
        let old = event("old", "gone");
        store.insert_event("u1", &old, vec![created(&old)]).await.unwrap();
        store.delete_event("u1", "old", 2.0, vec![created(&old)]).await.unwrap();
        let before = store.last_seq().await.unwrap();

        let mut ids: Vec<String> = (0..150).map(|i| format!("e{i}")).collect();
        ids.insert(40, "taken".into());
        ids.insert(70, "twin".into());
        ids.insert(90, "twin".into());
        ids.insert(100, "old".into());
        let mut tasks = vec![];
        for id in ids.clone() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let e = event(&id, "s");
                (id, store.insert_event("u1", &e, vec![created(&e)]).await)
            }));
        }
        let (mut ok, mut conflicts) = (vec![], vec![]);
        for t in tasks {
            match t.await.unwrap() {
                (id, Ok(log)) => {
                    assert_eq!(log.len(), 1);
                    ok.push((log[0].seq, id));
                }
                (id, Err(StoreError::Conflict { field })) => {
                    assert_eq!(field, "id");
                    conflicts.push(id);
                }
                (id, Err(e)) => panic!("{id}: {e:?}"),
            }
        }
        conflicts.sort();
        assert_eq!(conflicts, vec!["taken".to_string(), "twin".to_string()], "exactly the duplicates fail");
        assert_eq!(ok.len(), ids.len() - 2);
        ok.sort();
        let seqs: Vec<u64> = ok.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (before + 1..=before + ok.len() as u64).collect::<Vec<u64>>(), "dense, after what was there");
        let read = store.changes_after(before, 1000).await.unwrap();
        assert_eq!(read.iter().map(|c| c.seq).collect::<Vec<u64>>(), seqs, "the log holds them in order");
        for (c, (_, id)) in read.iter().zip(&ok) {
            assert!(matches!(&c.items[..], [ChangedItem::Event { id: logged, .. }] if logged == id), "{c:?} is {id}'s");
        }
        for (_, id) in &ok {
            assert!(store.event("u1", id).await.unwrap().is_some(), "{id} committed");
        }
        // The tombstone made way: "old" is live again, in its new stream only.
        let in_s = store.events_in_streams("u1", &["s".into()]).await.unwrap();
        assert_eq!(in_s.len(), ok.len() + 1, "the created ones and `taken`");
        assert!(store.events_in_streams("u1", &["gone".into()]).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn several_changes_of_one_write_are_logged_in_order() {
    on_each_store(|store| async move {
        let access = Access {
            id: "acc".into(),
            token: "tok".into(),
            access_type: AccessType::App,
            name: "app".into(),
            device_name: None,
            permissions: vec![],
            expires: None,
            client_data: None,
            created: 1.0,
            created_by: "x".into(),
            modified: 1.0,
            modified_by: "x".into(),
            deleted: None,
        };
        let first = Change::new("u1", "alice", ChangeKind::Accesses, ChangeType::Create, vec![]);
        let second = Change::new("u1", "alice", ChangeKind::Streams, ChangeType::Update, vec![]);
        let logged = store.insert_access("u1", &access, vec![first, second]).await.unwrap();
        assert_eq!(logged[1].seq, logged[0].seq + 1);
        assert_eq!((logged[0].kind, logged[1].kind), (ChangeKind::Accesses, ChangeKind::Streams));
    })
    .await;
}

#[tokio::test]
async fn the_cursor_is_saved_with_the_records_and_never_moves_back() {
    on_each_store(|store| async move {
        assert_eq!(store.log_cursor("dispatcher").await.unwrap(), 0);
        store.record_deliveries(vec![], Some(LogCursor { consumer: "dispatcher", seq: 7 })).await.unwrap();
        assert_eq!(store.log_cursor("dispatcher").await.unwrap(), 7);
        store.record_deliveries(vec![], Some(LogCursor { consumer: "dispatcher", seq: 5 })).await.unwrap();
        assert_eq!(store.log_cursor("dispatcher").await.unwrap(), 7);
        store.record_deliveries(vec![], Some(LogCursor { consumer: "other", seq: 2 })).await.unwrap();
        assert_eq!(store.log_cursor("dispatcher").await.unwrap(), 7);
    })
    .await;
}

#[tokio::test]
async fn trimming_keeps_what_a_consumer_has_not_passed_and_what_is_recent() {
    on_each_store(|store| async move {
        for i in 0..10 {
            let e = event(&format!("e{i}"), "s");
            store.insert_event("u1", &e, vec![created(&e)]).await.unwrap();
        }
        let future = f64::MAX;
        store.record_deliveries(vec![], Some(LogCursor { consumer: "dispatcher", seq: 4 })).await.unwrap();
        // Every record is recent: retention keeps them all.
        assert_eq!(store.trim_change_log(0.0, 1000).await.unwrap(), 0);
        // Old enough: only what the consumer passed goes, `limit` at a time.
        assert_eq!(store.trim_change_log(future, 3).await.unwrap(), 3);
        assert_eq!(store.trim_change_log(future, 1000).await.unwrap(), 1);
        assert_eq!(store.trim_change_log(future, 1000).await.unwrap(), 0);
        let stats = store.change_log_stats().await.unwrap();
        assert_eq!((stats.records, stats.first, stats.last), (6, 5, 10));
        // A second consumer behind the first holds the log back.
        store.record_deliveries(vec![], Some(LogCursor { consumer: "dispatcher", seq: 10 })).await.unwrap();
        store.record_deliveries(vec![], Some(LogCursor { consumer: "laggard", seq: 6 })).await.unwrap();
        assert_eq!(store.trim_change_log(future, 1000).await.unwrap(), 2);
        store.record_deliveries(vec![], Some(LogCursor { consumer: "laggard", seq: 10 })).await.unwrap();
        assert_eq!(store.trim_change_log(future, 1000).await.unwrap(), 3, "the newest record stays");
        assert_eq!(store.change_log_stats().await.unwrap().records, 1);
        // Numbers are never given twice.
        assert_eq!(store.last_seq().await.unwrap(), 10);
        let e = event("after", "s");
        assert_eq!(store.insert_event("u1", &e, vec![created(&e)]).await.unwrap()[0].seq, 11);
    })
    .await;
}

/// `tests/fixtures/data-v0` in the `herald` crate was written by the release before the change
/// log (schema version 0). It opens, is migrated, and keeps everything, `pending` included.
#[tokio::test]
async fn a_data_dir_of_the_first_release_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../herald/tests/fixtures/data-v0/herald.db");
    std::fs::copy(&fixture, dir.path().join("herald.db")).unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
    let user = store.user_by_name("fixture").await.unwrap().expect("the user is kept");
    let access = store.access_by_token(&user.id, "fixture-app-token").await.unwrap().expect("the app access is kept");
    assert_eq!(access.name, "fixture-app");
    let streams: Vec<String> = store.streams(&user.id).await.unwrap().into_iter().map(|s| s.id).collect();
    assert!(streams.contains(&"activity".to_string()) && streams.contains(&"sleep".to_string()), "{streams:?}");
    assert!(store.event(&user.id, "fixtureevent3").await.unwrap().is_some());
    let mut hooks = store.webhooks(&user.id, None).await.unwrap();
    hooks.sort_by(|a, b| a.url.cmp(&b.url));
    let pending: Vec<(String, Vec<String>)> = hooks.into_iter().map(|w| (w.url, w.pending)).collect();
    assert_eq!(
        pending,
        vec![
            ("http://127.0.0.1:9/plain".to_string(), vec!["eventsChanged".to_string(), "streamsChanged".to_string()]),
            ("http://127.0.0.1:9/scoped".to_string(), vec!["activityChanged".to_string()]),
        ]
    );
    // The log exists and starts empty; writes are logged from now on.
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let e = event("new", "activity");
    let logged = store.insert_event(&user.id, &e, vec![created(&e)]).await.unwrap();
    assert_eq!(logged[0].seq, 1);
    drop(store);
    // Opening again runs no migration twice.
    let again = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
    assert_eq!(again.last_seq().await.unwrap(), 1);
}

/// Nodes that start at once against a new database: one migrates, the others wait, all serve.
#[tokio::test]
async fn postgres_nodes_starting_at_once_migrate_once() {
    if !common::postgres_listening("postgres_nodes_starting_at_once_migrate_once") {
        return;
    }
    let (first, name) = pg_store().await;
    drop(first);
    let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
    // A database that none has migrated yet.
    drop_db(&name).await;
    let (admin, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
    let nodes = futures::future::join_all((0..4).map(|_| PgStore::connect(&url))).await;
    for n in &nodes {
        assert!(n.is_ok(), "{:?}", n.as_ref().err());
    }
    let store = nodes.into_iter().next().unwrap().unwrap();
    let e = event("x", "s");
    assert_eq!(store.insert_event("u1", &e, vec![created(&e)]).await.unwrap()[0].seq, 1);
    drop(store);
    drop_db(&name).await;
}

/// `insert_event_fresh` (a node that authorised a create from caches without reading the log
/// first) is refused, nothing written or logged, when the log holds past what the node had read
/// a change to the user's accesses or streams; the user's own events and other users' changes do
/// not refuse it, and in a group of concurrent creates only the stale one fails. (PostgreSQL
/// only: a store no other node writes has nothing to check.)
#[tokio::test]
async fn a_create_checked_against_the_log_is_refused_after_a_change_of_the_users_accesses() {
    if !common::postgres_listening("a_create_checked_against_the_log_is_refused_after_a_change_of_the_users_accesses") {
        return;
    }
    let (store, name) = pg_store().await;
    let change = |user: &str, kind| Change::new(user, "someone", kind, ChangeType::Update, vec![]);
    let a = event("a", "s");
    let seen = store.insert_event("u1", &a, vec![created(&a)]).await.unwrap()[0].seq;
    let b = event("b", "s");
    store.insert_event("u1", &b, vec![created(&b)]).await.unwrap();
    let o = event("o", "s");
    store.insert_event("u2", &o, vec![change("u2", ChangeKind::Accesses)]).await.unwrap();
    let c = event("c", "s");
    assert!(store.insert_event_fresh("u1", &c, vec![created(&c)], seen).await.is_ok(), "nothing of u1's accesses or streams changed");

    for kind in [ChangeKind::Accesses, ChangeKind::Streams] {
        let seen = store.last_seq().await.unwrap();
        let d = event(&format!("d-{}", kind.as_str()), "s");
        store.insert_event("u1", &d, vec![change("u1", kind)]).await.unwrap();
        let last = store.last_seq().await.unwrap();
        let stale = event("stale", "s");
        assert_eq!(store.insert_event_fresh("u1", &stale, vec![created(&stale)], seen).await, Err(StoreError::Stale));
        assert!(store.event("u1", "stale").await.unwrap().is_none(), "nothing written");
        assert_eq!(store.last_seq().await.unwrap(), last, "nothing logged");
    }

    // One stale create among many at once: it alone fails.
    let current = store.last_seq().await.unwrap();
    let mut tasks = vec![];
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = event(&format!("g{i}"), "s");
            let seen = if i == 17 { seen } else { current };
            store.insert_event_fresh("u1", &e, vec![created(&e)], seen).await.map(|_| ())
        }));
    }
    let mut failed = vec![];
    for (i, t) in tasks.into_iter().enumerate() {
        if let Err(e) = t.await.unwrap() {
            failed.push((i, e));
        }
    }
    assert_eq!(failed, vec![(17, StoreError::Stale)]);
    assert_eq!(store.last_seq().await.unwrap(), current + 39, "the others are logged, densely");
    drop(store);
    drop_db(&name).await;
}
