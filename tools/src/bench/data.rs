//! The benchmark data: generating or reusing a previous/next pair per size.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gen::{self, BaselineOpts, ColumnOpts, NextOpts, TS_COLUMN};

use super::cli::BenchArgs;
use super::errors::{failed, io_ctx, BenchError};
use super::expected::Expected;
use super::FLOOR_BUF;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct DataParams {
    rows: u64,
    seed: u64,
    new: u64,
    changed: u64,
    removed: u64,
    shuffled: bool,
    dropped_columns: Vec<String>,
}

pub(super) struct Pair {
    pub(super) dir: PathBuf,
    pub(super) prev: PathBuf,
    pub(super) next: PathBuf,
    pub(super) next_bytes: u64,
    pub(super) prev_bytes: u64,
    pub(super) expected: Expected,
}

/// Generate the pair for one size, or reuse it when the same parameters made it before.
impl Pair {
    /// The child's arguments naming this pair's files and its work folder.
    pub(super) fn child_args(&self) -> Vec<String> {
        vec![
            "--prev".to_string(),
            self.prev.display().to_string(),
            "--next".to_string(),
            self.next.display().to_string(),
            "--work".to_string(),
            self.dir.join("work-run").display().to_string(),
        ]
    }
}

/// `timestamps`: keep the export_timestamp column (fresh in every row of `next`).
pub(super) fn ensure_pair(
    root: &Path,
    args: &BenchArgs,
    rows: u64,
    timestamps: bool,
) -> Result<Pair, BenchError> {
    let params = DataParams {
        rows,
        seed: args.seed,
        new: args.new_rows,
        changed: args.changed,
        removed: args.removed,
        shuffled: true,
        dropped_columns: if timestamps {
            Vec::new()
        } else {
            vec![TS_COLUMN.into()]
        },
    };
    let dir = root.join(format!(
        "rows{}-seed{}-new{}-changed{}-removed{}{}",
        rows,
        args.seed,
        args.new_rows,
        args.changed,
        args.removed,
        if timestamps { "-ts" } else { "" }
    ));
    let prev = dir.join("prev.csv");
    let next = dir.join("next.csv");
    let stamp = dir.join("params.json");
    let reusable = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| serde_json::from_str::<DataParams>(&t).ok())
        .is_some_and(|p| p == params)
        && [&prev, &next].iter().all(|p| p.exists())
        && [&prev, &next]
            .iter()
            .all(|p| gen::expected_path(p).exists());
    if reusable {
        eprintln!("bench: reusing {}", dir.display());
    } else {
        let _ = std::fs::remove_file(&stamp);
        std::fs::create_dir_all(&dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
        let columns = ColumnOpts {
            drop: params.dropped_columns.clone(),
            ..ColumnOpts::default()
        };
        // a fresh export_timestamp in every row of `next` would make every row differ for a
        // tool that compares all columns (csv-diff): the baseline is generated without it
        eprintln!("bench: generating {} rows into {}", rows, dir.display());
        gen::baseline(&BaselineOpts {
            rows,
            seed: args.seed,
            out: prev.clone(),
            malformed: 0,
            columns,
        })?;
        gen::next(&NextOpts {
            prev: prev.clone(),
            out: next.clone(),
            new_rows: args.new_rows,
            changed: args.changed,
            removed: args.removed,
            seed: None,
            shuffle: true,
            malformed: 0,
            // `next` keeps the previous file's columns: export_timestamp is already gone
            columns: ColumnOpts::default(),
        })?;
        let text = serde_json::to_string_pretty(&params)
            .map_err(|e| failed(format!("encoding params: {e}")))?;
        std::fs::write(&stamp, text).map_err(io_ctx(format!("writing {}", stamp.display())))?;
    }
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(io_ctx(format!("reading {}", p.display())))
    };
    Ok(Pair {
        next_bytes: size(&next)?,
        prev_bytes: size(&prev)?,
        expected: Expected::load(&next)?,
        dir,
        prev,
        next,
    })
}

/// Read a file once so every measurement starts with it in the page cache.
pub(super) fn warm(path: &Path) -> Result<(), BenchError> {
    let mut f = File::open(path).map_err(io_ctx(format!("opening {}", path.display())))?;
    let mut buf = vec![0u8; FLOOR_BUF];
    while f
        .read(&mut buf)
        .map_err(io_ctx(format!("reading {}", path.display())))?
        > 0
    {}
    Ok(())
}
