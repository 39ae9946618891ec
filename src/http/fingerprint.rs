//! The request fingerprint, computed while streaming the document.
//!
//! The fingerprint is SHA-256 over the canonical request: object keys sorted,
//! insignificant whitespace gone, numbers and strings written as serde_json
//! writes them, so a re-serialised retry (keys in another order, other
//! spacing) is the same request. It used to be computed over a
//! `serde_json::Value` of the whole document: a 16 MiB body of four million
//! rows `[0]` became about 700 MB of tree. Here serde's deserializer drives a
//! visitor that writes the canonical bytes straight into the hash; only an
//! object's members are buffered (as canonical bytes, to be sorted by key), so
//! memory is bounded by the canonical size of the document, never by a tree.
//! The bytes hashed are exactly those of the tree version, so fingerprints of
//! jobs stored before this change still match their replays.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::metadata::Metadata;
use crate::render::Format;

/// SHA-256 of the canonical request without its idempotency key.
pub fn fingerprint(format: Format, filename: &str, document: &RawValue) -> [u8; 32] {
    fingerprint_with_metadata(format, filename, None, document)
}

/// [`fingerprint`] of a request with `metadata`: its canonical JSON (keys
/// sorted) comes after a `0x01` byte, which no JSON document starts with, so
/// a request without metadata keeps the fingerprint it always had.
pub fn fingerprint_with_metadata(
    format: Format,
    filename: &str,
    metadata: Option<&Metadata>,
    document: &RawValue,
) -> [u8; 32] {
    let metadata = metadata.and_then(|m| serde_json::to_vec(m).ok());
    let prefix = |hasher: &mut Sha256| {
        hasher.update(format.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(filename.as_bytes());
        hasher.update([0]);
        if let Some(metadata) = &metadata {
            hasher.update([1]);
            hasher.update(metadata);
            hasher.update([0]);
        }
    };
    let mut hasher = Sha256::new();
    prefix(&mut hasher);
    let mut de = serde_json::Deserializer::from_str(document.get());
    let streamed = Canonical(&mut hasher)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if streamed.is_err() {
        // Not JSON (callers validate first, so only a defence): the raw text.
        hasher = Sha256::new();
        prefix(&mut hasher);
        hasher.update(document.get().as_bytes());
    }
    hasher.finalize().into()
}

/// Where canonical bytes go: the hash at the top, a member's buffer inside
/// an object (whose members must be sorted before they are hashed).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes one JSON value, canonically, into its sink.
struct Canonical<'s>(&'s mut dyn Sink);

impl Canonical<'_> {
    /// A scalar as serde_json serialises it (`Value::to_string` did the same).
    fn scalar<T: serde::Serialize, E: de::Error>(self, value: T) -> Result<(), E> {
        let mut text = Vec::with_capacity(24);
        serde_json::to_writer(&mut text, &value).map_err(E::custom)?;
        self.0.put(&text);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json's `Value` turns a non-finite float into null.
        self.scalar(serde_json::Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.put(b"null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Arrays keep their order: streamed straight into the sink.
        self.0.put(b"[");
        let mut first = true;
        loop {
            let mut element = Pending::new(&mut *self.0, !first);
            if seq.next_element_seed(Canonical(&mut element))?.is_none() {
                break;
            }
            first = false;
        }
        self.0.put(b"]");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Members are buffered as canonical bytes and hashed in key order.
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let mut value = Vec::new();
            map.next_value_seed(Canonical(&mut value))?;
            members.push((key, value));
        }
        // serde_json keeps the last of duplicate keys; so did the tree.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.dedup_by(|later, earlier| {
            let duplicate = later.0 == earlier.0;
            if duplicate {
                std::mem::swap(later, earlier);
            }
            duplicate
        });
        self.0.put(b"{");
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                self.0.put(b",");
            }
            let key = serde_json::to_vec(key).map_err(de::Error::custom)?;
            self.0.put(&key);
            self.0.put(b":");
            self.0.put(value);
        }
        self.0.put(b"}");
        Ok(())
    }
}

/// An array element's sink: writes the separating comma (when `comma`) just
/// before the element's first bytes, so the array's end writes nothing.
struct Pending<'s> {
    inner: &'s mut dyn Sink,
    comma: bool,
}

impl<'s> Pending<'s> {
    fn new(inner: &'s mut dyn Sink, comma: bool) -> Self {
        Pending { inner, comma }
    }
}

impl Sink for Pending<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if std::mem::take(&mut self.comma) {
            self.inner.put(b",");
        }
        self.inner.put(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The tree-building fingerprint this module replaces: the oracle.
    fn by_tree(format: Format, filename: &str, document: &RawValue) -> [u8; 32] {
        fn canonical(value: &serde_json::Value, out: &mut Sha256) {
            use serde_json::Value;
            match value {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    out.update(b"{");
                    for (i, key) in keys.into_iter().enumerate() {
                        if i > 0 {
                            out.update(b",");
                        }
                        out.update(Value::String(key.clone()).to_string().as_bytes());
                        out.update(b":");
                        canonical(&map[key], out);
                    }
                    out.update(b"}");
                }
                Value::Array(items) => {
                    out.update(b"[");
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.update(b",");
                        }
                        canonical(item, out);
                    }
                    out.update(b"]");
                }
                scalar => out.update(scalar.to_string().as_bytes()),
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(format.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(filename.as_bytes());
        hasher.update([0]);
        match serde_json::from_str::<serde_json::Value>(document.get()) {
            Ok(value) => canonical(&value, &mut hasher),
            Err(_) => hasher.update(document.get().as_bytes()),
        }
        hasher.finalize().into()
    }

    fn raw(text: &str) -> Box<RawValue> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter_but_content_does() {
        let fp = |d: &str| fingerprint(Format::Pdf, "x.pdf", &raw(d));
        assert_eq!(fp(r#"{"a": 1, "b": [1, 2]}"#), fp(r#"{"b":[1,2],"a":1}"#));
        assert_ne!(fp(r#"{"a": 1, "b": [1, 2]}"#), fp(r#"{"b":[2,1],"a":1}"#));
        assert_ne!(
            fp(r#"{"a":1}"#),
            fingerprint(Format::Xlsx, "x.pdf", &raw(r#"{"a":1}"#))
        );
    }

    #[test]
    fn matches_the_tree_fingerprint_on_awkward_documents() {
        for text in [
            r#"{"sheets":[{"rows":[[0],[1.5e300],[-0],[18446744073709551616],[-3]]}]}"#,
            r#"{"z":{"y":[],"x":{}},"a":[[],[[]],{}],"é":"\u0000\"\\ \ud83d\ude00"}"#,
            r#"{"a":1,"a":2}"#,
            r#"[1E5, 0.10, 1e-7, true, false, null, "x"]"#,
            r#""just a string""#,
            "7",
            r#"{"b":{"d":1,"c":[{"f":1,"e":2}]},"a":null}"#,
        ] {
            let document = raw(text);
            assert_eq!(
                fingerprint(Format::Xlsx, "f.xlsx", &document),
                by_tree(Format::Xlsx, "f.xlsx", &document),
                "{text}"
            );
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::vec((".{0,4}", inner), 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn always_matches_the_tree_fingerprint(value in json_value()) {
            let document = raw(&serde_json::to_string_pretty(&value).unwrap());
            prop_assert_eq!(
                fingerprint(Format::Pdf, "p.pdf", &document),
                by_tree(Format::Pdf, "p.pdf", &document)
            );
        }
    }
}
