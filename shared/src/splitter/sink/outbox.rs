//! The outbox: a new or changed row becomes one SQS message (envelope body + attributes),
//! serialized straight from the CSV record; a removed record (in a feed that sends them)
//! becomes a tombstone: its record key, no fields.

use crate::contract::envelope::{
    idempotency_key, Change, EnvelopeSource, Previous, ENVELOPE_VERSION,
};
use crate::ports::queue::OutMessage;
use crate::splitter::filter::{record_key, ColumnPlan, Fingerprints};
use crate::splitter::source::{Record, Rejected};
use serde::Serialize;

/// The times and the retry window every message of one run carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// When the run started sending (Unix epoch ms).
    pub sent_at_ms: i64,
    /// When the export was uploaded (its S3 event's time), when known.
    pub uploaded_at_ms: Option<i64>,
    /// The feed's retry window.
    pub retry_window_secs: u64,
}

impl Stamps {
    /// Now, the export's event time, and the feed's window.
    pub fn of(
        feed: &crate::config::FeedConfig,
        source: &crate::contract::source::SourceObject,
    ) -> Self {
        let uploaded_at_ms = source
            .event_time
            .as_deref()
            .or(source.last_modified.as_deref())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        Stamps {
            sent_at_ms: chrono::Utc::now().timestamp_millis(),
            uploaded_at_ms,
            retry_window_secs: feed.retry_window_secs,
        }
    }
}

/// What every message of one run shares.
pub struct Outbox<'a> {
    /// The feed.
    pub feed: &'a str,
    /// The run.
    pub run: &'a str,
    /// The object the rows came from.
    pub source: &'a EnvelopeSource,
    /// The file's header: the fields' names.
    pub header: &'a [String],
    /// The version every message of the run carries (the state's next generation).
    pub version: u64,
    /// The run's times and the feed's retry window.
    pub stamps: Stamps,
}

impl Outbox<'_> {
    /// The message of one new or changed row: its envelope (the row's fields, its record
    /// key, the transition's idempotency key) and the attributes a dead-letter queue can be
    /// inspected by. A row that cannot be encoded is rejected instead, by line.
    pub fn message(
        &self,
        plan: &ColumnPlan,
        record: &Record,
        line: u64,
        fps: Fingerprints,
        change: Change,
        previous: Option<Previous>,
    ) -> Result<OutMessage, Rejected> {
        let rk = record_key(plan, record);
        // as the key fingerprint sees them: trimmed with the feed's `trim_keys`
        let key_values: Vec<&[u8]> = plan.key_values(record).collect();
        let ikey = idempotency_key(
            self.feed,
            &key_values,
            previous,
            Some(fps.store),
            self.version,
        );
        let env = EnvelopeRef {
            v: ENVELOPE_VERSION,
            feed: self.feed,
            run: self.run,
            source: self.source,
            change,
            record_key: &rk,
            version: self.version,
            idempotency_key: &ikey,
            fields: FieldsRef {
                header: self.header,
                record,
            },
            sent_at_ms: Some(self.stamps.sent_at_ms),
            uploaded_at_ms: self.stamps.uploaded_at_ms,
            retry_window_secs: Some(self.stamps.retry_window_secs),
        };
        let body = serde_json::to_string(&env).map_err(|_| Rejected {
            line,
            reason: "row could not be encoded as JSON".into(),
            fields: Vec::new(),
        })?;
        Ok(OutMessage {
            body: sqs_safe(body),
            attributes: vec![
                ("feed", self.feed.to_string()),
                ("change", change.as_str().to_string()),
                ("idempotency_key", ikey),
            ],
            line,
            key_fp: fps.key,
            record_key: rk,
        })
    }
}

/// The line a tombstone's message carries: it is no line of the file (rows start at 2).
pub const TOMBSTONE_LINE: u64 = 0;

impl Outbox<'_> {
    /// The tombstone of a removed record: `change: "removed"`, its record key (from the
    /// state's table: the raw key values are not stored, so the record key is the removal's
    /// only key value in its idempotency key), no fields, the run's version, and the
    /// idempotency key of the removal from the record's state (`previous`). Carries
    /// [`TOMBSTONE_LINE`] and the record's key fingerprint, so a refused one is told apart
    /// and its record kept.
    pub fn tombstone(
        &self,
        record_key: &str,
        key_fp: u64,
        previous: Previous,
    ) -> Result<OutMessage, Rejected> {
        let change = Change::Removed;
        let ikey = idempotency_key(
            self.feed,
            &[record_key.as_bytes()],
            Some(previous),
            None,
            self.version,
        );
        let none = Record::new();
        let env = EnvelopeRef {
            v: ENVELOPE_VERSION,
            feed: self.feed,
            run: self.run,
            source: self.source,
            change,
            record_key,
            version: self.version,
            idempotency_key: &ikey,
            fields: FieldsRef {
                header: &[],
                record: &none,
            },
            sent_at_ms: Some(self.stamps.sent_at_ms),
            uploaded_at_ms: self.stamps.uploaded_at_ms,
            retry_window_secs: Some(self.stamps.retry_window_secs),
        };
        let body = serde_json::to_string(&env).map_err(|_| Rejected {
            line: TOMBSTONE_LINE,
            reason: "the removal message of a removed record could not be encoded as JSON".into(),
            fields: Vec::new(),
        })?;
        Ok(OutMessage {
            body: sqs_safe(body),
            attributes: vec![
                ("feed", self.feed.to_string()),
                ("change", change.as_str().to_string()),
                ("idempotency_key", ikey),
            ],
            line: TOMBSTONE_LINE,
            key_fp,
            record_key: record_key.to_string(),
        })
    }
}

/// SQS accepts only #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF; serde_json escapes
/// control characters but not the two BMP non-characters.
fn sqs_safe(body: String) -> String {
    if body.contains(['\u{FFFE}', '\u{FFFF}']) {
        body.replace('\u{FFFE}', "\\ufffe")
            .replace('\u{FFFF}', "\\uffff")
    } else {
        body
    }
}

/// Borrowed form used by the splitter to serialize straight from a CSV record.
#[derive(Serialize)]
pub struct EnvelopeRef<'a> {
    /// The envelope format ([`ENVELOPE_VERSION`]).
    pub v: u32,
    /// The feed the row came from.
    pub feed: &'a str,
    /// The run sending it.
    pub run: &'a str,
    /// The export the row was read from.
    pub source: &'a EnvelopeSource,
    /// Whether the record is new, changed or removed.
    pub change: Change,
    /// The record's key as the API sees it ([`record_key`]).
    pub record_key: &'a str,
    /// The record's version after the transition.
    pub version: u64,
    /// The transition's key ([`idempotency_key`]).
    pub idempotency_key: &'a str,
    /// The row's fields by column name.
    pub fields: FieldsRef<'a>,
    /// When the run sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// When the export was uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded_at_ms: Option<i64>,
    /// The feed's retry window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_window_secs: Option<u64>,
}

/// Serializes `header[i] → record[i]` as a JSON object (values are valid UTF-8, checked when
/// the row was read).
pub struct FieldsRef<'a> {
    /// The file's header: the columns' names.
    pub header: &'a [String],
    /// The row, one value per column.
    pub record: &'a Record,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::envelope::{Envelope, ENVELOPE_VERSION};

    const STAMPS: Stamps = Stamps {
        sent_at_ms: 1_700_000_000_500,
        uploaded_at_ms: None,
        retry_window_secs: 120,
    };

    #[test]
    fn envelope_round_trip() {
        let header = vec!["id".to_string(), "name".to_string()];
        let record = Record::from_fields(["1", "Zoë \"Z\", Jr"]);
        let source = EnvelopeSource {
            bucket: "b".into(),
            key: "incoming/f/x.csv".into(),
            etag: "e".into(),
            version_id: None,
        };
        let r = EnvelopeRef {
            v: ENVELOPE_VERSION,
            feed: "f",
            run: "r",
            source: &source,
            change: Change::New,
            record_key: "1",
            version: 3,
            idempotency_key: "abc",
            fields: FieldsRef {
                header: &header,
                record: &record,
            },
            sent_at_ms: Some(1_700_000_000_123),
            uploaded_at_ms: Some(1_700_000_000_000),
            retry_window_secs: Some(60),
        };
        let body = serde_json::to_string(&r).unwrap();
        assert!(body.starts_with("{\"v\":2,\"feed\":\"f\""));
        let e = Envelope::decode(&body).unwrap();
        assert_eq!(e.version, 3);
        assert_eq!(e.sent_at_ms, Some(1_700_000_000_123));
        assert_eq!(e.uploaded_at_ms, Some(1_700_000_000_000));
        assert_eq!(e.retry_window_secs, Some(60));
        assert_eq!(e.fields["name"], "Zoë \"Z\", Jr");
        assert_eq!(e.change, Change::New);
    }

    /// With `trim_keys`, the message of a row whose key value has whitespace around it
    /// carries the bare value's record key and idempotency key (its `fields` are the
    /// file's); without it, both keys differ from the bare value's.
    #[test]
    fn with_trim_keys_the_idempotency_key_ignores_whitespace_around_key_values() {
        use crate::config::FeedConfig;
        use crate::splitter::filter::Fingerprinter;
        let header = vec!["id".to_string(), "name".to_string()];
        let source = EnvelopeSource {
            bucket: "b".into(),
            key: "incoming/f/x.csv".into(),
            etag: "e".into(),
            version_id: None,
        };
        let outbox = Outbox {
            feed: "f",
            run: "r",
            source: &source,
            header: &header,
            version: 1,
            stamps: STAMPS,
        };
        let mut feed = FeedConfig::new("f", &["id"]);
        for trim in [false, true] {
            feed.trim_keys = trim;
            let plan = ColumnPlan::new(&header, &feed, None).unwrap();
            let message = |id: &str| {
                let record = Record::from_fields([id, "Zoë"]);
                let fps = Fingerprinter::default().fingerprints(&plan, &record);
                let m = outbox
                    .message(&plan, &record, 2, fps, Change::New, None)
                    .unwrap();
                Envelope::decode(&m.body).unwrap()
            };
            let (bare, padded) = (message("42"), message(" 42\t"));
            assert_eq!(
                padded.idempotency_key == bare.idempotency_key,
                trim,
                "trim_keys = {trim}"
            );
            assert_eq!(padded.record_key, if trim { "42" } else { " 42\t" });
            assert_eq!(padded.fields["id"], " 42\t", "the fields are the file's");
        }
    }

    #[test]
    fn a_tombstone_carries_the_record_key_and_no_fields() {
        let source = EnvelopeSource {
            bucket: "b".into(),
            key: "incoming/f/x.csv".into(),
            etag: "e".into(),
            version_id: None,
        };
        let outbox = Outbox {
            feed: "f",
            run: "r",
            source: &source,
            header: &[],
            version: 7,
            stamps: STAMPS,
        };
        let prev = Previous {
            content: 1,
            chain: 2,
        };
        let m = outbox.tombstone("CA|7", 99, prev).unwrap();
        let e = Envelope::decode(&m.body).unwrap();
        assert_eq!(
            (e.change, e.record_key.as_str(), e.version, e.fields.len()),
            (Change::Removed, "CA|7", 7, 0)
        );
        assert!(m.body.contains("\"fields\":{}"), "{}", m.body);
        assert_eq!(
            e.idempotency_key,
            idempotency_key("f", &[b"CA|7"], Some(prev), None, 7)
        );
        assert_eq!((m.line, m.key_fp), (TOMBSTONE_LINE, 99));
        assert_eq!(m.attributes[1], ("change", "removed".to_string()));
    }
}
