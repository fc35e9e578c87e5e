//! The identity of an export (the S3 object a run or a state came from) and how two exports
//! are ordered: by upload (S3's sequencer, last-modified and event times), by object key, or
//! by a user-metadata value of the object ([`ExportOrder`]).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

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
    /// The user-metadata value that orders the feed's exports (`order = "metadata"`), as
    /// the object carried it; `None` for other orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_metadata: Option<OrderMetadata>,
}

/// An export's value of the user metadata that orders its feed: `x-amz-meta-<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMetadata {
    /// The metadata's name, lowercase, without `x-amz-meta-`.
    pub name: String,
    /// Its value on the object.
    pub value: String,
}

/// How a feed says which of two exports is the later one (`order` in `feeds.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExportOrder {
    /// The order S3 saw them in: the event sequencer for one key, else last-modified time,
    /// then event time ([`SourceObject::older_than`]).
    #[default]
    Upload,
    /// The object key, compared as a string (exporters that put a timestamp in the name).
    Key,
    /// The user metadata `x-amz-meta-<name>` (the name lowercase, without the prefix):
    /// compared as integers when both values are integers, else as RFC 3339 times when both
    /// are, else as strings ([`cmp_order_values`]).
    Metadata(String),
}

/// Where an export stands in its feed's [`ExportOrder`] against the export the feed's state
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderVerdict {
    /// Later, or the order cannot tell (no state, or the state has no value to compare):
    /// the export may be applied.
    Later,
    /// Older, or equal by the order but another object: ignored as `stale`. Says why, with
    /// the two values (object keys and metadata values, never row values).
    Stale(String),
    /// The feed is ordered by metadata and the export has none: the file is rejected. Says
    /// which metadata is missing.
    MissingMetadata(String),
}

/// How [`cmp_order_values`] compared two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueBasis {
    /// Both are integers.
    Integers,
    /// Both are RFC 3339 times (compared as instants).
    Times,
    /// Anything else: byte-wise as strings.
    Strings,
}

impl ValueBasis {
    /// How the comparison is described in a reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueBasis::Integers => "compared as integers",
            ValueBasis::Times => "compared as RFC 3339 times",
            ValueBasis::Strings => "compared as strings",
        }
    }
}

/// Compare two order-metadata values: as integers when both parse as integers (surrounding
/// whitespace ignored), else as RFC 3339 timestamps (instants, so offsets compare right)
/// when both parse, else as strings.
pub fn cmp_order_values(a: &str, b: &str) -> (Ordering, ValueBasis) {
    let (ta, tb) = (a.trim(), b.trim());
    if let (Ok(x), Ok(y)) = (ta.parse::<i128>(), tb.parse::<i128>()) {
        return (x.cmp(&y), ValueBasis::Integers);
    }
    if let (Some(x), Some(y)) = (parse_time(Some(ta)), parse_time(Some(tb))) {
        return (x.cmp(&y), ValueBasis::Times);
    }
    (a.cmp(b), ValueBasis::Strings)
}

impl ExportOrder {
    /// Where `export` stands against `state` (the export the feed's state comes from;
    /// `None` for a feed's first file) by this order. `Upload` always answers
    /// [`OrderVerdict::Later`]: upload order is decided by [`SourceObject::older_than`]
    /// and the sequencer, which need the store's answer and the event. The same object as
    /// the state's is for the caller to see first (a no-op, not stale).
    pub fn place(&self, export: &SourceObject, state: Option<&SourceObject>) -> OrderVerdict {
        match self {
            ExportOrder::Upload => OrderVerdict::Later,
            ExportOrder::Key => match state {
                Some(st) => match export.key.cmp(&st.key) {
                    Ordering::Greater => OrderVerdict::Later,
                    Ordering::Less => OrderVerdict::Stale(format!(
                        "older by object key (order = \"key\"): \"{}\" sorts before \"{}\", the key of the export the feed's state comes from",
                        export.key, st.key
                    )),
                    Ordering::Equal => OrderVerdict::Stale(format!(
                        "not newer by object key (order = \"key\"): \"{}\" is the key of the export the feed's state comes from, and this is another object under it (a re-upload under the same name is not a later export)",
                        export.key
                    )),
                },
                None => OrderVerdict::Later,
            },
            ExportOrder::Metadata(name) => {
                let Some(value) = export
                    .order_metadata
                    .as_ref()
                    .filter(|m| m.name == *name)
                    .map(|m| m.value.as_str())
                else {
                    return OrderVerdict::MissingMetadata(format!(
                        "the object has no user metadata x-amz-meta-{name}, which orders this feed's exports (order = \"metadata\"); upload it with that metadata"
                    ));
                };
                let Some(theirs) = state
                    .and_then(|st| st.order_metadata.as_ref())
                    .filter(|m| m.name == *name)
                    .map(|m| m.value.as_str())
                else {
                    return OrderVerdict::Later;
                };
                match cmp_order_values(value, theirs) {
                    (Ordering::Greater, _) => OrderVerdict::Later,
                    (Ordering::Less, basis) => OrderVerdict::Stale(format!(
                        "older by x-amz-meta-{name} (order = \"metadata\", {}): \"{value}\" is before \"{theirs}\", the value of the export the feed's state comes from",
                        basis.as_str()
                    )),
                    (Ordering::Equal, basis) => OrderVerdict::Stale(format!(
                        "not newer by x-amz-meta-{name} (order = \"metadata\", {}): \"{value}\" equals \"{theirs}\", the value of the export the feed's state comes from, and this is another object",
                        basis.as_str()
                    )),
                }
            }
        }
    }
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

    fn keyed(key: &str, meta: Option<(&str, &str)>) -> SourceObject {
        SourceObject {
            bucket: "b".into(),
            key: key.into(),
            order_metadata: meta.map(|(name, value)| OrderMetadata {
                name: name.into(),
                value: value.into(),
            }),
            ..Default::default()
        }
    }

    fn stale(v: OrderVerdict) -> String {
        match v {
            OrderVerdict::Stale(reason) => reason,
            other => panic!("expected stale, got {other:?}"),
        }
    }

    #[test]
    fn by_key_an_earlier_or_equal_key_is_stale_and_a_later_one_is_not() {
        let order = ExportOrder::Key;
        let state = keyed("incoming/f/2026-03-01T1000.csv", None);
        let later = keyed("incoming/f/2026-03-01T1030.csv", None);
        assert_eq!(order.place(&later, Some(&state)), OrderVerdict::Later);
        let reason =
            stale(order.place(&keyed("incoming/f/2026-03-01T0930.csv", None), Some(&state)));
        assert!(
            reason.contains("2026-03-01T0930") && reason.contains("2026-03-01T1000"),
            "{reason}"
        );
        let again =
            stale(order.place(&keyed("incoming/f/2026-03-01T1000.csv", None), Some(&state)));
        assert!(again.contains("another object"), "{again}");
        // a feed's first file has nothing to be older than
        assert_eq!(order.place(&later, None), OrderVerdict::Later);
    }

    #[test]
    fn by_metadata_values_compare_as_integers_then_times_then_strings() {
        use Ordering::*;
        assert_eq!(cmp_order_values("9", "10"), (Less, ValueBasis::Integers));
        assert_eq!(
            cmp_order_values(" 42 ", "42"),
            (Equal, ValueBasis::Integers)
        );
        assert_eq!(cmp_order_values("-1", "0"), (Less, ValueBasis::Integers));
        // the same instant written with two offsets is equal; 10:00+02:00 is before 09:00Z
        assert_eq!(
            cmp_order_values("2026-03-01T12:00:00+02:00", "2026-03-01T10:00:00Z"),
            (Equal, ValueBasis::Times)
        );
        assert_eq!(
            cmp_order_values("2026-03-01T10:00:00+02:00", "2026-03-01T09:00:00Z"),
            (Less, ValueBasis::Times)
        );
        // one integer and one time: neither basis holds for both, so as strings
        assert_eq!(
            cmp_order_values("9", "2026-03-01T09:00:00Z"),
            (Greater, ValueBasis::Strings)
        );
        assert_eq!(cmp_order_values("b", "a"), (Greater, ValueBasis::Strings));
    }

    #[test]
    fn by_metadata_an_older_value_is_stale_and_a_missing_one_is_refused() {
        let order = ExportOrder::Metadata("export-seq".into());
        let state = keyed("incoming/f/z.csv", Some(("export-seq", "10")));
        let later = keyed("incoming/f/a.csv", Some(("export-seq", "11")));
        assert_eq!(
            order.place(&later, Some(&state)),
            OrderVerdict::Later,
            "not by key"
        );
        let reason = stale(order.place(
            &keyed("incoming/f/y.csv", Some(("export-seq", "9"))),
            Some(&state),
        ));
        assert!(
            reason.contains("\"9\"") && reason.contains("\"10\"") && reason.contains("integers"),
            "{reason}"
        );
        let equal = stale(order.place(
            &keyed("incoming/f/x.csv", Some(("export-seq", "10"))),
            Some(&state),
        ));
        assert!(equal.contains("equals"), "{equal}");
        // no value on the export: refused, with or without a state
        for st in [Some(&state), None] {
            let OrderVerdict::MissingMetadata(why) =
                order.place(&keyed("incoming/f/n.csv", None), st)
            else {
                panic!("a missing value must be refused")
            };
            assert!(why.contains("x-amz-meta-export-seq"), "{why}");
        }
        // another metadata's value is not this one
        let other = keyed("incoming/f/o.csv", Some(("other", "99")));
        assert!(matches!(
            order.place(&other, Some(&state)),
            OrderVerdict::MissingMetadata(_)
        ));
        // a state without a value (an older state, or another order before): cannot tell
        let bare = keyed("incoming/f/s.csv", None);
        assert_eq!(order.place(&later, Some(&bare)), OrderVerdict::Later);
        // upload order is decided elsewhere
        assert_eq!(
            ExportOrder::Upload.place(&bare, Some(&state)),
            OrderVerdict::Later
        );
    }
}
