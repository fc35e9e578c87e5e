//! PURE: a dead letter as the operator sees it — its message attributes and its envelope's
//! metadata (feed, run, change, record key, version, idempotency key, source key), never the
//! envelope's `fields`, which hold row values — and the filters and grouping of
//! `casefeed dlq list|replay|purge`.
//!
//! The body is read into [`EnvelopeMeta`] field by field (strings and numbers only); `fields`
//! is never deserialised into anything, so no row value is held, printed or written.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The class shown for a message without an `error_class` attribute: SQS moved it to the
/// DLQ by redrive (after `maxReceiveCount` receives), not the consumer.
pub const REDRIVE: &str = "redrive";

/// The attributes a copy sent back to the work queue keeps: those the splitter gave it.
pub const WORK_ATTRIBUTES: [&str; 3] = ["feed", "change", "idempotency_key"];

/// An envelope's metadata (no `fields`). Every field is optional: a body that is not a
/// casefeed envelope still shows what it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The export the row was read from (`source.key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key: Option<String>,
    /// When the splitter sent the row (Unix epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
}

impl EnvelopeMeta {
    /// The metadata of a message body; `None` when the body is not a JSON object.
    pub fn of_body(body: &str) -> Option<EnvelopeMeta> {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        let obj = value.as_object()?;
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let uint = |k: &str| obj.get(k).and_then(|v| v.as_u64());
        Some(EnvelopeMeta {
            v: uint("v"),
            feed: text("feed"),
            run: text("run"),
            change: text("change"),
            record_key: text("record_key"),
            version: uint("version"),
            idempotency_key: text("idempotency_key"),
            source_key: obj
                .get("source")
                .and_then(|s| s.get("key"))
                .and_then(|k| k.as_str())
                .map(str::to_string),
            sent_at_ms: obj.get("sent_at_ms").and_then(|v| v.as_i64()),
        })
    }
}

/// A dead-lettered message: its attributes and envelope metadata (bodies are not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub message_id: String,
    /// The String message attributes (the consumer's: feed, change, idempotency_key,
    /// error_class, http_status, reason, attempts, age_ms, failed_at, source_message_id).
    pub attributes: BTreeMap<String, String>,
    /// SQS's ApproximateReceiveCount (this walk's receive included).
    pub receive_count: u64,
    /// When the message entered the DLQ (SQS SentTimestamp, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// The envelope's metadata; `None` when the body is not a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<EnvelopeMeta>,
}

impl DeadLetter {
    /// The error class: the `error_class` attribute, or [`REDRIVE`] without one.
    pub fn class(&self) -> &str {
        self.attributes
            .get("error_class")
            .map(String::as_str)
            .unwrap_or(REDRIVE)
    }

    pub fn http_status(&self) -> Option<&str> {
        self.attributes.get("http_status").map(String::as_str)
    }

    /// The feed: the attribute, else the envelope's.
    pub fn feed(&self) -> Option<&str> {
        self.attributes
            .get("feed")
            .map(String::as_str)
            .or_else(|| self.envelope.as_ref().and_then(|e| e.feed.as_deref()))
    }

    /// The splitter run that sent it: the envelope's, else a `run` attribute.
    pub fn run(&self) -> Option<&str> {
        self.envelope
            .as_ref()
            .and_then(|e| e.run.as_deref())
            .or_else(|| self.attributes.get("run").map(String::as_str))
    }

    /// The idempotency key: the attribute, else the envelope's.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.attributes
            .get("idempotency_key")
            .map(String::as_str)
            .or_else(|| {
                self.envelope
                    .as_ref()
                    .and_then(|e| e.idempotency_key.as_deref())
            })
    }
}

/// Which dead letters a command acts on; an unset field matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// `error_class` (`permanent`, `retry_window`, `undecodable`, or `redrive` for none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `http_status` (e.g. 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Filter {
    pub fn matches(&self, l: &DeadLetter) -> bool {
        fn ok(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        ok(&self.class, Some(l.class()))
            && ok(&self.feed, l.feed())
            && ok(&self.run, l.run())
            && ok(&self.status, l.http_status())
    }

    /// The filters that are set, by name (for audit records and messages).
    pub fn as_map(&self) -> BTreeMap<String, String> {
        [
            ("class", &self.class),
            ("feed", &self.feed),
            ("run", &self.run),
            ("status", &self.status),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.as_map().is_empty()
    }
}

/// One group of `casefeed dlq list`: the messages of one class, status, feed and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub error_class: String,
    pub http_status: Option<String>,
    pub feed: Option<String>,
    pub run: Option<String>,
    pub count: u64,
}

/// Group dead letters by (class, http status, feed, run): the largest groups first, then
/// by class, status, feed and run.
pub fn group(letters: &[DeadLetter]) -> Vec<Group> {
    type Key = (String, Option<String>, Option<String>, Option<String>);
    let mut counts: BTreeMap<Key, u64> = BTreeMap::new();
    for l in letters {
        let key = (
            l.class().to_string(),
            l.http_status().map(str::to_string),
            l.feed().map(str::to_string),
            l.run().map(str::to_string),
        );
        *counts.entry(key).or_default() += 1;
    }
    let mut groups: Vec<Group> = counts
        .into_iter()
        .map(|((error_class, http_status, feed, run), count)| Group {
            error_class,
            http_status,
            feed,
            run,
            count,
        })
        .collect();
    // stable: equal counts keep the key order of the map
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    groups
}

/// Counts per class, for a one-line summary.
pub fn by_class(letters: &[DeadLetter]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in letters {
        *out.entry(l.class().to_string()).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope body with row values in `fields`.
    fn body(run: &str, key: &str) -> String {
        serde_json::json!({
            "v": 2, "feed": "lab_results", "run": run,
            "source": {"bucket": "b", "key": "incoming/lab_results/x.csv", "etag": "e"},
            "change": "new", "record_key": key, "version": 3,
            "idempotency_key": format!("ik-{key}"), "sent_at_ms": 1_700_000_000_000i64,
            "fields": {"first_name": "Zebulon", "phone": "+15550001234", "dob": "1971-02-03"}
        })
        .to_string()
    }

    fn letter(id: &str, class: Option<&str>, status: Option<&str>, run: &str) -> DeadLetter {
        let mut attributes = BTreeMap::new();
        if let Some(c) = class {
            attributes.insert("error_class".to_string(), c.to_string());
            attributes.insert("feed".to_string(), "lab_results".to_string());
        }
        if let Some(s) = status {
            attributes.insert("http_status".to_string(), s.to_string());
        }
        DeadLetter {
            message_id: id.into(),
            attributes,
            receive_count: 1,
            sent_at: None,
            envelope: EnvelopeMeta::of_body(&body(run, id)),
        }
    }

    #[test]
    fn the_envelope_metadata_never_holds_a_row_value() {
        let meta = EnvelopeMeta::of_body(&body("r1", "R-1")).expect("a JSON object");
        assert_eq!(meta.feed.as_deref(), Some("lab_results"));
        assert_eq!(meta.run.as_deref(), Some("r1"));
        assert_eq!(meta.record_key.as_deref(), Some("R-1"));
        assert_eq!(meta.version, Some(3));
        assert_eq!(meta.idempotency_key.as_deref(), Some("ik-R-1"));
        assert_eq!(
            meta.source_key.as_deref(),
            Some("incoming/lab_results/x.csv")
        );
        let shown = serde_json::to_string(&letter("R-1", Some("permanent"), Some("422"), "r1"))
            .expect("serialises");
        for value in ["Zebulon", "+15550001234", "1971-02-03", "fields"] {
            assert!(!shown.contains(value), "{value} in {shown}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_envelope_has_no_or_partial_metadata() {
        assert_eq!(EnvelopeMeta::of_body("not json"), None);
        assert_eq!(EnvelopeMeta::of_body("[1,2]"), None);
        let m = EnvelopeMeta::of_body(r#"{"feed": 7, "run": "r"}"#).expect("an object");
        assert_eq!(m.feed, None);
        assert_eq!(m.run.as_deref(), Some("r"));
    }

    #[test]
    fn a_message_without_error_class_is_shown_as_redrive() {
        let l = letter("a", None, None, "r1");
        assert_eq!(l.class(), REDRIVE);
        assert_eq!(l.feed(), Some("lab_results"), "the envelope's feed");
        assert_eq!(l.idempotency_key(), Some("ik-a"));
    }

    #[test]
    fn filters_match_class_feed_run_and_status_and_redrive_means_no_class() {
        let p = letter("a", Some("permanent"), Some("422"), "r1");
        let w = letter("b", Some("retry_window"), None, "r2");
        let r = letter("c", None, None, "r1");
        let f = |class: Option<&str>, run: Option<&str>, status: Option<&str>| Filter {
            class: class.map(str::to_string),
            feed: None,
            run: run.map(str::to_string),
            status: status.map(str::to_string),
        };
        assert!(Filter::default().matches(&p) && Filter::default().matches(&r));
        assert!(f(Some("permanent"), None, None).matches(&p));
        assert!(!f(Some("permanent"), None, None).matches(&w));
        assert!(f(Some("redrive"), None, None).matches(&r));
        assert!(!f(Some("redrive"), None, None).matches(&p));
        assert!(f(None, Some("r1"), None).matches(&r) && !f(None, Some("r1"), None).matches(&w));
        assert!(f(None, None, Some("422")).matches(&p) && !f(None, None, Some("422")).matches(&w));
        let other_feed = Filter {
            feed: Some("other".into()),
            ..Filter::default()
        };
        assert!(!other_feed.matches(&p));
        assert_eq!(
            f(Some("permanent"), None, Some("422")).as_map(),
            BTreeMap::from([
                ("class".to_string(), "permanent".to_string()),
                ("status".to_string(), "422".to_string())
            ])
        );
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn grouping_counts_each_class_status_feed_and_run_largest_first() {
        let letters = vec![
            letter("a", Some("permanent"), Some("422"), "r1"),
            letter("b", Some("permanent"), Some("422"), "r1"),
            letter("c", Some("permanent"), Some("400"), "r1"),
            letter("d", Some("permanent"), Some("422"), "r2"),
            letter("e", None, None, "r1"),
            letter("f", Some("permanent"), Some("422"), "r1"),
        ];
        let groups = group(&letters);
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[0].count, 3);
        assert_eq!(groups[0].error_class, "permanent");
        assert_eq!(groups[0].http_status.as_deref(), Some("422"));
        assert_eq!(groups[0].run.as_deref(), Some("r1"));
        assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 6);
        let redrive = groups
            .iter()
            .find(|g| g.error_class == REDRIVE)
            .expect("a redrive group");
        assert_eq!((redrive.count, redrive.http_status.as_deref()), (1, None));
        assert_eq!(
            by_class(&letters),
            BTreeMap::from([("permanent".to_string(), 5), (REDRIVE.to_string(), 1)])
        );
        assert!(group(&[]).is_empty());
    }
}
