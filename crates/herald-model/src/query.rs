//! `events.get` queries: parsing Pryv's parameters (from JSON or a query string), applying Pryv's
//! defaults (spec 5.6), and resolving the streams query against the stream tree and the access
//! into an [`EventFilter`] that storage can run.
//!
//! The streams query is an array of groups OR-ed together; inside a group `any` (one of),
//! `all` (each of) and `not` (none of) are AND-ed. A stream id stands for itself and its
//! descendants. A plain array of ids is one `any` group. `*` means every readable stream.

use serde_json::{Map, Value};

use crate::access::Access;
use crate::error::{ApiError, ApiResult};
use crate::params::{as_object, opt_bool, opt_f64, opt_str, opt_str_array, opt_u64};
use crate::stream::StreamTree;
use crate::Timestamp;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamGroup {
    pub any: Vec<String>,
    pub all: Vec<String>,
    pub not: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    #[default]
    Default,
    Trashed,
    All,
}

/// A parsed `events.get` query, before it is checked against an access.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsQuery {
    pub streams: Option<Vec<StreamGroup>>,
    pub types: Option<Vec<String>>,
    pub from_time: Option<f64>,
    pub to_time: Option<f64>,
    pub limit: Option<u64>,
    pub skip: Option<u64>,
    pub sort_ascending: bool,
    pub state: StateFilter,
    pub running: Option<bool>,
    pub modified_since: Option<f64>,
    pub include_deletions: bool,
}

/// A type condition: an exact type, or every type of a class (`class/*`).
#[derive(Debug, Clone, PartialEq)]
pub enum TypeFilter {
    Exact(String),
    Class(String),
}

impl TypeFilter {
    pub fn matches(&self, t: &str) -> bool {
        match self {
            TypeFilter::Exact(e) => e == t,
            TypeFilter::Class(c) => t.split_once('/').is_some_and(|(tc, _)| tc == c),
        }
    }
}

/// One resolved group: every id list is already expanded to descendants and cut to what the
/// access may read. `any: None` means no restriction (personal access, no `any`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedGroup {
    pub any: Option<Vec<String>>,
    pub all: Vec<Vec<String>>,
    pub not: Vec<String>,
}

/// What storage runs: plain data, no access logic left in it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFilter {
    pub groups: Vec<ResolvedGroup>,
    pub types: Vec<TypeFilter>,
    pub from_time: Option<f64>,
    pub to_time: Option<f64>,
    pub state: StateFilter,
    pub running: Option<bool>,
    pub modified_since: Option<f64>,
    pub sort_ascending: bool,
    pub skip: u64,
    pub limit: Option<u64>,
}

/// Documented limits of `events.get` (docs/limits.md): past them a query answers 400
/// `invalid-parameters-format` naming the parameter, never a 500 from the database.
///
/// Types listed in `types`.
pub const MAX_TYPES: usize = 100;
/// Stream ids named in a streams query, over all its groups and their `any`, `all` and `not`
/// lists (repeated ids count once).
pub const MAX_QUERY_STREAM_IDS: usize = 1_000;
/// Stream ids a streams query may stand for once each id is expanded to its descendants, over
/// all groups and lists (`*` included).
pub const MAX_EXPANDED_STREAM_IDS: usize = 100_000;
/// Groups of a streams query.
pub const MAX_STREAM_GROUPS: usize = 100;

fn too_many(param: &str, what: &str, max: usize) -> ApiError {
    ApiError::param(param, format!("Too many {what}: at most {max} are accepted.")).with_data(serde_json::json!([{
        "code": "TOO_MANY",
        "message": format!("Too many {what}: at most {max} are accepted."),
        "path": format!("#/{param}"),
        "param": param,
        "max": max,
    }]))
}

/// Check the size of a parsed streams query (before anything is expanded).
pub fn check_streams_size(groups: &[StreamGroup]) -> ApiResult<()> {
    if groups.len() > MAX_STREAM_GROUPS {
        return Err(too_many("streams", "streams query groups", MAX_STREAM_GROUPS));
    }
    let mut seen = std::collections::HashSet::new();
    for g in groups {
        for id in g.any.iter().chain(&g.all).chain(&g.not) {
            seen.insert(id.as_str());
            if seen.len() > MAX_QUERY_STREAM_IDS {
                return Err(too_many("streams", "stream ids in the streams query", MAX_QUERY_STREAM_IDS));
            }
        }
    }
    Ok(())
}

/// Check the number of types (before they are validated one by one).
pub fn check_types_size(types: &[String]) -> ApiResult<()> {
    if types.len() > MAX_TYPES {
        return Err(too_many("types", "types", MAX_TYPES));
    }
    Ok(())
}

/// Each id once, in the order first given.
fn dedup(ids: &[String]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    ids.iter().map(String::as_str).filter(|s| seen.insert(*s)).collect()
}

/// The parameters of `events.get` (anything else is refused, as Pryv's schema does).
pub const EVENTS_GET_PARAMS: &[&str] = &[
    "streams",
    "types",
    "fromTime",
    "toTime",
    "limit",
    "skip",
    "sortAscending",
    "state",
    "running",
    "modifiedSince",
    "includeDeletions",
    "tags",
    "auth",
];

/// Parse the `streams` parameter in all its forms.
pub fn parse_streams(v: &Value) -> ApiResult<Vec<StreamGroup>> {
    let bad = |m: &str| ApiError::param("streams", m.to_string());
    match v {
        Value::String(s) => {
            let t = s.trim_start();
            if t.starts_with('[') || t.starts_with('{') {
                let parsed: Value = serde_json::from_str(s).map_err(|_| bad("\"streams\" is not valid JSON."))?;
                parse_streams(&parsed)
            } else {
                Ok(vec![StreamGroup { any: vec![s.clone()], ..Default::default() }])
            }
        }
        Value::Object(_) => Ok(vec![parse_group(v)?]),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            // Query strings repeat the key; one of the values may itself be JSON.
            if a.len() == 1 {
                return parse_streams(&a[0]);
            }
            Ok(vec![StreamGroup { any: a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(), ..Default::default() }])
        }
        Value::Array(a) => a.iter().map(parse_group).collect(),
        _ => Err(bad("\"streams\" must be an array of stream ids or a streams query.")),
    }
}

fn parse_group(v: &Value) -> ApiResult<StreamGroup> {
    let o = v.as_object().ok_or_else(|| ApiError::param("streams", "Each streams query group must be an object."))?;
    let list = |k: &str| -> ApiResult<Vec<String>> {
        match o.get(k) {
            None => Ok(vec![]),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| ApiError::param("streams", format!("\"{k}\" must list stream ids."))))
                .collect(),
            Some(_) => Err(ApiError::param("streams", format!("\"{k}\" must list stream ids."))),
        }
    };
    if let Some(k) = o.keys().find(|k| !["any", "all", "not"].contains(&k.as_str())) {
        return Err(ApiError::param("streams", format!("Unknown streams query operator \"{k}\".")));
    }
    let g = StreamGroup { any: list("any")?, all: list("all")?, not: list("not")? };
    if g.any.is_empty() && g.all.is_empty() {
        return Err(ApiError::param("streams", "A streams query group needs \"any\" or \"all\"."));
    }
    Ok(g)
}

fn parse_types(v: Option<Vec<String>>) -> ApiResult<Option<Vec<String>>> {
    if let Some(ts) = &v {
        check_types_size(ts)?;
        for t in ts {
            let ok = t.strip_suffix("/*").map(|c| !c.is_empty() && !c.contains('/')).unwrap_or_else(|| crate::event::is_valid_type(t));
            if !ok {
                return Err(ApiError::param("types", format!("\"{t}\" is not a valid type or class/* pattern.")));
            }
        }
    }
    Ok(v)
}

impl EventsQuery {
    pub fn parse(params: &Value) -> ApiResult<Self> {
        let m: Map<String, Value> = as_object(params)?;
        crate::params::reject_unknown(&m, EVENTS_GET_PARAMS)?;
        let state = match opt_str(&m, "state")?.as_deref() {
            None | Some("default") => StateFilter::Default,
            Some("trashed") => StateFilter::Trashed,
            Some("all") => StateFilter::All,
            Some(_) => return Err(ApiError::param("state", "\"state\" must be default, trashed or all.")),
        };
        // `tags` (deprecated by Pryv.io, never matched): checked for its type, then ignored.
        opt_str_array(&m, "tags")?;
        Ok(EventsQuery {
            streams: m
                .get("streams")
                .filter(|v| !v.is_null())
                .map(|v| parse_streams(v).and_then(|g| check_streams_size(&g).map(|_| g)))
                .transpose()?,
            types: parse_types(opt_str_array(&m, "types")?)?,
            from_time: opt_f64(&m, "fromTime")?,
            to_time: opt_f64(&m, "toTime")?,
            limit: opt_u64(&m, "limit")?,
            skip: opt_u64(&m, "skip")?,
            sort_ascending: opt_bool(&m, "sortAscending")?.unwrap_or(false),
            state,
            running: opt_bool(&m, "running")?,
            modified_since: opt_f64(&m, "modifiedSince")?,
            include_deletions: opt_bool(&m, "includeDeletions")?.unwrap_or(false),
        })
    }

    /// Pryv's retrieval defaults (spec 5.6): a `fromTime` alone runs to now, a `toTime` alone
    /// covers the 24 hours before it, and with none of fromTime, toTime, limit the limit is 20.
    pub fn apply_defaults(&mut self, now: Timestamp) {
        if self.from_time.is_none() && self.to_time.is_none() && self.limit.is_none() {
            self.limit = Some(20);
        }
        match (self.from_time, self.to_time) {
            (Some(_), None) => self.to_time = Some(now),
            (None, Some(t)) => self.from_time = Some(t - 24.0 * 3600.0),
            _ => {}
        }
    }

    /// Check the query against the access and the stream tree, and expand it for storage.
    /// Unknown streams → 400 `unknown-referenced-resource`; unreadable ones → 403 `forbidden`.
    pub fn resolve(&self, access: &Access, tree: &StreamTree) -> ApiResult<EventFilter> {
        let personal = access.is_personal();
        let readable_all = || -> Vec<String> { tree.ids().filter(|s| access.can_read_stream(tree, s)).cloned().collect() };
        let expand = |id: &str| -> ApiResult<Vec<String>> {
            if id == "*" {
                return Ok(readable_all());
            }
            if !tree.contains(id) {
                return Err(ApiError::unknown_referenced("stream", serde_json::json!({ "streams": [id] })));
            }
            if !access.can_read_stream(tree, id) {
                return Err(ApiError::forbidden(format!("stream [{id}] has not sufficent permission to get events")));
            }
            Ok(tree.expand(id).into_iter().filter(|s| personal || access.can_read_stream(tree, s)).collect())
        };
        let tree_len = tree.ids().count();
        let groups_in = self.streams.clone().unwrap_or_else(|| vec![StreamGroup { any: vec!["*".into()], ..Default::default() }]);
        check_streams_size(&groups_in)?;
        // Repeated ids are merged before expansion, and each expanded list holds an id once;
        // the total over all lists is bounded so no query grows past what storage can run.
        let mut expanded = 0usize;
        let mut count = |v: &[String]| -> ApiResult<()> {
            expanded += v.len();
            if expanded > MAX_EXPANDED_STREAM_IDS {
                return Err(too_many("streams", "stream ids once expanded to their children", MAX_EXPANDED_STREAM_IDS));
            }
            Ok(())
        };
        let union = |lists: Vec<Vec<String>>| -> Vec<String> {
            let mut seen = std::collections::HashSet::new();
            lists.into_iter().flatten().filter(|s| seen.insert(s.clone())).collect()
        };
        let mut groups = Vec::with_capacity(groups_in.len());
        for g in &groups_in {
            let any = if g.any.is_empty() || (personal && g.any.iter().any(|s| s == "*")) {
                if personal {
                    None
                } else {
                    Some(readable_all())
                }
            } else {
                let lists = dedup(&g.any).into_iter().map(expand).collect::<ApiResult<Vec<_>>>()?;
                Some(union(lists))
            };
            // An access that may read every stream (an app token with `*`) is not restricted:
            // no per-event membership check against the whole tree.
            let any = any.filter(|set| set.len() < tree_len);
            if let Some(a) = &any {
                count(a)?;
            }
            let all = dedup(&g.all).into_iter().map(expand).collect::<ApiResult<Vec<_>>>()?;
            for a in &all {
                count(a)?;
            }
            let not = union(dedup(&g.not).into_iter().filter(|id| tree.contains(id)).map(|id| tree.expand(id)).collect());
            count(&not)?;
            groups.push(ResolvedGroup { any, all, not });
        }
        let types = self
            .types
            .iter()
            .flatten()
            .map(|t| match t.strip_suffix("/*") {
                Some(class) => TypeFilter::Class(class.to_string()),
                None => TypeFilter::Exact(t.clone()),
            })
            .collect();
        Ok(EventFilter {
            groups,
            types,
            from_time: self.from_time,
            to_time: self.to_time,
            state: self.state,
            running: self.running,
            modified_since: self.modified_since,
            sort_ascending: self.sort_ascending,
            skip: self.skip.unwrap_or(0),
            limit: self.limit,
        })
    }
}

impl ResolvedGroup {
    /// Does an event with these streams belong to the group? (Used by scope matching and tests;
    /// storage evaluates the same condition in SQL.)
    pub fn matches(&self, stream_ids: &[String]) -> bool {
        let has_one = |set: &[String]| stream_ids.iter().any(|s| set.contains(s));
        self.any.as_deref().is_none_or(has_one) && self.all.iter().all(|set| has_one(set)) && !has_one(&self.not)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessType, Level, Permission};
    use crate::stream::Stream;
    use serde_json::json;

    fn st(id: &str, parent: Option<&str>) -> Stream {
        crate::stream::test_stream(id, parent)
    }

    fn acc(t: AccessType, perms: &[(&str, Level)]) -> Access {
        Access {
            id: "a".into(),
            token: "t".into(),
            access_type: t,
            name: "n".into(),
            device_name: None,
            permissions: perms.iter().map(|(s, l)| Permission::Stream { stream_id: (*s).into(), level: *l, default_name: None }).collect(),
            expires: None,
            client_data: None,
            created: 0.0,
            created_by: "x".into(),
            modified: 0.0,
            modified_by: "x".into(),
            deleted: None,
        }
    }

    fn tree() -> StreamTree {
        StreamTree::new(&vec![st("health", None), st("heart", Some("health")), st("steps", Some("health")), st("diary", None)])
    }

    #[test]
    fn streams_forms() {
        let g = parse_streams(&json!(["a", "b"])).unwrap();
        assert_eq!(g, vec![StreamGroup { any: vec!["a".into(), "b".into()], ..Default::default() }]);
        let g = parse_streams(&json!("a")).unwrap();
        assert_eq!(g[0].any, vec!["a"]);
        let g = parse_streams(&json!("[{\"any\":[\"a\"],\"not\":[\"b\"]}]")).unwrap();
        assert_eq!(g[0].not, vec!["b"]);
        let g = parse_streams(&json!({"all": ["a", "b"]})).unwrap();
        assert_eq!(g[0].all.len(), 2);
        let g = parse_streams(&json!(["{\"any\":[\"x\"]}"])).unwrap();
        assert_eq!(g[0].any, vec!["x"]);
        assert!(parse_streams(&json!(5)).is_err());
        assert!(parse_streams(&json!([{"foo": ["a"]}])).is_err());
        assert!(parse_streams(&json!([{"not": ["a"]}])).is_err());
        assert!(parse_streams(&json!("[oops")).is_err());
    }

    #[test]
    fn parse_from_query_strings() {
        let q = EventsQuery::parse(&json!({"limit": "5", "fromTime": "0", "sortAscending": "true", "types": "count/*", "state": "all"}))
            .unwrap();
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.from_time, Some(0.0));
        assert!(q.sort_ascending);
        assert_eq!(q.types, Some(vec!["count/*".to_string()]));
        assert_eq!(q.state, StateFilter::All);
        assert!(EventsQuery::parse(&json!({"limit": "x"})).is_err());
        assert!(EventsQuery::parse(&json!({"state": "nope"})).is_err());
        assert!(EventsQuery::parse(&json!({"types": ["Bad"]})).is_err());
        assert!(EventsQuery::parse(&json!({"unknown": 1})).is_err());
    }

    #[test]
    fn sizes_are_bounded() {
        let types: Vec<String> = (0..=MAX_TYPES).map(|i| format!("note/t{i}")).collect();
        let e = EventsQuery::parse(&json!({ "types": types })).unwrap_err();
        assert_eq!((e.status(), e.data.as_ref().unwrap()[0]["param"].as_str()), (400, Some("types")));
        assert!(EventsQuery::parse(&json!({ "types": &types[..MAX_TYPES] })).is_ok());
        let ids: Vec<String> = (0..=MAX_QUERY_STREAM_IDS).map(|i| format!("s{i}")).collect();
        assert!(EventsQuery::parse(&json!({ "streams": ids })).is_err());
        assert!(EventsQuery::parse(&json!({ "streams": [{"any": ["a"], "not": ids}] })).is_err());
        let same = vec!["health"; 50_000];
        let q = EventsQuery::parse(&json!({ "streams": same })).unwrap();
        let personal = acc(AccessType::Personal, &[]);
        let f = q.resolve(&personal, &tree()).unwrap();
        assert_eq!(f.groups[0].any.as_ref().unwrap().len(), 3, "repeated ids merged, then expanded once");
        let groups: Vec<Value> = (0..=MAX_STREAM_GROUPS).map(|_| json!({"any": ["a"]})).collect();
        assert!(EventsQuery::parse(&json!({ "streams": groups })).is_err());
        assert!(EventsQuery::parse(&json!({ "tags": 5 })).is_err());
        assert!(EventsQuery::parse(&json!({ "tags": ["a"] })).is_ok());
    }

    #[test]
    fn defaults() {
        let mut q = EventsQuery::parse(&json!({"modifiedSince": 5})).unwrap();
        q.apply_defaults(100.0);
        assert_eq!(q.limit, Some(20));
        let mut q = EventsQuery::parse(&json!({"fromTime": 5})).unwrap();
        q.apply_defaults(100.0);
        assert_eq!((q.limit, q.to_time), (None, Some(100.0)));
        let mut q = EventsQuery::parse(&json!({"toTime": 100000})).unwrap();
        q.apply_defaults(0.0);
        assert_eq!(q.from_time, Some(100000.0 - 86400.0));
        let mut q = EventsQuery::parse(&json!({"limit": 3})).unwrap();
        q.apply_defaults(0.0);
        assert_eq!((q.limit, q.from_time, q.to_time), (Some(3), None, None));
    }

    #[test]
    fn resolve_expands_and_checks_permissions() {
        let t = tree();
        let app = acc(AccessType::App, &[("health", Level::Read)]);
        let f = EventsQuery::parse(&json!({"streams": ["health"]})).unwrap().resolve(&app, &t).unwrap();
        let mut any = f.groups[0].any.clone().unwrap();
        any.sort();
        assert_eq!(any, vec!["health", "heart", "steps"]);
        let err = EventsQuery::parse(&json!({"streams": ["diary"]})).unwrap().resolve(&app, &t).unwrap_err();
        assert_eq!(err.id, crate::ErrorId::Forbidden);
        let err = EventsQuery::parse(&json!({"streams": ["nope"]})).unwrap().resolve(&app, &t).unwrap_err();
        assert_eq!(err.id, crate::ErrorId::UnknownReferencedResource);
        // No streams: everything readable, and nothing else.
        let f = EventsQuery::parse(&json!({})).unwrap().resolve(&app, &t).unwrap();
        assert!(!f.groups[0].any.as_ref().unwrap().contains(&"diary".to_string()));
        let personal = acc(AccessType::Personal, &[]);
        let f = EventsQuery::parse(&json!({})).unwrap().resolve(&personal, &t).unwrap();
        assert_eq!(f.groups[0].any, None);
        let f = EventsQuery::parse(&json!({"streams": [{"any": ["health"], "not": ["heart"]}]})).unwrap().resolve(&personal, &t).unwrap();
        assert!(f.groups[0].matches(&["steps".into()]));
        assert!(!f.groups[0].matches(&["heart".into()]));
        assert!(!f.groups[0].matches(&["diary".into()]));
        let f = EventsQuery::parse(&json!({"streams": {"all": ["health", "diary"]}})).unwrap().resolve(&personal, &t).unwrap();
        assert!(f.groups[0].matches(&["heart".into(), "diary".into()]));
        assert!(!f.groups[0].matches(&["heart".into()]));
        let f = EventsQuery::parse(&json!({"types": ["count/*", "note/txt"]})).unwrap().resolve(&personal, &t).unwrap();
        assert!(f.types[0].matches("count/steps"));
        assert!(!f.types[0].matches("counter/steps"));
        assert!(f.types[1].matches("note/txt"));
    }
}
