//! Scopes: named filters on changes, shared by scoped webhooks and scoped socket.io
//! subscriptions (spec 4.1). A scope `{kind, query}` matches a change of its kind when the
//! changed item falls in the query; the receiver is told the scope's key, nothing more.
//!
//! Herald matches against the stream tree as it is when the change happens, so a stream created
//! later under a watched stream is covered (Pryv.io froze the tree when the scope was created).

use serde_json::{Map, Value};

use crate::access::Access;
use crate::change::{Change, ChangeKind, ChangedItem};
use crate::error::{ApiError, ApiResult};
use crate::params::opt_str_array;
use crate::query::{parse_streams, EventsQuery, StreamGroup, TypeFilter};
use crate::stream::StreamTree;

#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub key: String,
    pub kind: ChangeKind,
    pub streams: Option<Vec<StreamGroup>>,
    pub types: Vec<TypeFilter>,
    pub access_ids: Option<Vec<String>>,
}

fn structure(key: &str, msg: &str) -> ApiError {
    ApiError::structure(format!("scope '{key}': {msg}"))
}

/// Parse the `scopes` map as clients give it. `null` or `{}` means "no scopes".
pub fn parse_scopes(v: &Value) -> ApiResult<Vec<Scope>> {
    let map = match v {
        Value::Null => return Ok(vec![]),
        Value::Object(m) => m,
        _ => return Err(ApiError::param("scopes", "\"scopes\" must be an object of {key: {kind, query}}.")),
    };
    if map.len() > 100 {
        return Err(ApiError::param("scopes", "At most 100 scopes."));
    }
    map.iter().map(|(k, s)| parse_scope(k, s)).collect()
}

pub fn parse_scope(key: &str, v: &Value) -> ApiResult<Scope> {
    if key.is_empty() || key.len() > 100 {
        return Err(structure(key, "keys must have 1 to 100 characters"));
    }
    let o = v.as_object().ok_or_else(|| structure(key, "must be an object {kind, query}"))?;
    if let Some(extra) = o.keys().find(|k| *k != "kind" && *k != "query") {
        return Err(structure(key, &format!("unknown property '{extra}'")));
    }
    let kind_str = match o.get("kind") {
        None | Some(Value::Null) => "events",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(structure(key, "kind must be a string")),
    };
    let kind = ChangeKind::parse(kind_str)
        .filter(|k| k.is_public())
        .ok_or_else(|| structure(key, &format!("kind '{kind_str}' is not yet supported")))?;
    let empty = Map::new();
    let q = match o.get("query") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(q)) => q,
        Some(_) => return Err(structure(key, "query must be an object")),
    };
    let allowed: &[&str] = match kind {
        ChangeKind::Events => &["streams", "types"],
        ChangeKind::Streams => &["streams"],
        _ => &["streams", "types", "accessIds"],
    };
    if let Some(extra) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(structure(key, &format!("query property '{extra}' is not supported for kind '{kind_str}'")));
    }
    let streams = q.get("streams").filter(|v| !v.is_null()).map(parse_streams).transpose()?;
    let types = opt_str_array(q, "types")?.unwrap_or_default();
    let types: Vec<TypeFilter> = match kind {
        // Events: event types, with `class/*`. Accesses: access types.
        ChangeKind::Events => EventsQuery::parse(&serde_json::json!({ "types": types }))?
            .types
            .unwrap_or_default()
            .into_iter()
            .map(|t| match t.strip_suffix("/*") {
                Some(c) => TypeFilter::Class(c.into()),
                None => TypeFilter::Exact(t),
            })
            .collect(),
        _ => types.into_iter().map(TypeFilter::Exact).collect(),
    };
    let access_ids = opt_str_array(q, "accessIds")?;
    if kind == ChangeKind::Accesses && streams.is_none() && types.is_empty() && access_ids.is_none() {
        return Err(structure(key, "an accesses scope needs streams, types or accessIds"));
    }
    Ok(Scope { key: key.into(), kind, streams, types, access_ids })
}

/// May `access` watch these scopes? Streams must exist and be readable; watching accesses needs
/// a personal access.
pub fn check_scopes(scopes: &[Scope], access: &Access, tree: &StreamTree) -> ApiResult<()> {
    for s in scopes {
        if s.kind == ChangeKind::Accesses && !access.is_personal() {
            return Err(ApiError::forbidden("Watching access changes requires a personal access."));
        }
        if let Some(groups) = &s.streams {
            let q = EventsQuery { streams: Some(groups.clone()), ..Default::default() };
            q.resolve(access, tree)?;
        }
    }
    Ok(())
}

fn in_groups(groups: &Option<Vec<StreamGroup>>, stream_ids: &[String], tree: &StreamTree) -> bool {
    let Some(groups) = groups else { return true };
    let expand = |ids: &[String]| -> Vec<String> {
        ids.iter().flat_map(|i| if i == "*" { tree.ids().cloned().collect() } else { tree.expand(i) }).collect()
    };
    groups.iter().any(|g| {
        let has_one = |set: &[String]| stream_ids.iter().any(|s| set.contains(s));
        (g.any.is_empty() || g.any.iter().any(|i| i == "*") || has_one(&expand(&g.any)))
            && g.all.iter().all(|i| has_one(&expand(std::slice::from_ref(i))))
            && !has_one(&expand(&g.not))
    })
}

fn item_matches(s: &Scope, item: &ChangedItem, tree: &StreamTree) -> bool {
    match item {
        ChangedItem::Event { stream_ids, event_type, .. } => {
            in_groups(&s.streams, stream_ids, tree) && (s.types.is_empty() || s.types.iter().any(|t| t.matches(event_type)))
        }
        ChangedItem::Stream { id, parent_id } => {
            let mut ids = vec![id.clone()];
            ids.extend(parent_id.clone());
            in_groups(&s.streams, &ids, tree)
        }
        ChangedItem::Access { id, access_type, stream_ids } => {
            s.access_ids.as_ref().is_none_or(|a| a.contains(id))
                && (s.types.is_empty() || access_type.as_deref().is_some_and(|t| s.types.iter().any(|f| f.matches(t))))
                && (s.streams.is_none() || in_groups(&s.streams, stream_ids, tree))
        }
        ChangedItem::Webhook { .. } => false,
    }
}

/// The keys of the scopes that this change matches, in scope order.
pub fn matched_keys<'a>(scopes: &'a [Scope], change: &Change, tree: &StreamTree) -> Vec<&'a str> {
    scopes
        .iter()
        .filter(|s| s.kind == change.kind && change.items.iter().any(|i| item_matches(s, i, tree)))
        .map(|s| s.key.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeType;
    use crate::stream::Stream;
    use serde_json::json;

    fn st(id: &str, parent: Option<&str>) -> Stream {
        crate::stream::test_stream(id, parent)
    }

    fn event_change(streams: &[&str], t: &str) -> Change {
        Change {
            seq: 0,
            user_id: "u".into(),
            username: "alice".into(),
            kind: ChangeKind::Events,
            change_type: ChangeType::Create,
            items: vec![ChangedItem::Event {
                id: "e".into(),
                stream_ids: streams.iter().map(|s| s.to_string()).collect(),
                event_type: t.into(),
            }],
        }
    }

    #[test]
    fn events_scopes_match_streams_and_types() {
        let scopes = parse_scopes(&json!({
            "diary": {"kind": "events", "query": {"streams": ["diary"]}},
            "mass": {"query": {"types": ["mass/*"]}},
            "structure": {"kind": "streams", "query": {"streams": ["diary"]}}
        }))
        .unwrap();
        let tree = StreamTree::new(&vec![st("diary", None), st("health", None)]);
        assert_eq!(matched_keys(&scopes, &event_change(&["diary"], "note/txt"), &tree), vec!["diary"]);
        assert_eq!(matched_keys(&scopes, &event_change(&["health"], "mass/kg"), &tree), vec!["mass"]);
        assert!(matched_keys(&scopes, &event_change(&["health"], "note/txt"), &tree).is_empty());
    }

    #[test]
    fn a_stream_created_later_under_a_watched_one_counts() {
        let scopes = parse_scopes(&json!({"s": {"query": {"streams": ["diary"]}}})).unwrap();
        let before = StreamTree::new(&vec![st("diary", None)]);
        assert!(matched_keys(&scopes, &event_change(&["late"], "note/txt"), &before).is_empty());
        let after = StreamTree::new(&vec![st("diary", None), st("late", Some("diary"))]);
        assert_eq!(matched_keys(&scopes, &event_change(&["late"], "note/txt"), &after), vec!["s"]);
    }

    #[test]
    fn streams_scope_matches_id_or_parent() {
        let scopes = parse_scopes(&json!({"k": {"kind": "streams", "query": {"streams": ["diary"]}}})).unwrap();
        let tree = StreamTree::new(&vec![st("diary", None), st("other", None)]);
        let c = |id: &str, parent: Option<&str>| Change {
            seq: 0,
            user_id: "u".into(),
            username: "a".into(),
            kind: ChangeKind::Streams,
            change_type: ChangeType::Create,
            items: vec![ChangedItem::Stream { id: id.into(), parent_id: parent.map(Into::into) }],
        };
        assert_eq!(matched_keys(&scopes, &c("new", Some("diary")), &tree), vec!["k"]);
        assert!(matched_keys(&scopes, &c("other", None), &tree).is_empty());
        // Only scopes of the same kind match.
        assert!(matched_keys(&scopes, &event_change(&["diary"], "a/b"), &tree).is_empty());
    }

    #[test]
    fn accesses_scope() {
        let scopes = parse_scopes(&json!({"a": {"kind": "accesses", "query": {"types": ["shared"]}}})).unwrap();
        let tree = StreamTree::default();
        let c = Change {
            seq: 0,
            user_id: "u".into(),
            username: "a".into(),
            kind: ChangeKind::Accesses,
            change_type: ChangeType::Create,
            items: vec![ChangedItem::Access { id: "x".into(), access_type: Some("shared".into()), stream_ids: vec![] }],
        };
        assert_eq!(matched_keys(&scopes, &c, &tree), vec!["a"]);
        assert!(parse_scopes(&json!({"a": {"kind": "accesses", "query": {}}})).is_err());
    }

    #[test]
    fn invalid_scopes() {
        assert!(parse_scopes(&json!([1])).is_err());
        assert!(parse_scopes(&json!({"a": {"kind": "nope"}})).is_err());
        assert!(parse_scopes(&json!({"a": {"query": {"foo": 1}}})).is_err());
        assert!(parse_scopes(&json!({"a": 5})).is_err());
        assert_eq!(parse_scopes(&json!({})).unwrap(), vec![]);
        assert_eq!(parse_scopes(&Value::Null).unwrap(), vec![]);
    }
}
