//! Where everything lives in the data bucket: every S3 key and prefix casefeed reads or
//! writes. Only `incoming/` triggers the splitter; nothing casefeed writes is under it.

/// Uploads: `incoming/<feed>/…`, the only prefix that triggers the splitter.
pub const INCOMING_PREFIX: &str = "incoming/";

/// The feed's state: `state/<feed>/snapshot`, replaced only by a conditional write.
pub fn snapshot_key(feed: &str) -> String {
    format!("state/{feed}/snapshot")
}

/// The report of one run: `runs/<feed>/<run>.json`.
pub fn run_report_key(feed: &str, run: &str) -> String {
    format!("runs/{feed}/{run}.json")
}

/// The rows one run refused, with line and reason: `rejects/<feed>/<run>.jsonl`.
pub fn rejects_key(feed: &str, run: &str) -> String {
    format!("rejects/{feed}/{run}.jsonl")
}

/// The records one committed run's file no longer had, by record key and version:
/// `removed/<feed>/<run>.jsonl`.
pub fn removed_key(feed: &str, run: &str) -> String {
    format!("removed/{feed}/{run}.jsonl")
}

/// The messages one run sent, by record and idempotency key: `sent/<feed>/<run>.jsonl`.
pub fn sent_key(feed: &str, run: &str) -> String {
    format!("sent/{feed}/{run}.jsonl")
}

/// Held files of one feed (`Some`) or of every feed: `held/<feed>/` or `held/`.
pub fn held_prefix(feed: Option<&str>) -> String {
    match feed {
        Some(f) => format!("held/{f}/"),
        None => "held/".to_string(),
    }
}

/// A held file's manifest: `held/<feed>/<id>.json`.
pub fn held_manifest_key(feed: &str, id: &str) -> String {
    format!("held/{feed}/{id}.json")
}

/// A held file's copy of the exact object version that was held: `held/<feed>/<id>.source`.
pub fn held_copy_key(feed: &str, id: &str) -> String {
    format!("held/{feed}/{id}.source")
}

/// The longest record key a ledger item's partition key spells out; a longer one is hashed
/// (DynamoDB allows 2,048 bytes).
const MAX_SPELLED_RECORD_KEY: usize = 1024;

/// The ledger table's item of one record (partition key `pk`): `rec#<feed>#<record key>`,
/// or `rec#<feed>#sha256:<hex>` for a record key over 1,024 bytes.
pub fn ledger_record_pk(feed: &str, record_key: &str) -> String {
    if record_key.len() <= MAX_SPELLED_RECORD_KEY {
        format!("rec#{feed}#{record_key}")
    } else {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(record_key.as_bytes());
        format!("rec#{feed}#sha256:{}", hex::encode(d))
    }
}

/// The ledger table's item of one idempotency key's fate: `key#<feed>#<idempotency key>`.
pub fn ledger_fate_pk(feed: &str, idempotency_key: &str) -> String {
    format!("key#{feed}#{idempotency_key}")
}

/// The ledger table's one item of the fleet-wide API gate (rate schedule and breaker):
/// no feed or record key starts with `gate#`.
pub const GATE_PK: &str = "gate#api";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_casefeed_writes_is_under_incoming() {
        for k in [
            snapshot_key("f"),
            run_report_key("f", "r"),
            rejects_key("f", "r"),
            removed_key("f", "r"),
            held_prefix(None),
            held_prefix(Some("f")),
            held_manifest_key("f", "0123456789abcdef"),
            held_copy_key("f", "0123456789abcdef"),
        ] {
            assert!(!k.starts_with(INCOMING_PREFIX), "{k}");
        }
        assert!(held_manifest_key("f", "x").starts_with(&held_prefix(Some("f"))));
        assert!(held_copy_key("f", "x").starts_with(&held_prefix(Some("f"))));
        assert!(held_prefix(Some("f")).starts_with(&held_prefix(None)));
    }

    #[test]
    fn ledger_items_of_records_and_keys_never_collide_and_long_keys_are_hashed() {
        assert_eq!(ledger_record_pk("f", "42"), "rec#f#42");
        assert_eq!(ledger_fate_pk("f", "abc"), "key#f#abc");
        assert_ne!(ledger_record_pk("f", "x"), ledger_fate_pk("f", "x"));
        let long = "k".repeat(5000);
        let pk = ledger_record_pk("f", &long);
        assert!(pk.starts_with("rec#f#sha256:") && pk.len() < 100, "{pk}");
        assert_ne!(pk, ledger_record_pk("f", &"k".repeat(4999)));
    }
}
