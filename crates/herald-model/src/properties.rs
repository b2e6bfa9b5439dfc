//! Property tests (proptest): query parsing never panics, permissions never reach past what a
//! simple reference implementation allows, and the webhook machine keeps its invariants.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::access::{Access, AccessType, Level, Permission};
use crate::query::{parse_streams, EventsQuery};
use crate::stream::{test_stream, StreamTree};
use crate::webhook::Webhook;
use crate::webhook_machine::{Machine, Outcome};
use crate::ErrorId;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["*", "a", "b", "[", "{", "[{\"any\":[\"a\"]}]", "count/*", "note/txt", "true", "-1", "1e400", "all"])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    // events.get's parameters, the streams query's operators, and an unknown key.
                    prop::sample::select(
                        crate::query::EVENTS_GET_PARAMS.iter().copied().chain(["any", "all", "not", "x"]).collect::<Vec<&str>>()
                    ),
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// A random forest of up to 12 streams: stream i's parent is one of the streams before it.
fn any_tree() -> impl Strategy<Value = Vec<Option<usize>>> {
    (1usize..12)
        .prop_flat_map(|n| (0..n).map(|i| if i == 0 { Just(None).boxed() } else { prop::option::of(0..i).boxed() }).collect::<Vec<_>>())
}

fn level() -> impl Strategy<Value = Level> {
    prop::sample::select(vec![Level::Read, Level::CreateOnly, Level::Contribute, Level::Manage])
}

fn app_access(perms: &BTreeMap<String, Level>) -> Access {
    Access {
        id: "a".into(),
        token: "t".into(),
        access_type: AccessType::App,
        name: "n".into(),
        device_name: None,
        permissions: perms.iter().map(|(s, l)| Permission::Stream { stream_id: s.clone(), level: *l, default_name: None }).collect(),
        expires: None,
        client_data: None,
        created: 0.0,
        created_by: "x".into(),
        modified: 0.0,
        modified_by: "x".into(),
        deleted: None,
    }
}

/// The reference: the permission of the nearest ancestor (itself first), else that of `*`.
fn reference_level(parents: &HashMap<String, Option<String>>, perms: &BTreeMap<String, Level>, id: &str) -> Option<Level> {
    let mut cur = Some(id.to_string());
    while let Some(c) = cur {
        if let Some(l) = perms.get(&c) {
            return Some(*l);
        }
        cur = parents.get(&c).cloned().flatten();
    }
    perms.get("*").copied()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn query_parsing_never_panics(v in any_json(), s in ".{0,40}") {
        let _ = EventsQuery::parse(&v);
        let _ = parse_streams(&v);
        let _ = parse_streams(&Value::String(s.clone()));
        let _ = EventsQuery::parse(&json!({ "streams": s, "types": [s.clone()] }));
        if let Ok(mut q) = EventsQuery::parse(&v) {
            q.apply_defaults(1_000.0);
        }
    }

    #[test]
    fn access_stays_within_its_permissions(
        tree in any_tree(),
        perm_list in prop::collection::vec((0usize..13, level()), 0..6),
        query_ids in prop::collection::vec(0usize..13, 1..5),
        event_streams in prop::collection::vec(prop::collection::vec(0usize..12, 1..3), 0..10),
    ) {
        let name = |i: usize| if i == 12 { "*".to_string() } else { format!("s{i}") };
        let streams: Vec<_> = tree.iter().enumerate().map(|(i, p)| test_stream(&name(i), p.map(name).as_deref())).collect();
        let parents: HashMap<String, Option<String>> = streams.iter().map(|s| (s.id.clone(), s.parent_id.clone())).collect();
        let st = StreamTree::new(&streams);
        let n = tree.len();
        let perms: BTreeMap<String, Level> = perm_list.into_iter().filter(|(i, _)| *i == 12 || *i < n).map(|(i, l)| (name(i), l)).collect();
        let access = app_access(&perms);
        for s in &streams {
            let r = reference_level(&parents, &perms, &s.id);
            prop_assert_eq!(access.can_read_stream(&st, &s.id), r.is_some_and(|l| l != Level::CreateOnly), "read {}", s.id);
            prop_assert_eq!(access.can_manage_stream(&st, &s.id), r == Some(Level::Manage), "manage {}", s.id);
        }
        for ev in &event_streams {
            let ids: Vec<String> = ev.iter().filter(|i| **i < n).map(|i| name(*i)).collect();
            if ids.is_empty() { continue; }
            let lv: Vec<Option<Level>> = ids.iter().map(|s| reference_level(&parents, &perms, s)).collect();
            prop_assert_eq!(access.can_create_event(&st, &ids), lv.iter().all(|l| l.is_some_and(|l| l != Level::Read)));
            prop_assert_eq!(
                access.can_update_event(&st, &ids),
                lv.iter().all(|l| matches!(l, Some(Level::Contribute | Level::Manage)))
            );
            prop_assert_eq!(access.can_read_event(&st, &ids), lv.iter().any(|l| l.is_some_and(|l| l != Level::CreateOnly)));
        }
        // events.get: whatever the query, what it may match is readable.
        let readable = |s: &str| reference_level(&parents, &perms, s).is_some_and(|l| l != Level::CreateOnly);
        let q: Vec<String> = query_ids.iter().map(|i| name(*i)).collect();
        for params in [json!({}), json!({ "streams": q }), json!({ "streams": [{ "any": ["*"], "not": [q[0]] }] }), json!({ "streams": { "all": q } })] {
            match EventsQuery::parse(&params).unwrap().resolve(&access, &st) {
                Ok(f) => {
                    for g in &f.groups {
                        match g.any.as_ref() {
                            Some(any) => prop_assert!(any.iter().all(|s| readable(s)), "{any:?}"),
                            // Unrestricted only when the access may read every stream there is.
                            None => prop_assert!(streams.iter().all(|s| readable(&s.id)), "unrestricted without reading everything"),
                        }
                        for set in &g.all {
                            prop_assert!(set.iter().all(|s| readable(s)), "{set:?}");
                        }
                        for ev in &event_streams {
                            let ids: Vec<String> = ev.iter().filter(|i| **i < n).map(|i| name(*i)).collect();
                            // An event is in at least one stream of the tree.
                            if !ids.is_empty() && g.matches(&ids) {
                                prop_assert!(ids.iter().any(|s| readable(s)));
                            }
                        }
                    }
                }
                Err(e) => prop_assert!(matches!(e.id, ErrorId::Forbidden | ErrorId::UnknownReferencedResource), "{e}"),
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Message(u8),
    Result(u16),
    Timer,
    Wait(u32),
    Activate(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..5).prop_map(Op::Message),
        4 => prop::sample::select(vec![200u16, 204, 0, 400, 500, 503, 429, 410]).prop_map(Op::Result),
        2 => Just(Op::Timer),
        3 => (0u32..5_000).prop_map(Op::Wait),
        1 => any::<bool>().prop_map(Op::Activate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn webhook_machine_invariants(max_retries in 0u32..5, min_interval in 1u64..500, ops in prop::collection::vec(op(), 1..80)) {
        let mut m = Machine::new(&Webhook::new("w".into(), "a", "http://x", min_interval, max_retries, "s".into(), 0.0));
        let mut now = 1_000_000.0f64;
        let mut wake: Option<f64> = None;
        // What the receiver is owed, by the model: added while active, removed by a success.
        let mut owed: BTreeSet<String> = BTreeSet::new();
        let mut sent: Vec<String> = vec![];
        let mut added_during_flight: BTreeSet<String> = BTreeSet::new();
        let mut failures_in_a_row = 0u32;
        let mut last_delay = m.delay_ms();
        let mut deactivated_by_api = false;
        let mut saw_410 = false;
        for op in ops {
            let was_sending = m.is_sending();
            let step = match op {
                Op::Message(k) => {
                    let msg = format!("m{k}");
                    if m.active {
                        owed.insert(msg.clone());
                        if was_sending { added_during_flight.insert(msg.clone()); }
                    }
                    m.on_message(&msg, now)
                }
                Op::Result(status) => {
                    if !was_sending { continue; }
                    let outcome = Outcome { status, retry_after_ms: (status == 503 || status == 429).then_some(1_000) };
                    let before = m.delay_ms();
                    let s = m.on_result(outcome, now);
                    if outcome.is_success() {
                        for msg in &sent {
                            if !added_during_flight.contains(msg) { owed.remove(msg); }
                        }
                        failures_in_a_row = 0;
                    } else {
                        failures_in_a_row += 1;
                        saw_410 |= status == 410;
                        // Delays never shrink while failing.
                        prop_assert!(m.delay_ms() >= before, "delay shrank: {} -> {}", before, m.delay_ms());
                        prop_assert!(m.delay_ms() >= last_delay);
                        if failures_in_a_row > max_retries {
                            prop_assert!(!m.active, "still active after {} failures", failures_in_a_row);
                        } else if !saw_410 && !deactivated_by_api {
                            prop_assert!(m.active, "inactive after only {} failures", failures_in_a_row);
                        }
                    }
                    last_delay = m.delay_ms();
                    added_during_flight.clear();
                    s
                }
                Op::Timer => match wake.take() {
                    Some(at) => { now = now.max(at); m.on_timer(at, now) }
                    None => continue,
                },
                Op::Wait(ms) => { now += ms as f64; continue; }
                Op::Activate(on) => {
                    let was_active = m.active;
                    let s = m.on_update(if on { crate::webhook::WebhookState::Active } else { crate::webhook::WebhookState::Inactive }, now);
                    if on && !was_active {
                        failures_in_a_row = 0;
                        saw_410 = false;
                        deactivated_by_api = false;
                        last_delay = m.delay_ms();
                    }
                    if !on { deactivated_by_api = true; }
                    s
                }
            };
            // One POST in flight at most: a send only when none was.
            if let Some(msgs) = &step.send {
                prop_assert!(!was_sending || matches!(op, Op::Result(_)), "a second POST while one is in flight");
                prop_assert!(!msgs.is_empty());
                sent = msgs.clone();
                added_during_flight.clear();
            }
            if let Some(at) = step.wake_at { wake = Some(at); }
            // Nothing owed is ever dropped, nothing is invented.
            let machine_owed: BTreeSet<String> = m.owed().into_iter().collect();
            prop_assert_eq!(&machine_owed, &owed, "after {:?}", op);
        }
    }
}
