//! Pryv.io's error vocabulary: every failure a client can see is one of these ids, with the HTTP
//! status Pryv.io uses for it. The wire shape is `{"error": {"id", "message", "data"?}}`.

use serde_json::{json, Value};

/// The error ids of Pryv.io that Herald produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorId {
    InvalidParametersFormat,
    InvalidRequestStructure,
    InvalidItemId,
    InvalidOperation,
    InvalidCredentials,
    InvalidAccessToken,
    MissingAccessToken,
    Forbidden,
    UnknownResource,
    UnknownReferencedResource,
    ItemAlreadyExists,
    InvalidMethod,
    RemovedMethod,
    TooLarge,
    /// The HTTP layer's refusals (Herald's statuses, Pryv's `invalid-request-structure` id):
    /// the request's body did not arrive in time (408), its URI is too long (414), its headers
    /// are too many or too large (431).
    RequestTimeout,
    UriTooLong,
    HeadersTooLarge,
    /// Too many attempts (failed logins, registrations) from this user or address: Herald's own
    /// id, Pryv.io does not throttle. `data.retryAfter` (seconds) is also sent as `Retry-After`.
    TooManyRequests,
    /// Pryv.io's `api-unavailable`: the server cannot take this request now (the
    /// password-hashing pool is full). `data.retryAfter` is also sent as `Retry-After`.
    ApiUnavailable,
    UnexpectedError,
}

impl ErrorId {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorId::InvalidParametersFormat => "invalid-parameters-format",
            ErrorId::InvalidRequestStructure
            | ErrorId::TooLarge
            | ErrorId::RequestTimeout
            | ErrorId::UriTooLong
            | ErrorId::HeadersTooLarge => "invalid-request-structure",
            ErrorId::InvalidItemId => "invalid-item-id",
            ErrorId::InvalidOperation => "invalid-operation",
            ErrorId::InvalidCredentials => "invalid-credentials",
            ErrorId::InvalidAccessToken | ErrorId::MissingAccessToken => "invalid-access-token",
            ErrorId::Forbidden => "forbidden",
            ErrorId::UnknownResource => "unknown-resource",
            ErrorId::UnknownReferencedResource => "unknown-referenced-resource",
            ErrorId::ItemAlreadyExists => "item-already-exists",
            ErrorId::InvalidMethod => "invalid-method",
            ErrorId::RemovedMethod => "removed-method",
            ErrorId::TooManyRequests => "too-many-requests",
            ErrorId::ApiUnavailable => "api-unavailable",
            ErrorId::UnexpectedError => "unexpected-error",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorId::InvalidParametersFormat
            | ErrorId::InvalidRequestStructure
            | ErrorId::InvalidItemId
            | ErrorId::InvalidOperation
            | ErrorId::UnknownReferencedResource => 400,
            ErrorId::InvalidCredentials | ErrorId::MissingAccessToken => 401,
            ErrorId::InvalidAccessToken | ErrorId::Forbidden => 403,
            ErrorId::UnknownResource | ErrorId::InvalidMethod => 404,
            ErrorId::ItemAlreadyExists => 409,
            ErrorId::RemovedMethod => 410,
            ErrorId::RequestTimeout => 408,
            ErrorId::TooLarge => 413,
            ErrorId::UriTooLong => 414,
            ErrorId::HeadersTooLarge => 431,
            ErrorId::TooManyRequests => 429,
            ErrorId::UnexpectedError => 500,
            ErrorId::ApiUnavailable => 503,
        }
    }
}

/// An error as the API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub id: ErrorId,
    pub message: String,
    pub data: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.id.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(id: ErrorId, message: impl Into<String>) -> Self {
        ApiError { id, message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn status(&self) -> u16 {
        self.id.status()
    }

    /// The `error` object of the wire format.
    pub fn to_json(&self) -> Value {
        let mut e = json!({ "id": self.id.as_str(), "message": self.message });
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }

    pub fn params(message: impl Into<String>) -> Self {
        Self::new(ErrorId::InvalidParametersFormat, message)
    }

    /// `invalid-parameters-format` naming the offending parameter in `data`, as Pryv's validator does.
    pub fn param(name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(ErrorId::InvalidParametersFormat, "The parameters' format is invalid.")
            .with_data(json!([{ "code": "INVALID", "message": message, "path": format!("#/{name}"), "param": name }]))
    }

    pub fn structure(message: impl Into<String>) -> Self {
        Self::new(ErrorId::InvalidRequestStructure, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorId::Forbidden, message)
    }

    pub fn unknown(kind: &str, id: &str) -> Self {
        Self::new(ErrorId::UnknownResource, format!("Unknown {kind} \"{id}\"")).with_data(json!({ "id": id }))
    }

    pub fn unknown_referenced(kind: &str, data: Value) -> Self {
        Self::new(ErrorId::UnknownReferencedResource, format!("Unknown referenced {kind}")).with_data(data)
    }

    pub fn exists(kind: &str, field: &str, value: &Value) -> Self {
        let shown = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        Self::new(ErrorId::ItemAlreadyExists, format!("A {kind} with {field} \"{shown}\" already exists"))
            .with_data(json!({ field: value }))
    }

    /// A refusal to retry later (429 or 503): `data.retryAfter` in seconds, which the HTTP layer
    /// also sends as `Retry-After`.
    pub fn retry_later(id: ErrorId, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(id, message).with_data(json!({ "retryAfter": retry_after_secs }))
    }

    /// The seconds of `Retry-After`, for the errors that ask to retry later.
    pub fn retry_after(&self) -> Option<u64> {
        match self.id {
            ErrorId::TooManyRequests | ErrorId::ApiUnavailable => self.data.as_ref()?.get("retryAfter")?.as_u64(),
            _ => None,
        }
    }

    /// An unexpected failure (storage, I/O, a bug): the client gets a generic message and an
    /// error id (`data.errorId`); the detail goes only to the log, under that id, so no SQL,
    /// path or internal message ever reaches a client.
    pub fn unexpected(detail: impl std::fmt::Display) -> Self {
        let error_id = crate::id::new_id();
        tracing::error!(error_id = %error_id, detail = %detail, "unexpected error");
        Self::new(ErrorId::UnexpectedError, UNEXPECTED_MESSAGE).with_data(json!({ "errorId": error_id }))
    }
}

/// The one message of every `unexpected-error`.
pub const UNEXPECTED_MESSAGE: &str = "An unexpected error occurred; the server logged it under data.errorId.";

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_and_status() {
        let e = ApiError::unknown("event", "abc");
        assert_eq!(e.status(), 404);
        assert_eq!(e.to_json()["id"], "unknown-resource");
        assert_eq!(e.to_json()["data"]["id"], "abc");
        assert_eq!(ApiError::new(ErrorId::MissingAccessToken, "x").status(), 401);
        assert_eq!(ApiError::new(ErrorId::InvalidAccessToken, "x").status(), 403);
        assert!(ApiError::forbidden("x").to_json().get("data").is_none());
        let e = ApiError::retry_later(ErrorId::TooManyRequests, "slow down", 3);
        assert_eq!((e.status(), e.retry_after()), (429, Some(3)));
        assert_eq!(e.to_json()["id"], "too-many-requests");
        assert_eq!(ApiError::retry_later(ErrorId::ApiUnavailable, "busy", 1).status(), 503);
        assert_eq!(ApiError::forbidden("x").retry_after(), None);
    }

    #[test]
    fn unexpected_errors_hide_their_detail() {
        let e = ApiError::unexpected("near \"SELECT\": syntax error in /var/lib/herald.db");
        assert_eq!(e.status(), 500);
        let j = e.to_json();
        assert_eq!(j["id"], "unexpected-error");
        assert!(!j.to_string().contains("SELECT") && !j.to_string().contains("/var"));
        assert!(j["data"]["errorId"].as_str().is_some_and(|s| !s.is_empty()));
    }
}
