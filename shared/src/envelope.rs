//! The SQS message envelope (one row per message) and the idempotency key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    New,
    Changed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSource {
    pub bucket: String,
    pub key: String,
    pub etag: String,
}

/// `{"v":1,"feed":…,"run":…,"source":{…},"change":…,"record_key":…,"idempotency_key":…,"fields":{…}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub feed: String,
    pub run: String,
    pub source: EnvelopeSource,
    pub change: Change,
    pub record_key: String,
    pub idempotency_key: String,
    pub fields: BTreeMap<String, String>,
}

/// Borrowed form used by the splitter to serialize straight from a CSV record.
#[derive(Serialize)]
pub struct EnvelopeRef<'a> {
    pub v: u32,
    pub feed: &'a str,
    pub run: &'a str,
    pub source: &'a EnvelopeSource,
    pub change: Change,
    pub record_key: &'a str,
    pub idempotency_key: &'a str,
    pub fields: FieldsRef<'a>,
}

/// Serializes `header[i] → record[i]` as a JSON object (values are valid UTF-8, checked when
/// the row was read).
pub struct FieldsRef<'a> {
    pub header: &'a [String],
    pub record: &'a csv::ByteRecord,
}

impl Serialize for FieldsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.header.len()))?;
        for (name, value) in self.header.iter().zip(self.record.iter()) {
            m.serialize_entry(name, &String::from_utf8_lossy(value))?;
        }
        m.end()
    }
}

/// Why a message body could not be decoded. Permanent.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message body is not a casefeed envelope: {0}")]
    Undecodable(String),
    #[error("unsupported envelope version {0} (this build reads version {ENVELOPE_VERSION})")]
    UnknownVersion(u64),
}

impl Envelope {
    pub fn decode(body: &str) -> Result<Envelope, EnvelopeError> {
        #[derive(Deserialize)]
        struct V {
            v: Option<u64>,
        }
        let v: V = serde_json::from_str(body).map_err(|e| {
            // serde_json's messages cite positions, not the input: safe to report.
            EnvelopeError::Undecodable(e.classify_str().to_string())
        })?;
        match v.v {
            Some(1) => {}
            Some(other) => return Err(EnvelopeError::UnknownVersion(other)),
            None => return Err(EnvelopeError::Undecodable("no `v` field".into())),
        }
        serde_json::from_str(body).map_err(|e| {
            EnvelopeError::Undecodable(format!(
                "{} at line {} column {}",
                e.classify_str(),
                e.line(),
                e.column()
            ))
        })
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}
impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "JSON of the wrong shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// `hash(feed, record key, previous content fingerprint or none, new content fingerprint)`:
/// the same transition always yields the same key; A→B→A yields a new key for the return
/// to A. 128 bits of SHA-256, hex.
pub fn idempotency_key(feed: &str, record_key: &str, previous: Option<u64>, new: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"casefeed/idempotency/v1\0");
    h.update((feed.len() as u64).to_le_bytes());
    h.update(feed.as_bytes());
    h.update((record_key.len() as u64).to_le_bytes());
    h.update(record_key.as_bytes());
    match previous {
        Some(p) => {
            h.update([1u8]);
            h.update(p.to_le_bytes());
        }
        None => h.update([0u8]),
    }
    h.update(new.to_le_bytes());
    let d = h.finalize();
    hex::encode(&d[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_is_a_function_of_the_transition() {
        let a = idempotency_key("f", "k1", None, 10);
        assert_eq!(a, idempotency_key("f", "k1", None, 10));
        assert_eq!(a.len(), 32);
        assert_ne!(a, idempotency_key("g", "k1", None, 10));
        assert_ne!(a, idempotency_key("f", "k2", None, 10));
        assert_ne!(a, idempotency_key("f", "k1", Some(0), 10));
        // A -> B -> A: the return to A is a new transition with its own key
        let ab = idempotency_key("f", "k1", Some(10), 20);
        let ba = idempotency_key("f", "k1", Some(20), 10);
        assert_ne!(ab, ba);
        assert_ne!(ba, a);
        // no ambiguity between feed and key boundaries
        assert_ne!(
            idempotency_key("ab", "c", None, 1),
            idempotency_key("a", "bc", None, 1)
        );
    }

    #[test]
    fn envelope_round_trip() {
        let header = vec!["id".to_string(), "name".to_string()];
        let record = csv::ByteRecord::from(vec!["1", "Zoë \"Z\", Jr"]);
        let source = EnvelopeSource {
            bucket: "b".into(),
            key: "incoming/f/x.csv".into(),
            etag: "e".into(),
        };
        let r = EnvelopeRef {
            v: ENVELOPE_VERSION,
            feed: "f",
            run: "r",
            source: &source,
            change: Change::New,
            record_key: "1",
            idempotency_key: "abc",
            fields: FieldsRef {
                header: &header,
                record: &record,
            },
        };
        let body = serde_json::to_string(&r).unwrap();
        assert!(body.starts_with("{\"v\":1,\"feed\":\"f\""));
        let e = Envelope::decode(&body).unwrap();
        assert_eq!(e.fields["name"], "Zoë \"Z\", Jr");
        assert_eq!(e.change, Change::New);
    }

    #[test]
    fn decode_errors_do_not_echo_the_body() {
        let secret = "{\"v\":1,\"feed\":\"Jane Doe 555-0100\"";
        let e = Envelope::decode(secret).unwrap_err().to_string();
        assert!(!e.contains("Jane"), "{e}");
        assert!(matches!(
            Envelope::decode("{\"v\":2}"),
            Err(EnvelopeError::UnknownVersion(2))
        ));
        assert!(Envelope::decode("not json").is_err());
        let wrong = "{\"v\":1,\"feed\":{\"name\":\"Jane Doe\"}}";
        let e = Envelope::decode(wrong).unwrap_err().to_string();
        assert!(!e.contains("Jane"), "{e}");
    }
}
