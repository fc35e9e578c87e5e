//! The generator's expected answers for a pair (`PATH.expected.json`).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::gen;

use super::errors::{failed, io_ctx, BenchError};

#[derive(Debug, Deserialize)]
struct ExpectedFile {
    rows: u64,
    new: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
    #[serde(default)]
    malformed_lines: Vec<u64>,
}

/// What a correct diff of the pair finds.
#[derive(Debug)]
pub struct Expected {
    pub rows: u64,
    pub new: HashSet<String>,
    pub changed: HashSet<String>,
    pub removed: HashSet<String>,
    pub malformed: u64,
}

impl Expected {
    pub(super) fn load(csv: &Path) -> Result<Expected, BenchError> {
        let path = gen::expected_path(csv);
        let text = std::fs::read_to_string(&path).map_err(io_ctx(format!(
            "reading the generator's answers {}",
            path.display()
        )))?;
        let e: ExpectedFile = serde_json::from_str(&text).map_err(|e| {
            failed(format!(
                "{}: not a generator answer file: {e}",
                path.display()
            ))
        })?;
        Ok(Expected {
            rows: e.rows,
            new: e.new.into_iter().collect(),
            changed: e.changed.into_iter().collect(),
            removed: e.removed.into_iter().collect(),
            malformed: e.malformed_lines.len() as u64,
        })
    }

    pub(super) fn sent(&self) -> HashSet<String> {
        self.new.union(&self.changed).cloned().collect()
    }
}
