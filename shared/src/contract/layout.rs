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

/// The consumer's ledger record of one idempotency key: `ledger/<feed>/<key>`.
pub fn ledger_key(feed: &str, idempotency_key: &str) -> String {
    format!("ledger/{feed}/{idempotency_key}")
}

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
            ledger_key("f", "k"),
        ] {
            assert!(!k.starts_with(INCOMING_PREFIX), "{k}");
        }
        assert!(held_manifest_key("f", "x").starts_with(&held_prefix(Some("f"))));
        assert!(held_copy_key("f", "x").starts_with(&held_prefix(Some("f"))));
        assert!(held_prefix(Some("f")).starts_with(&held_prefix(None)));
    }
}
