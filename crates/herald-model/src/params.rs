//! Reading method parameters. Parameters arrive as JSON from bodies and batch calls, or as strings
//! from a query string; these helpers accept both forms of a number or boolean and turn anything
//! else into Pryv's `invalid-parameters-format` error naming the parameter.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// Calls in one batch (`callBatch`): past it the batch answers 413 (docs/limits.md).
pub const MAX_BATCH_CALLS: usize = 1_000;

/// The params of a call must be a JSON object (absent means empty).
pub fn as_object(params: &Value) -> ApiResult<Map<String, Value>> {
    match params {
        Value::Object(m) => Ok(m.clone()),
        Value::Null => Ok(Map::new()),
        _ => Err(ApiError::params("The parameters must be a JSON object.")),
    }
}

pub fn reject_unknown(m: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::param(k, format!("Unknown parameter \"{k}\".")));
    }
    Ok(())
}

pub fn opt_str(m: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::param(key, format!("\"{key}\" must be a string."))),
    }
}

pub fn req_str(m: &Map<String, Value>, key: &str) -> ApiResult<String> {
    opt_str(m, key)?.ok_or_else(|| ApiError::param(key, format!("\"{key}\" is required.")))
}

/// A number, from a JSON number or a numeric string (query strings).
pub fn opt_f64(m: &Map<String, Value>, key: &str) -> ApiResult<Option<f64>> {
    let bad = || ApiError::param(key, format!("\"{key}\" must be a number."));
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()).map(Some).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// A non-negative integer, from a JSON number or a numeric string.
pub fn opt_u64(m: &Map<String, Value>, key: &str) -> ApiResult<Option<u64>> {
    let bad = || ApiError::param(key, format!("\"{key}\" must be a non-negative integer."));
    match opt_f64(m, key).map_err(|_| bad())? {
        None => Ok(None),
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= 9.0e15 => Ok(Some(f as u64)),
        Some(_) => Err(bad()),
    }
}

/// A boolean, from JSON `true`/`false` or the strings `"true"`/`"false"` (also `1`/`0`).
pub fn opt_bool(m: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" || s == "1" || s.is_empty() => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" || s == "0" => Ok(Some(false)),
        Some(_) => Err(ApiError::param(key, format!("\"{key}\" must be a boolean."))),
    }
}

/// An array of strings; a single string counts as a one-element array (query strings).
pub fn opt_str_array(m: &Map<String, Value>, key: &str) -> ApiResult<Option<Vec<String>>> {
    let bad = || ApiError::param(key, format!("\"{key}\" must be an array of strings."));
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(bad)).collect::<Result<_, _>>().map(Some),
        Some(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coercions() {
        let m = as_object(&json!({"a": "12", "b": 3.5, "c": "x", "t": "true", "f": false, "s": "one", "arr": ["x", "y"]})).unwrap();
        assert_eq!(opt_f64(&m, "a").unwrap(), Some(12.0));
        assert_eq!(opt_u64(&m, "a").unwrap(), Some(12));
        assert!(opt_u64(&m, "b").is_err());
        assert!(opt_f64(&m, "c").is_err());
        assert_eq!(opt_bool(&m, "t").unwrap(), Some(true));
        assert_eq!(opt_bool(&m, "f").unwrap(), Some(false));
        assert!(opt_bool(&m, "c").is_err());
        assert_eq!(opt_str_array(&m, "s").unwrap(), Some(vec!["one".to_string()]));
        assert_eq!(opt_str_array(&m, "arr").unwrap().unwrap().len(), 2);
        assert!(opt_str(&m, "b").is_err());
        assert_eq!(opt_f64(&m, "missing").unwrap(), None);
        assert!(reject_unknown(&m, &["a"]).is_err());
        assert!(as_object(&json!([1])).is_err());
    }
}
