//! The run report: one JSON document per processed file under `runs/<feed>/`.

use super::source::SourceObject;
use serde::{Deserialize, Serialize};

/// A line of a JSON-lines list (`sent/`, `removed/`, `rejects/`) that does not parse as
/// expected. Only where and what kind of error: serde's own message can quote the line's
/// content, which may be a row value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct JsonLinesError {
    /// The 1-based line.
    pub line: usize,
    /// The kind of error and its column.
    pub problem: String,
}

/// Parse a JSON-lines list the splitter writes: one `T` per non-blank line (fields `T` does
/// not name are skipped, never kept).
pub fn parse_json_lines<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<Vec<T>, JsonLinesError> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| {
            serde_json::from_slice(l).map_err(|e| JsonLinesError {
                line: i + 1,
                problem: format!("{:?} error at column {}", e.classify(), e.column()),
            })
        })
        .collect()
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// New/changed rows were sent and the state committed.
    Applied,
    /// First file of the feed: the state was set, nothing sent.
    Baseline,
    /// The state already came from this object: nothing to do.
    Noop,
    /// The object is older than the state's source: ignored.
    Stale,
    /// The whole file was refused; the state did not move.
    Rejected,
    /// A guard stopped the file: nothing sent, the state did not move; the diff waits under
    /// `held/<feed>/` for an operator (`casefeed approve` / `casefeed discard`).
    Held,
    /// An operator discarded a held file.
    Discarded,
    /// The run failed (it will be retried by Lambda or needs an operator).
    Failed,
}

impl RunStatus {
    /// The status as the report, logs and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Applied => "applied",
            RunStatus::Baseline => "baseline",
            RunStatus::Noop => "noop",
            RunStatus::Stale => "stale",
            RunStatus::Rejected => "rejected",
            RunStatus::Held => "held",
            RunStatus::Discarded => "discarded",
            RunStatus::Failed => "failed",
        }
    }
}

/// The rows of one file, by what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Data rows read (accepted or rejected).
    pub read: u64,
    /// Rows whose key the state did not have (for a feed's first file, every distinct key).
    pub new: u64,
    /// Rows whose key the state had, with other content in the compared columns.
    pub changed: u64,
    /// Records of the state whose key the file no longer has (a rejected row keeps its record).
    pub removed: u64,
    /// Rows whose key the state had, with the same content or taken over uncompared
    /// (`rebaselined` and `known` included).
    pub unchanged: u64,
    /// Rows whose key already appeared earlier in the file (the first occurrence counts).
    pub duplicate: u64,
    /// Existing rows taken over without comparison (a compared column was gone).
    #[serde(default)]
    pub rebaselined: u64,
    /// Unchanged rows recognised by their raw line alone (the previous file had the same
    /// bytes): neither split nor fingerprinted.
    #[serde(default)]
    pub known: u64,
    /// Rows refused (unparseable, invalid, or refused by SQS), listed in the rejects report.
    pub rejected: u64,
    /// Messages accepted by SQS (tombstones of removed records included).
    pub sent: u64,
    /// Removed records that cannot be named: the state they were in was written before
    /// states kept record keys (snapshot format 1 or 2). Counted in `removed`, left out of
    /// the removed list, and never sent as tombstones.
    #[serde(default)]
    pub removed_unnamed: u64,
    /// Sent messages left out of the sent list (over [`MAX_SENT_LISTED`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sent_unlisted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The file's columns, and how they compare with those the state hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaReport {
    /// The file's header, in file order.
    pub columns: Vec<String>,
    /// The columns the next state's content fingerprints cover (neither key nor ignored),
    /// sorted.
    pub hashed_columns: Vec<String>,
    /// Columns the state did not hash that the file has: they enter the fingerprints from this
    /// file on and never make a row changed.
    pub added: Vec<String>,
    /// Columns the state hashed that the file no longer has (the schema guard).
    pub removed: Vec<String>,
}

/// How long a run's phases took, in ms (a phase several attempts ran: their sum).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading and decoding the feed's state.
    pub read_state_ms: u64,
    /// The diff pass (or passes) and sending.
    pub diff_and_send_ms: u64,
    /// Writing the next state.
    pub commit_ms: u64,
    /// The whole run, up to writing its report.
    pub total_ms: u64,
}

/// Where a held file waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRef {
    /// The held id: 16 lowercase hex digits.
    pub id: String,
    /// The manifest's key: `held/<feed>/<id>.json`.
    pub manifest_key: String,
    /// The held copy's key: `held/<feed>/<id>.source`.
    pub copy_key: String,
}

/// The report of one run: `runs/<feed>/<run>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The report format (1).
    pub v: u32,
    /// The feed.
    pub feed: String,
    /// The run's id (also the report's file name).
    pub run: String,
    /// How the run ended.
    pub status: RunStatus,
    /// Why the run ended so, in words (counts and column names only); `None` for an applied
    /// file or a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The object the run read (for an approval or a discard: the held file as uploaded).
    pub source: SourceObject,
    /// The snapshot's source before this run, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SourceObject>,
    /// The file's rows, by class.
    pub counts: Counts,
    /// The file's columns.
    #[serde(default)]
    pub schema: SchemaReport,
    /// Every guard's verdict on this file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardCheck>,
    /// Where the file waits, when it was held; `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldRef>,
    /// For a run that applied a held file: the held id an operator approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_held: Option<String>,
    /// The rejects report's key (`rejects/<feed>/<run>.jsonl`); `None` when no row was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejects_key: Option<String>,
    /// The removed list's key (`removed/<feed>/<run>.jsonl`, one [`RemovedRecord`] a line),
    /// written by a run that commits a file without some of the state's records; `None`
    /// when it removed none. `counts.removed_unnamed` of them are not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_key: Option<String>,
    /// The sent list's key (`sent/<feed>/<run>.jsonl`, one [`SentRecord`] a line): every
    /// message of the run SQS accepted; `None` when it sent none. `counts.sent_unlisted` of
    /// them are not listed (over [`MAX_SENT_LISTED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_key: Option<String>,
    /// The ETag of the state this run committed; `None` when the state did not move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_etag: Option<String>,
    /// `SendMessageBatch` calls made (by every attempt).
    pub send_calls: u64,
    /// Attempts of the run, each from a freshly read state: more than 1 after a lost commit
    /// race.
    pub commit_attempts: u32,
    /// When the run started (RFC 3339, ms).
    pub started_at: String,
    /// When the run finished (RFC 3339, ms).
    pub finished_at: String,
    /// How long its phases took.
    pub timings: Timings,
}

/// One line of the removed list (`removed/<feed>/<run>.jsonl`): a record the state had and
/// the run's file no longer has. Keys only, never fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRecord {
    /// The record's key, as its messages carried it (`record_key`).
    pub record_key: String,
    /// The version of the run that removed it (the generation its state commit gives).
    pub version: u64,
}

/// The most messages a run lists in its sent list (~100 bytes each in memory): a feed that
/// sends a whole multi-million-row baseline lists its first ones and counts the rest.
pub const MAX_SENT_LISTED: usize = 1_000_000;

/// One line of the sent list (`sent/<feed>/<run>.jsonl`): a message of the run that SQS
/// accepted. Keys only, never fields: what `casefeed reconcile` accounts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    /// The record's key.
    pub record_key: String,
    /// The transition's idempotency key.
    pub idempotency_key: String,
    /// `new`, `changed` or `removed`.
    pub change: String,
}

/// A guard that can hold a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// Too many new and changed rows, in number or as a share of the state.
    Flood,
    /// Too many of the state's records missing from the file: a truncated upload.
    Shrink,
    /// A column the state's fingerprints cover is gone from the file.
    Schema,
}

impl GuardKind {
    /// The guard's name in reports and reasons: `flood`, `shrink` or `schema`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardKind::Flood => "flood",
            GuardKind::Shrink => "shrink",
            GuardKind::Schema => "schema",
        }
    }
}

/// One guard's verdict, as the run report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardCheck {
    /// Which guard.
    pub guard: GuardKind,
    /// Whether it stopped the file.
    pub tripped: bool,
    /// What was measured against which limit (counts and column names only).
    pub detail: String,
}

#[cfg(test)]
mod json_lines_tests {
    use super::*;

    #[test]
    fn json_lines_parse_by_line_and_errors_never_quote_the_line() {
        let ok: Vec<RemovedRecord> =
            parse_json_lines(b"{\"record_key\":\"A\",\"version\":1}\n\n{\"record_key\":\"B\",\"version\":2,\"x\":1}\n")
                .unwrap();
        assert_eq!(
            ok.iter().map(|r| r.record_key.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
        let bad = parse_json_lines::<RemovedRecord>(
            b"{\"record_key\":\"A\",\"version\":1}\n{\"record_key\":\"B\",\"version\":\"Jane Secret\"}\n",
        )
        .unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(!bad.to_string().contains("Jane"), "{bad}");
        assert_eq!(
            parse_json_lines::<RemovedRecord>(b"\xff\n")
                .unwrap_err()
                .line,
            1
        );
    }
}
