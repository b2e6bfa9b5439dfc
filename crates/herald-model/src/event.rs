//! Events: timestamped data in one or more streams. This module holds the event type, its API
//! form, and the validation of `events.create` / `events.update` parameters.

use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult, ErrorId};
use crate::params::{as_object, opt_f64, opt_str, reject_unknown};
use crate::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub stream_ids: Vec<String>,
    pub time: Timestamp,
    /// `Some(0.0)` for an instant event (the field is omitted), `None` while running (`null`).
    pub duration: Option<f64>,
    pub event_type: String,
    pub content: Option<Value>,
    pub description: Option<String>,
    pub client_data: Option<Value>,
    pub trashed: bool,
    pub created: Timestamp,
    pub created_by: String,
    pub modified: Timestamp,
    pub modified_by: String,
    /// Files attached to the event (issue 10), in the order they were added.
    pub attachments: Vec<Attachment>,
}

/// An attached file's description; the bytes live in the store's file storage under `id`.
/// `readToken` is not stored: it is computed for the access that reads the event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub id: String,
    #[serde(rename = "fileName")]
    pub file_name: String,
    #[serde(rename = "type")]
    pub file_type: String,
    pub size: u64,
    /// `sha256-<base64 digest>` of the bytes.
    pub integrity: String,
}

/// The last path segment of an uploaded file's name, as Pryv keeps it (`../../a.txt` → `a.txt`,
/// also with `\`); `None` when nothing usable is left (empty, `.` or `..`).
pub fn clean_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    match last {
        "" | "." | ".." => None,
        n if n.chars().any(char::is_control) => None,
        n => Some(n.to_string()),
    }
}

/// An event's API form written straight to a serializer, without building a `Value` first
/// (the maps of a `Value` cost more than the writing, and answers such as a batch of 1,000
/// creates or a long `events.get` are mostly events): the same fields in the same order as
/// [`Event::to_json`], each attachment with its `readToken` when `read_token` is given (as
/// [`Event::to_json_with`]).
pub struct ApiEvent<'a> {
    pub event: &'a Event,
    pub read_token: Option<&'a dyn Fn(&str) -> String>,
}

impl serde::Serialize for ApiEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.event;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &e.id)?;
        m.serialize_entry("streamIds", &e.stream_ids)?;
        m.serialize_entry("streamId", &e.stream_ids.first())?;
        m.serialize_entry("time", &e.time)?;
        match e.duration {
            None => m.serialize_entry("duration", &())?,
            Some(d) if d != 0.0 => m.serialize_entry("duration", &d)?,
            _ => {}
        }
        m.serialize_entry("type", &e.event_type)?;
        if let Some(c) = &e.content {
            m.serialize_entry("content", c)?;
        }
        if let Some(d) = &e.description {
            m.serialize_entry("description", d)?;
        }
        if let Some(cd) = &e.client_data {
            m.serialize_entry("clientData", cd)?;
        }
        if e.trashed {
            m.serialize_entry("trashed", &true)?;
        }
        m.serialize_entry("tags", &[(); 0])?;
        if !e.attachments.is_empty() {
            let list: Vec<ApiAttachment> = e.attachments.iter().map(|a| ApiAttachment { a, read_token: self.read_token }).collect();
            m.serialize_entry("attachments", &list)?;
        }
        m.serialize_entry("created", &e.created)?;
        m.serialize_entry("createdBy", &e.created_by)?;
        m.serialize_entry("modified", &e.modified)?;
        m.serialize_entry("modifiedBy", &e.modified_by)?;
        m.end()
    }
}

/// An attachment in an [`ApiEvent`]: its stored fields, then its `readToken`.
struct ApiAttachment<'a> {
    a: &'a Attachment,
    read_token: Option<&'a dyn Fn(&str) -> String>,
}

impl serde::Serialize for ApiAttachment<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let a = self.a;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &a.id)?;
        m.serialize_entry("fileName", &a.file_name)?;
        m.serialize_entry("type", &a.file_type)?;
        m.serialize_entry("size", &a.size)?;
        m.serialize_entry("integrity", &a.integrity)?;
        if let Some(token) = self.read_token {
            m.serialize_entry("readToken", &token(&a.id))?;
        }
        m.end()
    }
}

/// An [`ApiEvent`] as a `Value`, for callers that add to it or nest it (socket.io, history):
/// one definition of the API form, written or built.
fn api_value(e: &ApiEvent) -> Value {
    // Cannot fail: every key is a string and every value plain JSON (NaN becomes null).
    serde_json::to_value(e).unwrap_or(Value::Null)
}

impl Event {
    /// The API form, with each attachment's `readToken` made by `read_token(file id)` (the
    /// token depends on the reading access).
    pub fn to_json_with(&self, read_token: &dyn Fn(&str) -> String) -> Value {
        api_value(&ApiEvent { event: self, read_token: Some(read_token) })
    }

    /// The API form without read tokens (versions in `history` carry none).
    pub fn to_json(&self) -> Value {
        api_value(&ApiEvent { event: self, read_token: None })
    }

    /// When the event ends; running events never do.
    pub fn end_time(&self) -> Option<f64> {
        self.duration.map(|d| self.time + d)
    }
}

/// Pryv's type pattern: `class/format`, lowercase letters, digits and `-`, optionally `series:`.
pub fn is_valid_type(t: &str) -> bool {
    let t = t.strip_prefix("series:").unwrap_or(t);
    let Some((class, format)) = t.split_once('/') else { return false };
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok(class) && ok(format) && t.len() <= 200
}

fn parse_stream_ids(m: &Map<String, Value>) -> ApiResult<Option<Vec<String>>> {
    let from = |v: &Value| -> ApiResult<Vec<String>> {
        match v {
            Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_owned).ok_or_else(|| ApiError::param("streamIds", "\"streamIds\" must be an array of strings."))
                })
                .collect(),
            Value::String(s) => Ok(vec![s.clone()]),
            _ => Err(ApiError::param("streamIds", "\"streamIds\" must be a non-empty array of stream ids.")),
        }
    };
    let mut ids = match (m.get("streamIds"), m.get("streamId")) {
        (Some(v), _) if !v.is_null() => from(v)?,
        (_, Some(Value::String(s))) => vec![s.clone()],
        (_, Some(Value::Null)) | (_, None) => return Ok(None),
        (_, Some(_)) => return Err(ApiError::param("streamId", "\"streamId\" must be a string.")),
    };
    let mut seen = std::collections::HashSet::new();
    ids.retain(|s| seen.insert(s.clone()));
    Ok(Some(ids))
}

fn parse_duration(m: &Map<String, Value>) -> ApiResult<Option<Option<f64>>> {
    match m.get("duration") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(_) => match opt_f64(m, "duration")? {
            Some(d) if d >= 0.0 => Ok(Some(Some(d))),
            _ => Err(ApiError::param("duration", "\"duration\" must be a non-negative number or null.")),
        },
    }
}

fn parse_type(m: &Map<String, Value>) -> ApiResult<Option<String>> {
    match opt_str(m, "type")? {
        Some(t) if !is_valid_type(&t) => Err(ApiError::param("type", format!("\"{t}\" is not a valid event type (class/format)."))),
        t => Ok(t),
    }
}

/// `trashed`: a JSON boolean (or null: not given), on create as on update.
fn parse_trashed(m: &Map<String, Value>) -> ApiResult<Option<bool>> {
    match m.get("trashed") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::param("trashed", "\"trashed\" must be a boolean.")),
    }
}

/// `tags` (deprecated by Pryv.io, always answered as `[]`): accepted only as an array of
/// strings, then dropped.
fn check_tags(m: &Map<String, Value>) -> ApiResult<()> {
    match m.get("tags") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(ApiError::param("tags", "\"tags\" must be an array of strings.")),
    }
}

const CREATE_KEYS: &[&str] =
    &["id", "streamIds", "streamId", "time", "duration", "type", "content", "description", "clientData", "trashed", "tags"];
const UPDATE_KEYS: &[&str] =
    &["streamIds", "streamId", "time", "duration", "type", "content", "description", "clientData", "trashed", "tags"];
const PROTECTED_KEYS: &[&str] = &["id", "created", "createdBy", "modified", "modifiedBy", "attachments", "integrity"];

/// Validate `events.create` params into an event (id, tracking fields filled by the caller's values).
pub fn parse_create(params: &Value, id: String, now: Timestamp, author: &str) -> ApiResult<Event> {
    let m = as_object(params)?;
    reject_unknown(&m, CREATE_KEYS)?;
    check_tags(&m)?;
    let stream_ids = parse_stream_ids(&m)?.ok_or_else(|| ApiError::param("streamIds", "\"streamIds\" is required."))?;
    let event_type = parse_type(&m)?.ok_or_else(|| ApiError::param("type", "\"type\" is required."))?;
    let id = match opt_str(&m, "id")? {
        Some(i) if crate::id::is_valid_item_id(&i) => i,
        Some(i) => {
            return Err(ApiError::new(ErrorId::InvalidItemId, format!("The event id \"{i}\" is not valid.")).with_data(json!({"id": i})))
        }
        None => id,
    };
    if matches!(m.get("clientData"), Some(v) if !v.is_object() && !v.is_null()) {
        return Err(ApiError::param("clientData", "\"clientData\" must be an object."));
    }
    Ok(Event {
        id,
        stream_ids,
        time: crate::round_ms(opt_f64(&m, "time")?.unwrap_or(now)),
        duration: parse_duration(&m)?.unwrap_or(Some(0.0)),
        event_type,
        content: m.get("content").filter(|v| !v.is_null()).cloned(),
        description: opt_str(&m, "description")?,
        client_data: m.get("clientData").filter(|v| !v.is_null()).cloned(),
        trashed: parse_trashed(&m)?.unwrap_or(false),
        created: now,
        created_by: author.into(),
        modified: now,
        modified_by: author.into(),
        attachments: vec![],
    })
}

/// Apply an `events.update` body to an event. Protected fields give `forbidden`, unknown ones
/// `invalid-parameters-format`.
pub fn apply_update(event: &mut Event, update: &Value, now: Timestamp, author: &str) -> ApiResult<()> {
    let m = match update {
        Value::Object(m) => m.clone(),
        _ => return Err(ApiError::param("update", "The update must be an object.")),
    };
    let protected: Vec<&String> = m.keys().filter(|k| PROTECTED_KEYS.contains(&k.as_str())).collect();
    if !protected.is_empty() {
        return Err(ApiError::forbidden(format!(
            "Forbidden update was attempted on the following protected field(s): [{}].",
            protected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
        )));
    }
    reject_unknown(&m, UPDATE_KEYS)?;
    check_tags(&m)?;
    if let Some(ids) = parse_stream_ids(&m)? {
        event.stream_ids = ids;
    }
    if let Some(t) = parse_type(&m)? {
        event.event_type = t;
    }
    if let Some(t) = opt_f64(&m, "time")? {
        event.time = crate::round_ms(t);
    }
    if let Some(d) = parse_duration(&m)? {
        event.duration = d;
    }
    if let Some(c) = m.get("content") {
        event.content = (!c.is_null()).then(|| c.clone());
    }
    if m.contains_key("description") {
        event.description = opt_str(&m, "description")?;
    }
    if let Some(cd) = m.get("clientData") {
        match cd {
            Value::Null => event.client_data = None,
            Value::Object(patch) => {
                // Pryv merges clientData on update; a null value removes a key.
                let mut base = event.client_data.take().and_then(|v| v.as_object().cloned()).unwrap_or_default();
                for (k, v) in patch {
                    if v.is_null() {
                        base.remove(k);
                    } else {
                        base.insert(k.clone(), v.clone());
                    }
                }
                event.client_data = (!base.is_empty()).then_some(Value::Object(base));
            }
            _ => return Err(ApiError::param("clientData", "\"clientData\" must be an object.")),
        }
    }
    if let Some(t) = parse_trashed(&m)? {
        event.trashed = t;
    }
    event.modified = now;
    event.modified_by = author.into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_event_writes_what_to_json_builds() {
        let base = parse_create(&json!({"streamIds": ["a", "b"], "type": "note/txt", "content": "hi"}), "x".into(), 10.5, "acc").unwrap();
        let mut running = base.clone();
        running.duration = None;
        let mut full = base.clone();
        full.duration = Some(3600.0);
        full.description = Some("d \"q\"".into());
        full.client_data = Some(json!({"k": [1, 2.5, null]}));
        full.trashed = true;
        full.content = Some(json!({"nested": {"a": 1}}));
        full.attachments = vec![Attachment {
            id: "f1".into(),
            file_name: "a.txt".into(),
            file_type: "text/plain".into(),
            size: 3,
            integrity: "sha256-x".into(),
        }];
        let mut odd = base.clone();
        odd.time = f64::NAN;
        odd.content = None;
        let token = |id: &str| format!("tok-{id}");
        // The API form itself, pinned: fields, order, the duration's and attachments' rules.
        assert_eq!(
            serde_json::to_string(&full.to_json_with(&token)).unwrap(),
            r#"{"id":"x","streamIds":["a","b"],"streamId":"a","time":10.5,"duration":3600.0,"type":"note/txt","content":{"nested":{"a":1}},"description":"d \"q\"","clientData":{"k":[1,2.5,null]},"trashed":true,"tags":[],"attachments":[{"id":"f1","fileName":"a.txt","type":"text/plain","size":3,"integrity":"sha256-x","readToken":"tok-f1"}],"created":10.5,"createdBy":"acc","modified":10.5,"modifiedBy":"acc"}"#
        );
        assert_eq!(
            serde_json::to_string(&running.to_json()).unwrap(),
            r#"{"id":"x","streamIds":["a","b"],"streamId":"a","time":10.5,"duration":null,"type":"note/txt","content":"hi","tags":[],"created":10.5,"createdBy":"acc","modified":10.5,"modifiedBy":"acc"}"#
        );
        for e in [&base, &running, &full, &odd] {
            let direct = serde_json::to_string(&ApiEvent { event: e, read_token: None }).unwrap();
            assert_eq!(direct, serde_json::to_string(&e.to_json()).unwrap());
            let direct = serde_json::to_string(&ApiEvent { event: e, read_token: Some(&token) }).unwrap();
            assert_eq!(direct, serde_json::to_string(&e.to_json_with(&token)).unwrap());
        }
    }

    #[test]
    fn field_types_are_checked() {
        let base = json!({"streamIds": ["s"], "type": "note/txt"});
        let with = |k: &str, v: Value| {
            let mut p = base.clone();
            p[k] = v;
            parse_create(&p, "id".into(), 1.0, "a")
        };
        assert!(with("trashed", json!("x")).is_err());
        assert!(with("trashed", json!(true)).unwrap().trashed);
        assert!(with("tags", json!("x")).is_err());
        assert!(with("tags", json!([1])).is_err());
        assert!(with("tags", json!(["a"])).is_ok());
        let mut e = with("trashed", Value::Null).unwrap();
        assert!(apply_update(&mut e, &json!({"tags": 5}), 2.0, "a").is_err());
        assert!(apply_update(&mut e, &json!({"trashed": "x"}), 2.0, "a").is_err());
    }

    #[test]
    fn file_names_keep_their_last_segment() {
        assert_eq!(clean_file_name("../../a.txt").as_deref(), Some("a.txt"));
        assert_eq!(clean_file_name("c:\\x\\b.png").as_deref(), Some("b.png"));
        assert_eq!(clean_file_name("pïc é.png").as_deref(), Some("pïc é.png"));
        assert_eq!(clean_file_name("a/.."), None);
        assert_eq!(clean_file_name(""), None);
        assert_eq!(clean_file_name("x/"), None);
    }

    #[test]
    fn types() {
        assert!(is_valid_type("count/steps"));
        assert!(is_valid_type("series:mass/kg"));
        assert!(!is_valid_type("Count/steps"));
        assert!(!is_valid_type("count"));
        assert!(!is_valid_type("count/"));
    }

    #[test]
    fn create_defaults_and_errors() {
        let e = parse_create(&json!({"streamIds": ["a", "a"], "type": "note/txt", "content": "hi"}), "x".into(), 10.0, "acc").unwrap();
        assert_eq!(e.stream_ids, vec!["a"]);
        assert_eq!(e.time, 10.0);
        assert_eq!(e.duration, Some(0.0));
        assert!(e.to_json().get("duration").is_none());
        let e = parse_create(&json!({"streamId": "a", "type": "note/txt", "duration": null}), "x".into(), 10.0, "acc").unwrap();
        assert_eq!(e.duration, None);
        assert!(e.to_json()["duration"].is_null());
        assert!(parse_create(&json!({"type": "note/txt"}), "x".into(), 0.0, "a").is_err());
        assert!(parse_create(&json!({"streamIds": [], "type": "note/txt"}), "x".into(), 0.0, "a").is_err());
        assert!(parse_create(&json!({"streamIds": ["a"], "type": "bad"}), "x".into(), 0.0, "a").is_err());
        assert!(parse_create(&json!({"streamIds": ["a"], "type": "a/b", "time": "x"}), "x".into(), 0.0, "a").is_err());
        assert!(parse_create(&json!({"streamIds": ["a"], "type": "a/b", "foo": 1}), "x".into(), 0.0, "a").is_err());
        let content = json!([1, {"a": null}, "x"]);
        let e = parse_create(&json!({"streamIds": ["a"], "type": "a/b", "content": content}), "x".into(), 0.0, "a").unwrap();
        assert_eq!(e.content, Some(content));
    }

    #[test]
    fn update_rules() {
        let mut e =
            parse_create(&json!({"streamIds": ["a"], "type": "a/b", "clientData": {"k": 1, "j": 2}}), "x".into(), 0.0, "a").unwrap();
        apply_update(&mut e, &json!({"content": 5, "clientData": {"k": null, "n": 3}}), 5.0, "b").unwrap();
        assert_eq!(e.content, Some(json!(5)));
        assert_eq!(e.client_data, Some(json!({"j": 2, "n": 3})));
        assert_eq!(e.modified, 5.0);
        let err = apply_update(&mut e, &json!({"id": "y"}), 5.0, "b").unwrap_err();
        assert_eq!(err.id, ErrorId::Forbidden);
        let err = apply_update(&mut e, &json!({"nope": 1}), 5.0, "b").unwrap_err();
        assert_eq!(err.id, ErrorId::InvalidParametersFormat);
    }
}
