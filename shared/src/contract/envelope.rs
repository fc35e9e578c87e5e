//! The SQS message envelope (one row per message) and the idempotency key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The envelope format this build writes (its `v`). Format 1 (no `version`, no removals) is
/// still read: its messages carry version 0, below any version this build writes.
pub const ENVELOPE_VERSION: u32 = 2;

/// Why a row is sent: what the state knew of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// The state has no record of this key.
    New,
    /// The state has the record with other content (in the compared columns).
    Changed,
    /// The record left the export (a tombstone: no fields). Sent only by feeds that ask for it.
    Removed,
}

impl Change {
    /// The change as messages and their attributes name it: `new` or `changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Removed => "removed",
        }
    }
}

/// The export a message's row was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSource {
    /// The bucket the export was uploaded to.
    pub bucket: String,
    /// The export's key.
    pub key: String,
    /// The export's ETag, without quotes (empty when unknown).
    pub etag: String,
    /// The export's S3 version id, in a versioned bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// `{"v":2,"feed":…,"run":…,"source":{…},"change":…,"record_key":…,"version":…,"idempotency_key":…,"fields":{…}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The envelope format ([`ENVELOPE_VERSION`]).
    pub v: u32,
    /// The feed the row came from.
    pub feed: String,
    /// The splitter run that sent it.
    pub run: String,
    /// The export the row was read from.
    pub source: EnvelopeSource,
    /// Whether the record is new, changed or removed.
    pub change: Change,
    /// The record's key as the API sees it: the key value, or a composite key's values joined
    /// with `|` (`|` and `\` escaped with `\`).
    pub record_key: String,
    /// The record's version after this transition: the generation of the feed's state the
    /// run committed, so it grows with every accepted export, per feed and record. The
    /// consumer never applies a version at or below the one the API acknowledged.
    #[serde(default)]
    pub version: u64,
    /// The transition's key ([`idempotency_key`]), sent to the API as `Idempotency-Key`.
    pub idempotency_key: String,
    /// The row: each column's name (from the file's header) to its value; empty for a removal.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// When the splitter's run sent the row (Unix epoch ms); absent in older messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// When the row's export was uploaded (the S3 event's time, Unix epoch ms), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_at_ms: Option<i64>,
    /// How long a transient failure of this message is retried before it is dead-lettered
    /// (the feed's `retry_window_secs`); absent: the consumer's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_window_secs: Option<u64>,
}

impl From<&crate::contract::source::SourceObject> for EnvelopeSource {
    /// The export as messages name it (the ETag without its quotes).
    fn from(source: &crate::contract::source::SourceObject) -> Self {
        EnvelopeSource {
            bucket: source.bucket.clone(),
            key: source.key.clone(),
            etag: source
                .etag
                .as_deref()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
            version_id: source.version_id.clone(),
        }
    }
}

/// Why a message body could not be decoded. Permanent.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON of the envelope's shape; says what kind of error and where, never
    /// the body's values.
    #[error("message body is not a casefeed envelope: {0}")]
    Undecodable(String),
    /// The body's `v` is a version this build does not read.
    #[error(
        "unsupported envelope version {0} (this build reads versions 1 to {ENVELOPE_VERSION})"
    )]
    UnknownVersion(u64),
}

impl Envelope {
    /// Decode a message body, its version checked first. An error never quotes the body.
    pub fn decode(body: &str) -> Result<Envelope, EnvelopeError> {
        #[derive(Deserialize)]
        struct V {
            v: Option<u64>,
        }
        let v: V = serde_json::from_str(body).map_err(|e| {
            // serde_json's messages cite positions, not the input: safe to report.
            EnvelopeError::Undecodable(serde_category(&e).to_string())
        })?;
        match v.v {
            Some(1) | Some(2) => {}
            Some(other) => return Err(EnvelopeError::UnknownVersion(other)),
            None => return Err(EnvelopeError::Undecodable("no `v` field".into())),
        }
        serde_json::from_str(body).map_err(|e| {
            EnvelopeError::Undecodable(format!(
                "{} at line {} column {}",
                serde_category(&e),
                e.line(),
                e.column()
            ))
        })
    }
}

/// What kind of JSON error this is, without serde's message (which can quote values).
pub fn serde_category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// The record's state before a transition: its content fingerprint and history chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// The content fingerprint the state holds for the record.
    pub content: u64,
    /// The record's history chain ([`next_chain`]).
    pub chain: u64,
}

/// The history summary after a record takes `content`.
pub fn next_chain(previous: Option<u64>, content: u64) -> u64 {
    let mut b = [0u8; 17];
    if let Some(p) = previous {
        b[0] = 1;
        b[1..9].copy_from_slice(&p.to_le_bytes());
    }
    b[9..17].copy_from_slice(&content.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&b, 0x6368_6169_6e00_0001)
}

/// `hash(feed, record key, previous state or none, new content fingerprint or removal,
/// version)`, where the previous state is the content fingerprint *and* the record's history
/// chain (see [`next_chain`]), and the version is the generation of the state the run
/// commits. The same transition from the same state always yields the same key — a re-run
/// of a crashed file or a duplicate S3 event reads the same state, so it dedupes — while
/// A→B→A→B gives three distinct keys (the second A→B starts from a different history), and
/// a record that leaves and returns with its first content gets a fresh key (a later
/// version). The key's values are length-prefixed, so composite keys cannot collide.
/// `new` is `None` for a removal. 128 bits of SHA-256, hex.
pub fn idempotency_key(
    feed: &str,
    key_values: &[&[u8]],
    previous: Option<Previous>,
    new: Option<u64>,
    version: u64,
) -> String {
    let mut h = Sha256::new();
    h.update(b"casefeed/idempotency/v2\0");
    h.update((feed.len() as u64).to_le_bytes());
    h.update(feed.as_bytes());
    h.update((key_values.len() as u64).to_le_bytes());
    for v in key_values {
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    match previous {
        Some(p) => {
            h.update([1u8]);
            h.update(p.content.to_le_bytes());
            h.update(p.chain.to_le_bytes());
        }
        None => h.update([0u8]),
    }
    match new {
        Some(content) => {
            h.update([1u8]);
            h.update(content.to_le_bytes());
        }
        None => h.update([2u8]),
    }
    h.update(version.to_le_bytes());
    let d = h.finalize();
    hex::encode(&d[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_is_a_function_of_the_transition() {
        let k1: &[&[u8]] = &[b"k1"];
        let key = |prev: Option<Previous>, new: u64, version: u64| {
            idempotency_key("f", k1, prev, Some(new), version)
        };
        let a = key(None, 10, 1);
        assert_eq!(a, key(None, 10, 1));
        assert_eq!(a.len(), 32);
        assert_ne!(a, idempotency_key("g", k1, None, Some(10), 1));
        assert_ne!(a, idempotency_key("f", &[b"k2"], None, Some(10), 1));
        let at = |content: u64, chain: u64| Some(Previous { content, chain });
        // A -> B -> A -> B: every transition has its own key, the second A -> B included,
        // even if the versions were the same
        let c_a = next_chain(None, 10);
        let ab = key(at(10, c_a), 20, 2);
        let c_ab = next_chain(Some(c_a), 20);
        let ba = key(at(20, c_ab), 10, 2);
        let c_aba = next_chain(Some(c_ab), 10);
        let ab2 = key(at(10, c_aba), 20, 2);
        let keys: std::collections::BTreeSet<_> = [&a, &ab, &ba, &ab2].into_iter().collect();
        assert_eq!(keys.len(), 4);
        // the same transition from the same state at the same version: the same key
        assert_eq!(ab, key(at(10, c_a), 20, 2));
        // a record that left and returns with its first content: a fresh key
        assert_ne!(a, key(None, 10, 5));
        // a removal is its own transition
        assert_ne!(
            idempotency_key("f", k1, at(10, c_a), None, 2),
            key(at(10, c_a), 10, 2)
        );
        // no ambiguity between feed, key parts and composite keys
        assert_ne!(
            idempotency_key("ab", &[b"c"], None, Some(1), 1),
            idempotency_key("a", &[b"bc"], None, Some(1), 1)
        );
        assert_ne!(
            idempotency_key("f", &[b"CA|LA", b"7"], None, Some(1), 1),
            idempotency_key("f", &[b"CA", b"LA|7"], None, Some(1), 1)
        );
    }

    #[test]
    fn a_version_1_envelope_is_read_as_version_0() {
        let v1 = r#"{"v":1,"feed":"f","run":"r","source":{"bucket":"b","key":"k","etag":"e"},
            "change":"new","record_key":"1","idempotency_key":"ik","fields":{"a":"b"}}"#;
        let e = Envelope::decode(v1).unwrap();
        assert_eq!((e.version, e.source.version_id.as_deref()), (0, None));
        let tomb = r#"{"v":2,"feed":"f","run":"r","source":{"bucket":"b","key":"k","etag":"e",
            "version_id":"v9"},"change":"removed","record_key":"1","version":7,
            "idempotency_key":"ik"}"#;
        let e = Envelope::decode(tomb).unwrap();
        assert_eq!(
            (e.change, e.version, e.fields.len()),
            (Change::Removed, 7, 0)
        );
        assert_eq!(e.source.version_id.as_deref(), Some("v9"));
    }

    #[test]
    fn decode_errors_do_not_echo_the_body() {
        let secret = "{\"v\":1,\"feed\":\"Jane Doe 555-0100\"";
        let e = Envelope::decode(secret).unwrap_err().to_string();
        assert!(!e.contains("Jane"), "{e}");
        assert!(matches!(
            Envelope::decode("{\"v\":3}"),
            Err(EnvelopeError::UnknownVersion(3))
        ));
        assert!(Envelope::decode("not json").is_err());
        let wrong = "{\"v\":1,\"feed\":{\"name\":\"Jane Doe\"}}";
        let e = Envelope::decode(wrong).unwrap_err().to_string();
        assert!(!e.contains("Jane"), "{e}");
    }
}
