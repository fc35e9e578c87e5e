//! The identity of an export (the S3 object a run or a state came from) and how two exports
//! are ordered.

use serde::{Deserialize, Serialize};

/// Identity of the S3 object a snapshot (or a run) came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SourceObject {
    /// The bucket the export was uploaded to.
    pub bucket: String,
    /// The object's key (`incoming/<feed>/…`).
    pub key: String,
    /// The object's ETag as S3 gave it (quotes or not); `None` when the event had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The object's version id; `None` when the bucket is not versioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// RFC 3339, as S3 reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The S3 event's sequencer (hex); orders events for the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer: Option<String>,
    /// The object's size in bytes; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The S3 event's time (RFC 3339, ms): breaks last-modified ties (1 s resolution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
}

fn norm_etag(e: &str) -> &str {
    e.trim_matches('"')
}

impl SourceObject {
    /// Same object content: same key and the same ETag (or version id when both have one).
    pub fn same_object(&self, other: &SourceObject) -> bool {
        if self.bucket != other.bucket || self.key != other.key {
            return false;
        }
        if let (Some(a), Some(b)) = (&self.version_id, &other.version_id) {
            return a == b;
        }
        match (&self.etag, &other.etag) {
            (Some(a), Some(b)) => norm_etag(a) == norm_etag(b),
            _ => false,
        }
    }
}

fn parse_time(t: Option<&str>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(t?).ok()
}

impl SourceObject {
    /// Is this object older than `other` (the one the state comes from)?
    /// Same key with both sequencers: by sequencer (S3's order for one key). Otherwise by
    /// last-modified, then by event time when last-modified ties (it has 1 s resolution).
    /// Unknown → not older.
    pub fn older_than(&self, other: &SourceObject) -> bool {
        if self.key == other.key {
            if let (Some(a), Some(b)) = (&self.sequencer, &other.sequencer) {
                return cmp_sequencer(a, b) == std::cmp::Ordering::Less;
            }
        }
        let lm = (
            parse_time(self.last_modified.as_deref()),
            parse_time(other.last_modified.as_deref()),
        );
        if let (Some(a), Some(b)) = lm {
            if a != b {
                return a < b;
            }
        }
        match (
            parse_time(self.event_time.as_deref()),
            parse_time(other.event_time.as_deref()),
        ) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        }
    }
}

/// Compare two S3 sequencers (hex strings of possibly different lengths), per AWS guidance:
/// right-pad the shorter with zeros, then compare as hex.
pub fn cmp_sequencer(a: &str, b: &str) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    let pa = format!("{:0<n$}", a.to_ascii_uppercase());
    let pb = format!("{:0<n$}", b.to_ascii_uppercase());
    pa.cmp(&pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_object_and_sequencer() {
        let a = SourceObject {
            bucket: "b".into(),
            key: "k".into(),
            etag: Some("\"e1\"".into()),
            ..Default::default()
        };
        let mut b = a.clone();
        b.etag = Some("e1".into());
        assert!(a.same_object(&b));
        b.etag = Some("e2".into());
        assert!(!a.same_object(&b));
        use std::cmp::Ordering::*;
        assert_eq!(
            cmp_sequencer("0055AED6DCD90281E5", "0055AED6DCD90281E6"),
            Less
        );
        assert_eq!(cmp_sequencer("0055AED6DCD9028", "0055AED6DCD90281E5"), Less);
        assert_eq!(cmp_sequencer("0A", "0A00"), Equal);
        let at = |key: &str, lm: &str, et: Option<&str>, seq: Option<&str>| SourceObject {
            bucket: "b".into(),
            key: key.into(),
            last_modified: Some(lm.into()),
            event_time: et.map(str::to_string),
            sequencer: seq.map(str::to_string),
            ..Default::default()
        };
        let old = at(
            "k1",
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T00:00:00.100Z"),
            Some("01"),
        );
        let new = at(
            "k2",
            "2026-01-01T00:00:01Z",
            Some("2026-01-01T00:00:00.900Z"),
            Some("00"),
        );
        assert!(old.older_than(&new), "by last-modified");
        assert!(!new.older_than(&old));
        let tie = at(
            "k2",
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T00:00:00.200Z"),
            None,
        );
        assert!(
            old.older_than(&tie),
            "last-modified tie broken by event time"
        );
        assert!(!tie.older_than(&old));
        let same_key = at("k1", "2026-01-01T00:00:05Z", None, Some("00"));
        assert!(same_key.older_than(&old), "same key: the sequencer decides");
        assert!(
            !at("k9", "garbage", None, None).older_than(&old),
            "unknown is not older"
        );
    }
}
