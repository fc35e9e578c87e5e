//! `casefeed bench`'s command line: the measurements (`Tool`), `BenchArgs` and `ChildArgs`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    /// Read the next file and xxh3 every line: the fastest anything can touch every byte.
    Floor,
    /// The real splitter (file-backed store, null queue).
    Casefeed,
    /// The csv-diff crate (CsvByteDiffLocal), keyed on record_id.
    CsvDiff,
    /// The real splitter against moto S3 (download + diff).
    CasefeedS3,
    /// The real splitter with known lines off: every row split and fingerprinted.
    CasefeedFull,
    /// The real splitter on a pair whose next file has a fresh export_timestamp in every row
    /// (a column the feed ignores).
    CasefeedTs,
}

impl Tool {
    pub(super) fn label(self) -> &'static str {
        match self {
            Tool::Floor => "floor (read + xxh3 per line)",
            Tool::Casefeed => "casefeed (Splitter::process, files)",
            Tool::CsvDiff => "csv-diff 0.1 (CsvByteDiffLocal)",
            Tool::CasefeedS3 => "casefeed via S3 (moto)",
            Tool::CasefeedFull => "casefeed, known lines off (every row parsed)",
            Tool::CasefeedTs => "casefeed, fresh export_timestamp in every row (ignored)",
        }
    }
}

/// Measure the diff: floor vs casefeed vs csv-diff (and casefeed via moto S3).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Row counts of the previous file (k/m suffixes), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "500k,5m", value_parser = parse_rows)]
    pub sizes: Vec<u64>,
    /// Timed runs per measurement (median reported); default 5 up to 1M rows, 3 above.
    #[arg(long)]
    pub runs: Option<usize>,
    /// New rows in the next file.
    #[arg(long = "new", default_value_t = 2000)]
    pub new_rows: u64,
    /// Changed rows in the next file.
    #[arg(long, default_value_t = 1000)]
    pub changed: u64,
    /// Removed rows in the next file.
    #[arg(long, default_value_t = 300)]
    pub removed: u64,
    /// Generator seed of the previous file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for the generated files (git-ignored); default `<repo>/bench-data`.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Measurements to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "floor,casefeed,casefeed-full,casefeed-ts,csv-diff,casefeed-s3"
    )]
    pub tools: Vec<Tool>,
    /// Sizes at which the moto S3 variant runs (`none` for none); moto is slow with GBs.
    #[arg(long = "s3-sizes", value_delimiter = ',', default_value = "500k", value_parser = parse_rows_or_none)]
    pub s3_sizes: Vec<u64>,
    /// The CPU one-core runs are pinned to.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A child run taking longer than this many seconds is killed and fails the bench.
    #[arg(long, default_value_t = 900)]
    pub child_timeout: u64,
}

/// One measurement in a child process (internal: `casefeed bench` starts these).
#[derive(Args, Debug, Clone)]
pub struct ChildArgs {
    #[arg(long)]
    pub tool: Tool,
    /// Pin this process to one CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    #[arg(long)]
    pub prev: PathBuf,
    #[arg(long)]
    pub next: PathBuf,
    /// A scratch folder for this run (file store), removed afterwards.
    #[arg(long)]
    pub work: PathBuf,
    /// The baseline snapshot file (casefeed).
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// moto endpoint (casefeed-s3).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// ETag of the next object in moto (casefeed-s3).
    #[arg(long)]
    pub etag: Option<String>,
    /// Ranged GETs in flight for the S3 read (casefeed-s3; 1 = one stream).
    #[arg(long, default_value_t = 1)]
    pub s3_read_concurrency: usize,
    /// Untimed set-up instead of a measurement: the baseline run that builds the snapshot
    /// every timed run starts from (casefeed: into `--work`; casefeed-s3: upload both files
    /// to moto first).
    #[arg(long)]
    pub baseline: bool,
}

pub(super) fn parse_rows(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase().replace('_', "");
    let (num, mult) = if let Some(n) = t.strip_suffix('k') {
        (n, 1_000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 1_000_000)
    } else {
        (t.as_str(), 1)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a row count (e.g. 500k, 5m, 20000)"))?;
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("`{s}`: the row count must be 1 or more")),
        Some(v) => Ok(v),
    }
}

pub(super) fn parse_rows_or_none(s: &str) -> Result<u64, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(0)
    } else {
        parse_rows(s)
    }
}
