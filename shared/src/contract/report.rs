//! The run report: one JSON document per processed file under `runs/<feed>/`.

use super::source::SourceObject;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Data rows read (accepted or rejected).
    pub read: u64,
    pub new: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
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
    /// Messages accepted by SQS.
    pub sent: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaReport {
    pub columns: Vec<String>,
    pub hashed_columns: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    pub read_state_ms: u64,
    pub diff_and_send_ms: u64,
    pub commit_ms: u64,
    pub total_ms: u64,
}

/// Where a held file waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRef {
    pub id: String,
    pub manifest_key: String,
    pub copy_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub v: u32,
    pub feed: String,
    pub run: String,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub source: SourceObject,
    /// The snapshot's source before this run, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SourceObject>,
    pub counts: Counts,
    #[serde(default)]
    pub schema: SchemaReport,
    /// Every guard's verdict on this file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldRef>,
    /// For a run that applied a held file: the held id an operator approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_held: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejects_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_etag: Option<String>,
    pub send_calls: u64,
    pub commit_attempts: u32,
    pub started_at: String,
    pub finished_at: String,
    pub timings: Timings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    Flood,
    Shrink,
    Schema,
}

impl GuardKind {
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
    pub guard: GuardKind,
    pub tripped: bool,
    /// What was measured against which limit (counts and column names only).
    pub detail: String,
}
