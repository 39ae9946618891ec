//! Object-key validation shared by both backends, so a key that works in one works in the other.

use super::BlobError;

/// S3's own limit on a key, in bytes; the filesystem backend keeps the same one.
pub const MAX_KEY_BYTES: usize = 1024;

/// Accepts `a/b/c.xlsx`-style keys: relative, `/`-separated, no empty, `.` or
/// `..` segment, no backslash or control character. These keys map to a path
/// under the storage directory that can never escape it, and to the same S3 key.
pub fn validate(key: &str) -> Result<(), BlobError> {
    let invalid = |reason| {
        Err(BlobError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return invalid("contains a control character or a backslash");
    }
    if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return invalid("has an empty, `.` or `..` path segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_nested_keys_pass() {
        assert!(validate("xlsx/0190a1b2-0000-7000-8000-000000000000.xlsx").is_ok());
        assert!(validate("report final (1).pdf").is_ok());
    }

    #[test]
    fn keys_that_could_escape_or_differ_between_backends_fail() {
        for key in ["", "/abs", "a//b", "a/", "../x", "a/./b", "a\\b", "a\0b"] {
            assert!(
                matches!(validate(key), Err(BlobError::InvalidKey { .. })),
                "{key:?}"
            );
        }
        assert!(validate(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
