//! Access requests (Pryv's consent flow, `pryv-api-extras.md` §1): an app asks for permissions,
//! a person accepts or refuses on a consent page, and the app, polling, receives a token.
//!
//! The rules here are pure: what a creation body may hold, what each state answers to a poll,
//! which outcomes a consent page may post. The API checks what needs the store (that an
//! ACCEPTED token is a live app access with exactly the requested permissions) and keeps the
//! state in the store, so that any node of a cluster answers the polls.
//!
//! Herald takes the safer parts of newer Pryv.io (contract §4.1): only the outcome fields may
//! change a state, a decided request cannot change, a decided state is kept a short while after
//! its first poll, and `REDIRECTED` is never answered.

use serde_json::{json, Map, Value};

use crate::Timestamp;

/// How often apps are told to poll.
pub const POLL_RATE_MS: u64 = 1000;
/// A request's lifetime when the app gives no `expireAfter` (milliseconds, as Pryv counts it).
pub const DEFAULT_EXPIRE_AFTER_MS: f64 = 3_600_000.0;
/// The longest lifetime an app may ask for: a day. A pending request is a row anybody can
/// create, so it must not live for ever.
pub const MAX_EXPIRE_AFTER_MS: f64 = 86_400_000.0;
/// Longest `requestingAppId`, and largest `requestedPermissions` list.
pub const MAX_APP_ID_LEN: usize = 200;
pub const MAX_PERMISSIONS: usize = 100;
/// Largest creation body once stored (the JSON text of the state), in bytes.
pub const MAX_STATE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    NeedSignin,
    Accepted,
    Refused,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NeedSignin => "NEED_SIGNIN",
            Status::Accepted => "ACCEPTED",
            Status::Refused => "REFUSED",
            Status::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::NeedSignin, Status::Accepted, Status::Refused, Status::Error].into_iter().find(|x| x.as_str() == s)
    }

    /// The HTTP status of a poll (and of a posted outcome) in this state, as Pryv answers it.
    pub fn http_status(self) -> u16 {
        match self {
            Status::NeedSignin => 201,
            Status::Accepted => 200,
            Status::Refused | Status::Error => 403,
        }
    }
}

/// A stored request: its key, status, lifetime, and the state Pryv keeps (`state` holds the
/// creation fields and, once decided, the outcome fields).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRequest {
    pub key: String,
    pub status: Status,
    pub state: Map<String, Value>,
    pub created: Timestamp,
    pub expires: Timestamp,
}

/// An error of the register-style routes: no `meta`, Pryv's own ids (`invalid-parameters`,
/// `unknown-access-key`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct RegError {
    pub status: u16,
    pub id: &'static str,
    pub message: String,
    pub data: Option<Value>,
}

impl RegError {
    pub fn invalid(message: impl Into<String>) -> Self {
        RegError { status: 400, id: "invalid-parameters", message: message.into(), data: None }
    }
    pub fn unknown_key() -> Self {
        RegError { status: 400, id: "unknown-access-key", message: "Unknown or expired access key".into(), data: None }
    }
    /// An ACCEPTED outcome whose token does not grant what was asked (contract §4.2).
    pub fn consent(reason: &str, message: impl Into<String>) -> Self {
        RegError { status: 400, id: "invalid-consent-grant", message: message.into(), data: Some(json!({ "reason": reason })) }
    }
    pub fn to_json(&self) -> Value {
        let mut e = json!({ "id": self.id, "message": self.message });
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        json!({ "error": e })
    }
}

/// What the server adds to a creation: its URLs and the request's key.
pub struct Urls<'a> {
    /// The consent page, to which the query parameters are appended.
    pub auth_url: &'a str,
    /// `{register}access/` (the poll URL is this plus the key).
    pub access_base: &'a str,
    /// `{register}service/info`.
    pub service_info: &'a str,
}

/// The fields of a creation body, checked. `requestedPermissions` items are kept as given (Pryv
/// does not check them here) but each must be an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Creation {
    pub requesting_app_id: String,
    pub requested_permissions: Vec<Value>,
    pub language_code: String,
    pub return_url: Value,
    pub oauth_state: Value,
    pub client_data: Value,
    pub custom_auth_url: Option<String>,
    pub expire_after_ms: f64,
    pub device_name: Option<String>,
}

pub fn parse_creation(body: &Value) -> Result<Creation, RegError> {
    let m = body.as_object().ok_or_else(|| RegError::invalid("The request body must be a JSON object"))?;
    let app_id = match m.get("requestingAppId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_APP_ID_LEN => s.clone(),
        _ => return Err(RegError::invalid("Missing or invalid requestingAppId")),
    };
    let perms = match m.get("requestedPermissions") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_PERMISSIONS && a.iter().all(Value::is_object) => a.clone(),
        _ => return Err(RegError::invalid("Missing or invalid requestedPermissions")),
    };
    let language_code = match m.get("languageCode") {
        None | Some(Value::Null) => "en".to_string(),
        Some(Value::String(s)) if s.len() <= 20 => s.clone(),
        Some(_) => return Err(RegError::invalid("Invalid languageCode")),
    };
    let return_url = match m.get("returnURL") {
        None => Value::Null,
        Some(v @ (Value::Null | Value::Bool(false))) => v.clone(),
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::String(s)) => {
            if !is_safe_return_url(s) {
                return Err(RegError::invalid("Invalid returnURL: it must be an absolute http(s) URL without credentials"));
            }
            Value::String(s.clone())
        }
        Some(_) => return Err(RegError::invalid("Invalid returnURL")),
    };
    let client_data = match m.get("clientData") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(RegError::invalid("Invalid clientData: it must be an object")),
    };
    let custom_auth_url = match m.get("authUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(RegError::invalid("Invalid authUrl")),
    };
    let expire_after_ms = match m.get("expireAfter") {
        None | Some(Value::Null) => DEFAULT_EXPIRE_AFTER_MS,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(ms) if ms > 0.0 && ms <= MAX_EXPIRE_AFTER_MS => ms,
            _ => return Err(RegError::invalid(format!("Invalid expireAfter: milliseconds, above 0 and at most {MAX_EXPIRE_AFTER_MS}"))),
        },
        Some(_) => return Err(RegError::invalid("Invalid expireAfter: milliseconds, above 0")),
    };
    let device_name = match m.get("deviceName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(RegError::invalid("Invalid deviceName")),
    };
    let oauth_state = m.get("oauthState").cloned().unwrap_or(Value::Null);
    Ok(Creation {
        requesting_app_id: app_id,
        requested_permissions: perms,
        language_code,
        return_url,
        oauth_state,
        client_data,
        custom_auth_url,
        expire_after_ms,
        device_name,
    })
}

/// An absolute `http`/`https` URL with a host and no user or password: the only kind a consent
/// page may send a browser to (no `javascript:`, no `data:`, nothing that hides its host).
pub fn is_safe_return_url(s: &str) -> bool {
    match url::Url::parse(s) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.username().is_empty() && u.password().is_none(),
        Err(_) => false,
    }
}

/// Whether `url` is one of the trusted consent pages (`access.trustedAuthUrls`): same scheme and
/// host:port, and a path equal to the entry's or below it on a `/` boundary; never with
/// credentials.
pub fn is_trusted_auth_url(url: &str, trusted: &[String]) -> bool {
    let Ok(u) = url::Url::parse(url) else { return false };
    if !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    trusted.iter().filter_map(|t| url::Url::parse(t).ok()).any(|t| {
        let base = t.path().trim_end_matches('/');
        u.scheme() == t.scheme()
            && u.host_str() == t.host_str()
            && u.port_or_known_default() == t.port_or_known_default()
            && (u.path() == t.path() || u.path().trim_end_matches('/') == base || u.path().starts_with(&format!("{base}/")))
    })
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}

fn query_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A new request in its first state, with its `authUrl` (Pryv's parameters, in Pryv's order).
pub fn new_request(c: &Creation, key: &str, urls: &Urls, now: Timestamp) -> AccessRequest {
    let poll = format!("{}{key}", urls.access_base);
    let base = c.custom_auth_url.as_deref().unwrap_or(urls.auth_url);
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("lang", &c.language_code)
        .append_pair("key", key)
        .append_pair("requestingAppId", &c.requesting_app_id)
        .append_pair("poll", &poll)
        .append_pair("poll_rate_ms", &POLL_RATE_MS.to_string())
        .append_pair("serviceInfo", urls.service_info);
    if truthy(&c.return_url) {
        q.append_pair("returnURL", &query_value(&c.return_url));
    }
    if truthy(&c.oauth_state) {
        q.append_pair("oauthState", &query_value(&c.oauth_state));
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let auth_url = format!("{base}{sep}{}", q.finish());
    let mut state = Map::new();
    state.insert("requestingAppId".into(), json!(c.requesting_app_id));
    state.insert("requestedPermissions".into(), Value::Array(c.requested_permissions.clone()));
    state.insert("languageCode".into(), json!(c.language_code));
    state.insert("returnURL".into(), c.return_url.clone());
    state.insert("oauthState".into(), c.oauth_state.clone());
    state.insert("clientData".into(), c.client_data.clone());
    if let Some(d) = &c.device_name {
        state.insert("deviceName".into(), json!(d));
    }
    state.insert("pollUrl".into(), json!(poll));
    state.insert("authUrl".into(), json!(auth_url));
    AccessRequest {
        key: key.to_string(),
        status: Status::NeedSignin,
        state,
        created: now,
        expires: crate::round_ms(now + c.expire_after_ms / 1000.0),
    }
}

/// The answer to the creation (201): only these keys, as Pryv sends them.
pub fn creation_answer(r: &AccessRequest) -> Value {
    json!({
        "status": r.status.as_str(),
        "key": r.key,
        "authUrl": r.state.get("authUrl"),
        "poll": r.state.get("pollUrl"),
        "poll_rate_ms": POLL_RATE_MS,
    })
}

/// The answer to a poll, keys in Pryv's order; fields never posted are absent.
/// `service_info` is the service block shown to the consent page while the request waits.
pub fn poll_answer(r: &AccessRequest, service_info: &Value) -> Value {
    let mut out = Map::new();
    out.insert("status".into(), json!(r.status.as_str()));
    let s = &r.state;
    let get = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
    let copy = |out: &mut Map<String, Value>, keys: &[&str]| {
        for k in keys {
            if let Some(v) = s.get(*k) {
                out.insert((*k).to_string(), v.clone());
            }
        }
    };
    match r.status {
        Status::NeedSignin => {
            out.insert("serviceInfo".into(), service_info.clone());
            out.insert("key".into(), json!(r.key));
            out.insert("requestingAppId".into(), get("requestingAppId"));
            out.insert("requestedPermissions".into(), get("requestedPermissions"));
            out.insert("poll".into(), get("pollUrl"));
            out.insert("authUrl".into(), get("authUrl"));
            out.insert("poll_rate_ms".into(), json!(POLL_RATE_MS));
            out.insert("lang".into(), get("languageCode"));
            out.insert("returnURL".into(), get("returnURL"));
            out.insert("oauthState".into(), get("oauthState"));
            out.insert("clientData".into(), get("clientData"));
        }
        Status::Accepted => copy(&mut out, &["username", "token", "apiEndpoint"]),
        Status::Refused | Status::Error => copy(&mut out, &["reasonId", "message"]),
    }
    Value::Object(out)
}

/// An outcome posted by a consent page, checked for its shape (the API then verifies an
/// ACCEPTED token against the store).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted { username: String, token: String, api_endpoint: Option<String> },
    Refused { status: Status, reason_id: Option<String>, message: Option<String> },
}

pub fn parse_outcome(body: &Value) -> Result<Outcome, RegError> {
    let m = body.as_object().ok_or_else(|| RegError::invalid("The request body must be a JSON object"))?;
    let text = |k: &str| -> Result<Option<String>, RegError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 2000 => Ok(Some(s.clone())),
            Some(_) => Err(RegError::invalid(format!("{k} must be a string"))),
        }
    };
    match m.get("status").and_then(Value::as_str) {
        Some("ACCEPTED") => match (text("username")?.filter(|s| !s.is_empty()), text("token")?.filter(|s| !s.is_empty())) {
            (Some(username), Some(token)) => Ok(Outcome::Accepted { username, token, api_endpoint: text("apiEndpoint")? }),
            _ => Err(RegError::invalid("ACCEPTED requires username and token")),
        },
        Some(s @ ("REFUSED" | "ERROR")) => Ok(Outcome::Refused {
            status: Status::parse(s).unwrap_or(Status::Error),
            reason_id: text("reasonId")?,
            message: text("message")?,
        }),
        Some("REDIRECTED") => Err(RegError::invalid("REDIRECTED is not supported: this server holds every request itself")),
        _ => Err(RegError::invalid("status must be ACCEPTED, REFUSED, ERROR, or REDIRECTED")),
    }
}

impl AccessRequest {
    /// Apply a (verified) outcome: only the outcome fields change.
    pub fn decide(&mut self, outcome: &Outcome, api_endpoint: String) {
        match outcome {
            Outcome::Accepted { username, token, .. } => {
                self.status = Status::Accepted;
                self.state.insert("username".into(), json!(username));
                self.state.insert("token".into(), json!(token));
                self.state.insert("apiEndpoint".into(), json!(api_endpoint));
            }
            Outcome::Refused { status, reason_id, message } => {
                self.status = *status;
                if let Some(r) = reason_id {
                    self.state.insert("reasonId".into(), json!(r));
                }
                if let Some(m) = message {
                    self.state.insert("message".into(), json!(m));
                }
            }
        }
    }

    /// Whether the request may still be polled at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires
    }
}

/// The key of a new request: 16 characters of `[A-Za-z0-9_-]`, as Pryv's.
pub fn is_valid_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The requested stream permissions as `(streamId, level)`, ignoring feature permissions and
/// names: what the granted access must hold exactly.
pub fn requested_stream_levels(perms: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        perms.iter().filter_map(|p| Some((p.get("streamId")?.as_str()?.to_string(), p.get("level")?.as_str()?.to_string()))).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> Urls<'static> {
        Urls { auth_url: "http://h/auth", access_base: "http://h/reg/access/", service_info: "http://h/reg/service/info" }
    }

    #[test]
    fn creation_checks_and_auth_url() {
        assert_eq!(parse_creation(&json!({})).unwrap_err().message, "Missing or invalid requestingAppId");
        assert_eq!(
            parse_creation(&json!({"requestingAppId": "a", "requestedPermissions": []})).unwrap_err().message,
            "Missing or invalid requestedPermissions"
        );
        assert!(parse_creation(&json!({"requestingAppId": "a", "requestedPermissions": [{}], "returnURL": "javascript:alert(1)"})).is_err());
        let c = parse_creation(&json!({
            "requestingAppId": "my app", "requestedPermissions": [{"streamId": "diary", "level": "read"}],
            "languageCode": "fr", "returnURL": false, "oauthState": "st1"
        }))
        .unwrap();
        let r = new_request(&c, "abcdefghijklmnop", &urls(), 1000.0);
        assert_eq!(r.expires, 4600.0);
        assert_eq!(
            r.state["authUrl"],
            "http://h/auth?lang=fr&key=abcdefghijklmnop&requestingAppId=my+app&poll=http%3A%2F%2Fh%2Freg%2Faccess%2Fabcdefghijklmnop&poll_rate_ms=1000&serviceInfo=http%3A%2F%2Fh%2Freg%2Fservice%2Finfo&oauthState=st1"
        );
        let a = creation_answer(&r);
        assert_eq!(a.as_object().unwrap().keys().collect::<Vec<_>>(), ["status", "key", "authUrl", "poll", "poll_rate_ms"]);
        let p = poll_answer(&r, &json!({}));
        assert_eq!(p["status"], "NEED_SIGNIN");
        assert_eq!(p["returnURL"], false);
        assert_eq!(p["lang"], "fr");
    }

    #[test]
    fn outcomes() {
        assert!(parse_outcome(&json!({"status": "ACCEPTED", "username": "u"})).is_err());
        assert!(parse_outcome(&json!({"status": "REDIRECTED", "redirectUrl": "x"})).is_err());
        assert!(parse_outcome(&json!({"status": "MAYBE"})).is_err());
        let c = parse_creation(&json!({"requestingAppId": "a", "requestedPermissions": [{"streamId": "s", "level": "read"}]})).unwrap();
        let mut r = new_request(&c, "abcdefghijklmnop", &urls(), 0.0);
        let o = parse_outcome(&json!({"status": "ERROR", "message": "boom", "requestingAppId": "evil"})).unwrap();
        r.decide(&o, String::new());
        assert_eq!(poll_answer(&r, &json!({})), json!({"status": "ERROR", "message": "boom"}));
        assert_eq!(r.state["requestingAppId"], "a", "only outcome fields change");
    }

    #[test]
    fn trusted_auth_urls() {
        let t = vec!["https://consent.example.com/app".to_string()];
        assert!(is_trusted_auth_url("https://consent.example.com/app", &t));
        assert!(is_trusted_auth_url("https://consent.example.com/app/x?y=1", &t));
        assert!(!is_trusted_auth_url("https://consent.example.com/application", &t));
        assert!(!is_trusted_auth_url("https://u:p@consent.example.com/app", &t));
        assert!(!is_trusted_auth_url("http://consent.example.com/app", &t));
        assert!(!is_trusted_auth_url("https://consent.example.com/app", &[]));
    }
}
