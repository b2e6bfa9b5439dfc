//! `events.get` queries on the real stores, SQLite and PostgreSQL (each test runs on both): the
//! index-driven shapes give the same answers as a reference filter, and no input size reaches
//! the databases' limits (SQLite's variables and expression depth, PostgreSQL's parameters).

mod common;

use std::sync::Arc;

use common::on_each_store;

use herald_model::event::Event;
use herald_model::query::{EventFilter, ResolvedGroup, StateFilter, TypeFilter};
use herald_storage::Store;

fn event(i: usize, streams: &[&str], t: &str, time: f64, duration: Option<f64>) -> Event {
    Event {
        id: format!("e{i:05}"),
        stream_ids: streams.iter().map(|s| s.to_string()).collect(),
        time,
        duration,
        event_type: t.into(),
        content: None,
        description: None,
        client_data: None,
        trashed: false,
        created: time,
        created_by: "a".into(),
        modified: time,
        modified_by: "a".into(),
        attachments: vec![],
    }
}

fn filter(groups: Vec<ResolvedGroup>) -> EventFilter {
    EventFilter {
        groups,
        types: vec![],
        from_time: None,
        to_time: None,
        state: StateFilter::Default,
        running: None,
        modified_since: None,
        sort_ascending: false,
        skip: 0,
        limit: None,
    }
}

fn any(ids: &[&str]) -> ResolvedGroup {
    ResolvedGroup { any: Some(ids.iter().map(|s| s.to_string()).collect()), all: vec![], not: vec![] }
}

fn ids(v: &[Event]) -> Vec<String> {
    v.iter().map(|e| e.id.clone()).collect()
}

/// 300 events over streams a, b, c (some in two), types x/y and z/w, a few long or running.
async fn seeded(store: &Arc<dyn Store>) -> Vec<Event> {
    let mut all = vec![];
    for i in 0..300usize {
        let streams: &[&str] = match i % 5 {
            0 => &["a", "b"],
            1 | 2 => &["a"],
            3 => &["b"],
            _ => &["c"],
        };
        let t = if i.is_multiple_of(3) { "x/y" } else { "z/w" };
        let duration = match i {
            10 => Some(250.0),
            20 => None,
            _ => Some(0.0),
        };
        all.push(event(i, streams, t, 1000.0 + i as f64, duration));
    }
    store.insert_events("u", all.clone(), vec![]).await.unwrap();
    all
}

/// The reference: filter in Rust, newest first.
fn expected(all: &[Event], f: &EventFilter) -> Vec<String> {
    let mut v: Vec<&Event> = all
        .iter()
        .filter(|e| f.groups.is_empty() || f.groups.iter().any(|g| g.matches(&e.stream_ids)))
        .filter(|e| f.types.is_empty() || f.types.iter().any(|t| t.matches(&e.event_type)))
        .filter(|e| f.to_time.is_none_or(|to| e.time <= to))
        .filter(|e| f.from_time.is_none_or(|from| e.duration.is_none_or(|d| e.time + d >= from)))
        .collect();
    v.sort_by(|a, b| b.time.total_cmp(&a.time).then(b.id.cmp(&a.id)));
    let v = v.into_iter().skip(f.skip as usize);
    let v: Vec<&Event> = match f.limit {
        Some(l) => v.take(l as usize).collect(),
        None => v.collect(),
    };
    v.into_iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn every_query_shape_answers_like_the_reference() {
    on_each_store(|store| async move { every_query_shape(store).await }).await;
}

async fn every_query_shape(store: Arc<dyn Store>) {
    let all = seeded(&store).await;
    let mut cases = vec![
        filter(vec![any(&["a"])]),
        filter(vec![any(&["a", "a"])]),
        filter(vec![any(&["a", "c"])]),
        filter(vec![ResolvedGroup { any: None, all: vec![vec!["a".into()], vec!["b".into()]], not: vec![] }]),
        filter(vec![ResolvedGroup { any: Some(vec!["a".into()]), all: vec![], not: vec!["b".into()] }]),
        filter(vec![any(&["c"]), any(&["b"])]),
    ];
    let mut f = filter(vec![any(&["a"])]);
    f.types = vec![TypeFilter::Exact("x/y".into())];
    cases.push(f);
    // Several streams every event must be in (merged ranges on SQLite): disjoint, three, with
    // `not`, a type, a page and a time range.
    let both = |a: &str, b: &str| ResolvedGroup { any: Some(vec![a.into()]), all: vec![vec![b.into()]], not: vec![] };
    cases.push(filter(vec![both("a", "c")]));
    cases.push(filter(vec![ResolvedGroup { any: None, all: vec![vec!["a".into()], vec!["b".into()], vec!["c".into()]], not: vec![] }]));
    cases.push(filter(vec![ResolvedGroup { any: Some(vec!["a".into()]), all: vec![vec!["b".into()]], not: vec!["c".into()] }]));
    let mut f = filter(vec![both("b", "a")]);
    f.types = vec![TypeFilter::Exact("x/y".into())];
    f.limit = Some(4);
    f.skip = 2;
    cases.push(f);
    let mut f = filter(vec![both("a", "b")]);
    f.from_time = Some(1100.0);
    f.to_time = Some(1150.0);
    cases.push(f);
    // `any` of a few streams (merged ranges on SQLite): overlapping (a and b share events),
    // with `all`, `not`, a type, a page and a time range.
    cases.push(filter(vec![any(&["a", "b", "c"])]));
    cases.push(filter(vec![ResolvedGroup { any: Some(vec!["b".into(), "c".into()]), all: vec![], not: vec!["a".into()] }]));
    cases.push(filter(vec![ResolvedGroup {
        any: Some(vec!["b".into(), "c".into()]),
        all: vec![vec!["a".into(), "c".into()]],
        not: vec![],
    }]));
    let mut f = filter(vec![any(&["b", "a"])]);
    f.types = vec![TypeFilter::Exact("x/y".into())];
    f.limit = Some(5);
    f.skip = 3;
    cases.push(f);
    let mut f = filter(vec![any(&["c", "b"])]);
    f.from_time = Some(1100.0);
    f.to_time = Some(1150.0);
    cases.push(f);
    let mut f = filter(vec![]);
    f.types = vec![TypeFilter::Class("x".into()), TypeFilter::Exact("z/w".into())];
    cases.push(f);
    let mut f = filter(vec![]);
    f.types = vec![TypeFilter::Exact("x/y".into())];
    f.limit = Some(7);
    f.skip = 3;
    cases.push(f);
    // Time ranges: the long event (10, 250 s) and the running one (20) overlap later ranges.
    for g in [vec![], vec![any(&["a"])]] {
        let mut f = filter(g);
        f.from_time = Some(1200.0);
        f.to_time = Some(1210.0);
        cases.push(f);
    }
    for f in cases {
        let mut f = f;
        for asc in [false, true] {
            f.sort_ascending = asc;
            let got = ids(&store.find_events("u", &f).await.unwrap());
            let mut want = expected(&all, &EventFilter { sort_ascending: false, ..f.clone() });
            if asc {
                // The reference sorts newest first; ascending reverses the whole match.
                let mut whole = expected(&all, &EventFilter { limit: None, skip: 0, ..f.clone() });
                whole.reverse();
                want = whole.into_iter().skip(f.skip as usize).take(f.limit.unwrap_or(u64::MAX) as usize).collect();
            }
            assert_eq!(got, want, "{f:?}");
        }
    }
    // The long and the running events are in the time range.
    let mut f = filter(vec![]);
    f.from_time = Some(1200.0);
    f.to_time = Some(1210.0);
    let got = ids(&store.find_events("u", &f).await.unwrap());
    assert!(got.contains(&"e00010".to_string()) && got.contains(&"e00020".to_string()), "{got:?}");
}

#[tokio::test]
async fn huge_inputs_stay_within_the_databases_limits() {
    on_each_store(|store| async move { huge_inputs(store).await }).await;
}

async fn huge_inputs(store: Arc<dyn Store>) {
    seeded(&store).await;
    let many: Vec<String> = (0..50_000).map(|i| format!("s{i}")).chain(["a".to_string()]).collect();
    let mut f = filter(vec![ResolvedGroup { any: Some(many.clone()), all: vec![many.clone()], not: many[..49_999].to_vec() }]);
    f.types =
        (0..5_000).map(|i| TypeFilter::Exact(format!("t/x{i}"))).chain((0..5_000).map(|i| TypeFilter::Class(format!("c{i}")))).collect();
    f.types.push(TypeFilter::Exact("z/w".into()));
    let got = store.find_events("u", &f).await.unwrap();
    assert_eq!(got.len(), 120, "every event of `a` with type z/w");
    let groups: Vec<ResolvedGroup> = (0..1_500).map(|i| any(&[&format!("s{i}")])).collect();
    assert!(store.find_events("u", &filter(groups.clone())).await.unwrap().is_empty());
    assert!(store.event_deletions("u", &filter(groups), 0.0).await.unwrap().is_empty());
    assert_eq!(store.events_in_streams("u", &many).await.unwrap().len(), 180);
}

#[tokio::test]
async fn many_groups_answer_like_few() {
    on_each_store(|store| async move {
        let all = seeded(&store).await;
        let mut groups: Vec<ResolvedGroup> = (0..20).map(|i| any(&[&format!("s{i}")])).collect();
        groups.push(ResolvedGroup { any: Some(vec!["a".into()]), all: vec![vec!["b".into()]], not: vec![] });
        groups.push(ResolvedGroup { any: None, all: vec![vec!["c".into(), "zz".into()]], not: vec!["a".into()] });
        let f = filter(groups);
        assert_eq!(ids(&store.find_events("u", &f).await.unwrap()), expected(&all, &f));
    })
    .await;
}

/// `all` of two streams reads the events they share from an index kept by the store
/// (`event_stream_pairs` on SQLite): it follows events moved between streams, moved in time,
/// deleted, and created again over a deletion's tombstone.
#[tokio::test]
async fn all_follows_every_change_of_membership() {
    on_each_store(|store| async move {
        let mut all = seeded(&store).await;
        // e00000 (a, b) moves to (a, c) and later in time; e00001 (a) joins b; e00005 (a, b)
        // is deleted; e00010 (a, b) is deleted, then created again in (b, c).
        let mut moved = all[0].clone();
        moved.stream_ids = vec!["a".into(), "c".into()];
        moved.time = 1500.0;
        store.update_event("u", &moved, vec![]).await.unwrap();
        all[0] = moved;
        let mut joined = all[1].clone();
        joined.stream_ids = vec!["a".into(), "b".into()];
        store.update_event("u", &joined, vec![]).await.unwrap();
        all[1] = joined;
        store.delete_event("u", "e00005", 2000.0, vec![]).await.unwrap();
        store.delete_event("u", "e00010", 2000.0, vec![]).await.unwrap();
        let mut again = all[10].clone();
        again.stream_ids = vec!["b".into(), "c".into()];
        store.insert_event("u", &again, vec![]).await.unwrap();
        all[10] = again;
        let live: Vec<Event> = all.into_iter().filter(|e| e.id != "e00005").collect();
        let both = |a: &str, b: &str| ResolvedGroup { any: None, all: vec![vec![a.into()], vec![b.into()]], not: vec![] };
        for (a, b) in [("a", "b"), ("b", "a"), ("a", "c"), ("b", "c")] {
            for asc in [false, true] {
                let mut f = filter(vec![both(a, b)]);
                f.sort_ascending = asc;
                let got = ids(&store.find_events("u", &f).await.unwrap());
                let mut want = expected(&live, &EventFilter { sort_ascending: false, ..f.clone() });
                if asc {
                    want.reverse();
                }
                assert!(!want.is_empty(), "{a} and {b} share events");
                assert_eq!(got, want, "all [{a}, {b}], ascending: {asc}");
            }
        }
    })
    .await;
}

/// PostgreSQL's `event_stream_pairs` (written beside the memberships) against what the
/// memberships say, after each kind of write of memberships; SQLite's twin is a unit test in
/// `sqlite/mod.rs`. `events.get` re-checks each event's streams, so only this sees a stale pair.
#[tokio::test]
async fn postgres_pairs_of_streams_follow_every_change_of_membership() {
    if !common::postgres_listening("postgres_pairs_of_streams_follow_every_change_of_membership") {
        return;
    }
    let (store, name) = common::pg_store().await;
    let url = format!("{}/{name}", common::admin_url().rsplit_once('/').unwrap().0);
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let pairs = || async {
        let rows = |sql: &'static str| {
            let db = &db;
            async move {
                db.query(sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, f64>(3), r.get::<_, String>(4))
                    })
                    .collect::<Vec<_>>()
            }
        };
        (
            rows("SELECT user_id, first_stream, second_stream, time, event_id FROM event_stream_pairs ORDER BY 1, 2, 3, 4, 5").await,
            rows(
                "SELECT a.user_id, a.stream_id, b.stream_id, a.time, a.event_id FROM event_streams a JOIN event_streams b \
                 ON b.user_id = a.user_id AND b.event_id = a.event_id AND b.stream_id > a.stream_id ORDER BY 1, 2, 3, 4, 5",
            )
            .await,
        )
    };
    store.insert_event("u", &event(1, &["a", "b", "c"], "x/y", 10.0, Some(0.0)), vec![]).await.unwrap();
    store.insert_event("u", &event(2, &["a"], "x/y", 11.0, Some(0.0)), vec![]).await.unwrap();
    store
        .insert_events("u", vec![event(3, &["b", "a"], "x/y", 12.0, Some(0.0)), event(4, &["c", "a"], "x/y", 13.0, Some(0.0))], vec![])
        .await
        .unwrap();
    store.insert_event("v", &event(1, &["a", "b"], "x/y", 10.0, Some(0.0)), vec![]).await.unwrap();
    let (got, want) = pairs().await;
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got, want);
    store.update_event("u", &event(1, &["c", "d"], "x/y", 20.0, Some(0.0)), vec![]).await.unwrap();
    store.update_event("u", &event(2, &["a", "b"], "x/y", 11.0, Some(0.0)), vec![]).await.unwrap();
    store.delete_event("u", "e00003", 30.0, vec![]).await.unwrap();
    store.delete_event("u", "e00004", 30.0, vec![]).await.unwrap();
    store.insert_event("u", &event(4, &["d", "b"], "x/y", 40.0, Some(0.0)), vec![]).await.unwrap();
    let (got, want) = pairs().await;
    assert!(got.iter().any(|p| p.1 == "b" && p.2 == "d" && p.4 == "e00004"), "{got:?}");
    assert_eq!(got, want);
    store.delete_user("u", vec![]).await.unwrap();
    let (got, want) = pairs().await;
    assert_eq!(got, vec![("v".to_string(), "a".to_string(), "b".to_string(), 10.0, "e00001".to_string())]);
    assert_eq!(got, want);
    assert!(db.execute("UPDATE event_streams SET time = 1 WHERE user_id = 'v'", &[]).await.is_err());
    drop(db);
    common::drop_db(&name).await;
}
