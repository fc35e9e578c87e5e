//! The append-only ledger of applied effects (one JSON line per first-time apply).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::handlers::{CaseBody, Change};

#[derive(Serialize)]
struct LedgerLine<'a> {
    idempotency_key: &'a str,
    feed: &'a str,
    record_key: &'a str,
    change: Change,
    at: String,
}

#[derive(Deserialize)]
struct LedgerKey {
    idempotency_key: String,
}

pub(super) struct Ledger {
    file: Option<File>,
    applied: HashSet<String>,
    pub(super) order: Vec<String>,
}

impl Ledger {
    pub(super) fn open(path: Option<&Path>) -> Result<Ledger, std::io::Error> {
        let mut ledger = Ledger {
            file: None,
            applied: HashSet::new(),
            order: Vec::new(),
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
            if let Ok(k) = serde_json::from_str::<LedgerKey>(line.trim_end()) {
                if ledger.applied.insert(k.idempotency_key.clone()) {
                    ledger.order.push(k.idempotency_key);
                }
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

    /// Records `key` unless already applied. `Ok(true)`: recorded now; `Ok(false)`: a replay.
    pub(super) fn apply(&mut self, key: &str, case: &CaseBody) -> Result<bool, std::io::Error> {
        if self.applied.contains(key) {
            return Ok(false);
        }
        if let Some(file) = self.file.as_mut() {
            let entry = LedgerLine {
                idempotency_key: key,
                feed: &case.feed,
                record_key: &case.record_key,
                change: case.change,
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            };
            let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            line.push(b'\n');
            file.write_all(&line)?;
            file.flush()?;
        }
        self.applied.insert(key.to_owned());
        self.order.push(key.to_owned());
        Ok(true)
    }
}
