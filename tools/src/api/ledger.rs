//! The API's memory: the Idempotency-Keys it applied and, per (feed, record_key), the record
//! it holds (current fields, current version, every version it acknowledged), backed by an
//! append-only JSON-lines file (one line per first-time apply, plus a `reset` line per
//! `POST /reset`) from which a restarted server rebuilds both.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::handlers::{CaseBody, CaseSource, Change};

/// One record as `GET /records` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub feed: String,
    pub record_key: String,
    /// The version of the last applied write: the API refuses any version at or below it.
    pub version: u64,
    /// Every version the API acknowledged for this record, in the order it applied them
    /// (every applied write appends its version).
    pub versions: Vec<u64>,
    /// The last applied write was a `removed`.
    pub removed: bool,
    /// The record's current fields; `None` after a `removed`. A record restored from a
    /// ledger line written before fields were kept has `{}`.
    pub fields: Option<BTreeMap<String, String>>,
    /// The export the last applied write came from, when the client said.
    pub source: Option<CaseSource>,
}

/// What the check-and-apply decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Recorded now (a new key, a version above the record's).
    Applied,
    /// The key was applied before: nothing happens again.
    Duplicate,
    /// A new key whose version is at or below the record's current version: refused.
    Stale { current_version: u64 },
}

/// A line as written: a first-time apply.
#[derive(Serialize)]
struct AppliedLine<'a> {
    idempotency_key: &'a str,
    feed: &'a str,
    record_key: &'a str,
    change: Change,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a CaseSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a BTreeMap<String, String>>,
    at: String,
}

/// A `POST /reset`: the records before it are forgotten (the keys stay applied).
#[derive(Serialize)]
struct ResetLine {
    reset: bool,
    at: String,
}

/// A line as read: either kind, and lines of older servers (no version, source or fields).
#[derive(Deserialize)]
struct ReadLine {
    #[serde(default)]
    reset: bool,
    idempotency_key: Option<String>,
    #[serde(default)]
    feed: String,
    #[serde(default)]
    record_key: String,
    change: Option<Change>,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    source: Option<CaseSource>,
    #[serde(default)]
    fields: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default)]
struct RecordState {
    version: u64,
    versions: Vec<u64>,
    fields: Option<BTreeMap<String, String>>,
    source: Option<CaseSource>,
}

/// feed → record_key → state: iterates sorted by feed, then record key.
type Records = BTreeMap<String, BTreeMap<String, RecordState>>;

pub(super) struct Ledger {
    file: Option<File>,
    applied: HashSet<String>,
    pub(super) order: Vec<String>,
    records: Records,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Ledger {
    pub(super) fn open(path: Option<&Path>) -> Result<Ledger, std::io::Error> {
        let mut ledger = Ledger {
            file: None,
            applied: HashSet::new(),
            order: Vec::new(),
            records: Records::new(),
        };
        let Some(path) = path else {
            return Ok(ledger);
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            // A torn last line (a crash mid-write) is skipped: that effect was never answered.
            if let Ok(l) = serde_json::from_str::<ReadLine>(line.trim_end()) {
                ledger.replay(l);
            }
            line.clear();
        }
        drop(reader);
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        ledger.file = Some(file);
        Ok(ledger)
    }

    /// One line read back at start: the same effect as when it was written.
    fn replay(&mut self, l: ReadLine) {
        if l.reset {
            self.records.clear();
            return;
        }
        let Some(key) = l.idempotency_key else {
            return;
        };
        if !self.applied.insert(key.clone()) {
            return;
        }
        self.order.push(key);
        if l.feed.is_empty() || l.record_key.is_empty() {
            return;
        }
        let change = l.change.unwrap_or(Change::New);
        let fields = match change {
            Change::Removed => None,
            // a line of an older server kept no fields
            Change::New | Change::Changed => Some(l.fields.unwrap_or_default()),
        };
        let state = self
            .records
            .entry(l.feed)
            .or_default()
            .entry(l.record_key)
            .or_default();
        state.version = state.version.max(l.version);
        state.versions.push(l.version);
        state.fields = fields;
        state.source = l.source;
    }

    /// The check-and-apply, under the caller's one lock: a key applied before is a
    /// duplicate; a new key at or below the record's current version is stale; otherwise the
    /// write is appended to the file (when there is one) and then applied in memory. A file
    /// error applies nothing.
    pub(super) fn apply(&mut self, key: &str, case: &CaseBody) -> Result<Outcome, std::io::Error> {
        if self.applied.contains(key) {
            return Ok(Outcome::Duplicate);
        }
        let current = self
            .records
            .get(&case.feed)
            .and_then(|records| records.get(&case.record_key))
            .map(|r| r.version);
        if let Some(current_version) = current.filter(|&v| case.version <= v) {
            return Ok(Outcome::Stale { current_version });
        }
        let fields = match case.change {
            Change::Removed => None,
            Change::New | Change::Changed => Some(case.fields.clone().unwrap_or_default()),
        };
        if let Some(file) = self.file.as_mut() {
            let entry = AppliedLine {
                idempotency_key: key,
                feed: &case.feed,
                record_key: &case.record_key,
                change: case.change,
                version: case.version,
                source: case.source.as_ref(),
                fields: fields.as_ref(),
                at: now_rfc3339(),
            };
            write_line(file, &entry)?;
        }
        self.applied.insert(key.to_owned());
        self.order.push(key.to_owned());
        let state = self
            .records
            .entry(case.feed.clone())
            .or_default()
            .entry(case.record_key.clone())
            .or_default();
        state.version = case.version;
        state.versions.push(case.version);
        state.fields = fields;
        state.source = case.source.clone();
        Ok(Outcome::Applied)
    }

    /// Forgets every record (the applied keys stay: a replayed key is still a duplicate); a
    /// `reset` line in the file makes a restart agree.
    pub(super) fn clear_records(&mut self) -> Result<(), std::io::Error> {
        if let Some(file) = self.file.as_mut() {
            write_line(
                file,
                &ResetLine {
                    reset: true,
                    at: now_rfc3339(),
                },
            )?;
        }
        self.records.clear();
        Ok(())
    }

    /// Every record, sorted by feed and record key.
    pub(super) fn records(&self) -> Vec<Record> {
        self.records
            .iter()
            .flat_map(|(feed, records)| {
                records.iter().map(move |(record_key, r)| Record {
                    feed: feed.clone(),
                    record_key: record_key.clone(),
                    version: r.version,
                    versions: r.versions.clone(),
                    removed: r.fields.is_none(),
                    fields: r.fields.clone(),
                    source: r.source.clone(),
                })
            })
            .collect()
    }
}

fn write_line(file: &mut File, entry: &impl Serialize) -> Result<(), std::io::Error> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.flush()
}
