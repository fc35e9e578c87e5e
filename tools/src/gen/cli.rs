//! `casefeed gen`'s command line: the subcommands, their options and `run`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::baseline::baseline;
use super::errors::GenError;
use super::next::next;

/// Generate synthetic lab-result CSV exports (deterministic, seeded).
#[derive(Args, Debug)]
pub struct GenArgs {
    #[command(subcommand)]
    pub command: GenCommand,
}

#[derive(Subcommand, Debug)]
pub enum GenCommand {
    /// Write a first full export of N rows (record ids LR-00000001 ..).
    Baseline(BaselineOpts),
    /// Write the next export from a previous one: removed, changed and new rows.
    Next(NextOpts),
}

/// Column layout options shared by `baseline` and `next`.
#[derive(Args, Debug, Clone, Default)]
pub struct ColumnOpts {
    /// Write the columns in a different, seeded order (never the unchanged order).
    #[arg(long = "reorder-columns")]
    pub reorder: bool,
    /// Add a column with a value in every row (repeatable).
    #[arg(long = "add-column", value_name = "NAME")]
    pub add: Vec<String>,
    /// Omit a column (repeatable; `record_id` cannot be dropped).
    #[arg(long = "drop-column", value_name = "NAME")]
    pub drop: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BaselineOpts {
    /// Number of data rows.
    #[arg(long, value_name = "N")]
    pub rows: u64,
    /// Seed: the same seed and options give byte-identical output.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Output CSV path (`PATH.expected.json` is written beside it).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Insert this many malformed lines (alternately ragged and invalid UTF-8).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub malformed: u64,
    #[command(flatten)]
    pub columns: ColumnOpts,
}

#[derive(Args, Debug, Clone)]
pub struct NextOpts {
    /// The previous export (CSV, read by header name).
    #[arg(long, value_name = "PATH")]
    pub prev: PathBuf,
    /// Output CSV path (`PATH.expected.json` is written beside it).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Number of new rows to append.
    #[arg(long = "new", value_name = "N", default_value_t = 0)]
    pub new_rows: u64,
    /// Number of existing rows to change in a compared column.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub changed: u64,
    /// Number of existing rows to remove.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub removed: u64,
    /// Seed (default: derived from the previous file's row count, max id and timestamp).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Shuffle the order of the data rows.
    #[arg(long)]
    pub shuffle: bool,
    /// Insert this many malformed lines (alternately ragged and invalid UTF-8), each with its
    /// own fresh record_id; they are not counted as new or changed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub malformed: u64,
    #[command(flatten)]
    pub columns: ColumnOpts,
}

/// Run a `gen` subcommand and print its one-line summary to stderr.
pub fn run(args: GenArgs) -> Result<(), GenError> {
    let (kind, summary) = match args.command {
        GenCommand::Baseline(o) => ("baseline", baseline(&o)?),
        GenCommand::Next(o) => ("next", next(&o)?),
    };
    eprintln!(
        "casefeed gen {kind}: wrote {} data rows (new {}, changed {}, removed {}, malformed lines {}{}), {} columns, seed {} -> {} (+ {}) in {:.2}s",
        summary.rows,
        summary.new,
        summary.changed,
        summary.removed,
        summary.malformed,
        if summary.skipped_prev > 0 {
            format!(", invalid rows skipped from prev {}", summary.skipped_prev)
        } else {
            String::new()
        },
        summary.columns,
        summary.seed,
        summary.out.display(),
        summary.expected.display(),
        summary.elapsed.as_secs_f64(),
    );
    Ok(())
}
