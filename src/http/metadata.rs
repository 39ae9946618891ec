//! The optional `metadata` of `POST /generate`: the client's own labels for a
//! job (an order number, a user id), stored with it and shown wherever the
//! job is. Small and flat on purpose: it is repeated in every status read.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::error::ApiError;

/// Most values one job may carry.
pub const MAX_METADATA_VALUES: usize = 20;
/// Most bytes of keys and values together (UTF-8).
pub const MAX_METADATA_BYTES: usize = 4 * 1024;

/// A job's metadata, sorted by key: its JSON is canonical, so it can go
/// into the request fingerprint as it is.
pub type Metadata = BTreeMap<String, String>;

/// Checks the request's `metadata` member; `None` when absent, `null` or `{}`.
pub fn parse(raw: Option<&RawValue>) -> Result<Option<Metadata>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let invalid = |why: String| ApiError::InvalidRequest(format!("`metadata` {why}"));
    let value: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| invalid(e.to_string()))?;
    let object = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(object) => object,
        _ => return Err(invalid("must be an object of string values".into())),
    };
    if object.len() > MAX_METADATA_VALUES {
        return Err(invalid(format!(
            "has {} values; at most {MAX_METADATA_VALUES} are allowed",
            object.len()
        )));
    }
    let mut metadata = Metadata::new();
    let mut bytes = 0;
    for (key, value) in object {
        let serde_json::Value::String(value) = value else {
            return Err(invalid(format!("value of {key:?} must be a string")));
        };
        bytes += key.len() + value.len();
        metadata.insert(key, value);
    }
    if bytes > MAX_METADATA_BYTES {
        return Err(invalid(format!(
            "holds {bytes} bytes of keys and values; at most {MAX_METADATA_BYTES} are allowed"
        )));
    }
    Ok((!metadata.is_empty()).then_some(metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<Option<Metadata>, ApiError> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        parse(Some(&raw))
    }

    #[test]
    fn limits_are_enforced_exactly() {
        let many = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{i}\":\"v\"")).collect();
            format!("{{{}}}", members.join(","))
        };
        assert_eq!(check(&many(20)).unwrap().unwrap().len(), 20);
        assert!(check(&many(21)).is_err());
        let big = |n: usize| format!("{{\"k\":\"{}\"}}", "x".repeat(n));
        assert!(check(&big(MAX_METADATA_BYTES - 1)).unwrap().is_some());
        assert!(check(&big(MAX_METADATA_BYTES)).is_err());
        assert!(check(r#"{"n":1}"#).is_err());
        assert!(check(r#"["a"]"#).is_err());
        assert_eq!(check("null").unwrap(), None);
        assert_eq!(check("{}").unwrap(), None);
    }
}
