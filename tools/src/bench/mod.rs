//! `casefeed bench`: the diff benchmark.
//!
//! Generates (or reuses) a previous/next export pair per size with the project's generator,
//! then measures, each run in a child process of its own (so peak RSS is that run's alone):
//!
//! * `floor`    — read the next file and hash every line (xxh3, large buffered reads);
//! * `casefeed` — the real [`Splitter::process`] of the next file against the previous file's
//!   snapshot, on a file-backed [`ObjectStore`] and a null [`MessageQueue`];
//! * `csv-diff` — the `csv-diff` crate (`CsvByteDiffLocal`, the engine behind `qsv diff`),
//!   keyed on `record_id`, with its default rayon pool;
//! * `casefeed-s3` — `Splitter::process` with the production [`S3Store`] against moto.
//!
//! floor, casefeed and csv-diff run pinned to one CPU and unpinned (all cores). Every answer
//! is checked against the generator's `expected.json`; a wrong answer fails the bench.

use crate::gen::{self, BaselineOpts, ColumnOpts, NextOpts, TS_COLUMN};
use crate::local::{self, LocalError, Moto};

use casefeed::config::{Config, FeedConfig};
use casefeed::event::ObjectEvent;
use casefeed::queue::{EntryFailure, MessageQueue, OutMessage, QueueError};
use casefeed::report::{snapshot_key, RunReport, RunStatus};
use casefeed::s3::S3Store;
use casefeed::splitter::{Outcome, Splitter, SplitterSettings};
use casefeed::store::{
    Fetched, ObjectMeta, ObjectStore, OpenObject, OpenSpec, PutCondition, StoreError,
};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The feed every benchmark run uses.
const FEED: &str = "lab_results";
const KEY_COLUMN: &str = "record_id";
const BUCKET: &str = "bench";
const PREV_KEY: &str = "incoming/lab_results/prev.csv";
const NEXT_KEY: &str = "incoming/lab_results/next.csv";
/// Where the S3 variant keeps the baseline snapshot that every timed run starts from.
const S3_BASE_SNAPSHOT: &str = "bench-baseline/snapshot";
/// The line a child prints its measurement on.
const RESULT_MARK: &str = "CASEFEED-BENCH-RESULT ";
/// The floor's read size.
const FLOOR_BUF: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

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
    fn label(self) -> &'static str {
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

fn parse_rows(s: &str) -> Result<u64, String> {
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

fn parse_rows_or_none(s: &str) -> Result<u64, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(0)
    } else {
        parse_rows(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("generating the benchmark data: {0}")]
    Gen(#[from] gen::GenError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("wrong answer: {0}")]
    Check(String),
    #[error("{0}")]
    Failed(String),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

fn failed(msg: impl Into<String>) -> BenchError {
    BenchError::Failed(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------------

/// Median of the samples (mean of the middle two for an even count); `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Compare a tool's key set with the expected one; the error names counts and a few keys.
pub fn check_keys(what: &str, got: &HashSet<String>, want: &HashSet<String>) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let missing: BTreeSet<&String> = want.difference(got).collect();
    let extra: BTreeSet<&String> = got.difference(want).collect();
    let sample = |s: &BTreeSet<&String>| {
        s.iter()
            .take(3)
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{what}: {} keys, {} expected; {} missing (e.g. {}), {} unexpected (e.g. {})",
        got.len(),
        want.len(),
        missing.len(),
        sample(&missing),
        extra.len(),
        sample(&extra)
    ))
}

/// One line of a results table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub tool: String,
    pub cores: String,
    pub wall_s: f64,
    pub rows_per_s: f64,
    pub mb_per_s: f64,
    pub rss_mb: f64,
    /// tool time / floor time (same cores)
    pub vs_floor: Option<f64>,
    /// csv-diff time / tool time (same cores)
    pub speedup_vs_csv_diff: Option<f64>,
}

fn ratio(x: Option<f64>) -> String {
    x.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "–".into())
}

/// `1234567.8` -> `1,234,568`
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A markdown table of the rows.
pub fn render_table(rows: &[TableRow]) -> String {
    let mut s = String::from(
        "| tool | cores | median wall s | rows/s | MB/s | peak RSS MB | × floor | speed-up vs csv-diff |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {} | {:.0} | {:.0} | {} | {} |",
            r.tool,
            r.cores,
            r.wall_s,
            thousands(r.rows_per_s),
            r.mb_per_s,
            r.rss_mb,
            ratio(r.vs_floor),
            ratio(r.speedup_vs_csv_diff),
        );
    }
    s
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn human_rows(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Expected answers
// ---------------------------------------------------------------------------------------------

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
    fn load(csv: &Path) -> Result<Expected, BenchError> {
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

    fn sent(&self) -> HashSet<String> {
        self.new.union(&self.changed).cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

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

struct Pair {
    dir: PathBuf,
    prev: PathBuf,
    next: PathBuf,
    next_bytes: u64,
    prev_bytes: u64,
    expected: Expected,
}

/// Generate the pair for one size, or reuse it when the same parameters made it before.
impl Pair {
    /// The child's arguments naming this pair's files and its work folder.
    fn child_args(&self) -> Vec<String> {
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
fn ensure_pair(
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
fn warm(path: &Path) -> Result<(), BenchError> {
    let mut f = File::open(path).map_err(io_ctx(format!("opening {}", path.display())))?;
    let mut buf = vec![0u8; FLOOR_BUF];
    while f
        .read(&mut buf)
        .map_err(io_ctx(format!("reading {}", path.display())))?
        > 0
    {}
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A file-backed object store and a null queue
// ---------------------------------------------------------------------------------------------

/// Objects are files under `root/<bucket>/<key>`; ETags come from inode, size and mtime;
/// writes go to a temporary file renamed into place (so a hard-linked original is never
/// modified).
#[derive(Clone)]
pub struct FileStore {
    root: Arc<PathBuf>,
}

fn store_io(op: &'static str, bucket: &str, key: &str, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::NotFound {
            bucket: bucket.into(),
            key: key.into(),
        }
    } else {
        StoreError::Service {
            op,
            message: format!("{bucket}/{key}: {e}"),
        }
    }
}

fn etag_of(m: &std::fs::Metadata) -> String {
    format!(
        "\"{:x}-{:x}-{:x}.{:x}\"",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    )
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore {
            root: Arc::new(root.into()),
        }
    }

    pub fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        let ok =
            |s: &str| !s.is_empty() && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok(bucket) || bucket.contains('/') || !ok(key) {
            return Err(StoreError::Service {
                op: "path",
                message: format!("unsupported bucket/key `{bucket}/{key}`"),
            });
        }
        Ok(self.root.join(bucket).join(key))
    }

    async fn current_etag(&self, path: &Path) -> Option<String> {
        tokio::fs::metadata(path).await.ok().map(|m| etag_of(&m))
    }
}

impl ObjectStore for FileStore {
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Option<Fetched>, StoreError> {
        let path = self.path(bucket, key)?;
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_io("GetObject", bucket, key, e)),
        };
        let meta = f
            .metadata()
            .await
            .map_err(|e| store_io("GetObject", bucket, key, e))?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut f, &mut bytes)
            .await
            .map_err(|e| StoreError::Body(format!("{bucket}/{key}: {e}")))?;
        Ok(Some(Fetched {
            bytes,
            etag: Some(etag_of(&meta)),
        }))
    }

    async fn open(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> Result<OpenObject, StoreError> {
        let path = self.path(bucket, key)?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| store_io("GetObject", bucket, key, e))?;
        let meta = f
            .metadata()
            .await
            .map_err(|e| store_io("GetObject", bucket, key, e))?;
        let etag = etag_of(&meta);
        if let Some(m) = &spec.if_match {
            if !same_etag(m, &etag) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        Ok(OpenObject {
            meta: ObjectMeta {
                etag: Some(etag),
                version_id: None,
                last_modified: None,
                size: Some(meta.len()),
            },
            body: Box::pin(f),
        })
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        _content_type: &str,
        cond: PutCondition,
    ) -> Result<Option<String>, StoreError> {
        let path = self.path(bucket, key)?;
        let current = self.current_etag(&path).await;
        match (&cond, &current) {
            (PutCondition::IfAbsent, Some(_)) | (PutCondition::IfMatch(_), None) => {
                return Err(StoreError::PreconditionFailed)
            }
            (PutCondition::IfMatch(want), Some(have)) if !same_etag(want, have) => {
                return Err(StoreError::PreconditionFailed)
            }
            _ => {}
        }
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| store_io("PutObject", bucket, key, e))?;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        tokio::fs::write(&tmp, body)
            .await
            .map_err(|e| store_io("PutObject", bucket, key, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| store_io("PutObject", bucket, key, e))?;
        Ok(self.current_etag(&path).await)
    }

    async fn copy(
        &self,
        bucket: &str,
        from_key: &str,
        spec: &OpenSpec,
        to_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let from = self.path(bucket, from_key)?;
        let to = self.path(bucket, to_key)?;
        if let Some(m) = &spec.if_match {
            match self.current_etag(&from).await {
                Some(have) if same_etag(m, &have) => {}
                Some(_) => return Err(StoreError::PreconditionFailed),
                None => {
                    return Err(StoreError::NotFound {
                        bucket: bucket.into(),
                        key: from_key.into(),
                    })
                }
            }
        }
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| store_io("CopyObject", bucket, to_key, e))?;
        }
        tokio::fs::copy(&from, &to)
            .await
            .map_err(|e| store_io("CopyObject", bucket, from_key, e))?;
        Ok(self.current_etag(&to).await)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let path = self.path(bucket, key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_io("DeleteObject", bucket, key, e)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let base = self.root.join(bucket);
        let mut keys = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(store_io("ListObjectsV2", bucket, prefix, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| store_io("ListObjectsV2", bucket, prefix, e))?;
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&base) {
                    let k = rel.to_string_lossy().replace('\\', "/");
                    if k.starts_with(prefix) && !k.contains(".tmp-") {
                        keys.push(k);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// Accepts every message; records the `record_key` of each envelope.
#[derive(Clone, Default)]
pub struct NullQueue {
    keys: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize)]
struct EnvelopeKey {
    record_key: String,
}

impl NullQueue {
    pub fn keys(&self) -> Vec<String> {
        match self.keys.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl MessageQueue for NullQueue {
    async fn send_batch(&self, messages: &[OutMessage]) -> Result<Vec<EntryFailure>, QueueError> {
        let mut got = Vec::with_capacity(messages.len());
        for m in messages {
            let e: EnvelopeKey =
                serde_json::from_str(&m.body).map_err(|e| QueueError::Service {
                    op: "SendMessageBatch",
                    message: format!("envelope without a record_key: {e}"),
                    retryable: false,
                })?;
            got.push(e.record_key);
        }
        let mut g = match self.keys.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.extend(got);
        Ok(Vec::new())
    }
}

fn bench_config() -> Arc<Config> {
    let mut feed = FeedConfig::new(FEED, &[KEY_COLUMN]);
    // absent from the main pair (csv-diff cannot ignore it); present and refreshed in every
    // row of the casefeed-ts pair
    feed.ignore_columns = vec![TS_COLUMN.into()];
    feed.guards.max_changes = u64::MAX;
    feed.guards.max_change_share = 1.0;
    feed.guards.max_removed_share = 1.0;
    Arc::new(Config { feeds: vec![feed] })
}

fn splitter<S: ObjectStore>(store: S, queue: NullQueue, tool: Tool) -> Splitter<S, NullQueue> {
    Splitter {
        store,
        queue,
        config: bench_config(),
        settings: SplitterSettings {
            known_lines: tool != Tool::CasefeedFull,
            ..SplitterSettings::default()
        },
    }
}

fn event(key: &str, etag: Option<String>, size: Option<u64>) -> ObjectEvent {
    ObjectEvent {
        bucket: BUCKET.into(),
        key: key.into(),
        etag,
        size,
        event_name: Some("ObjectCreated:Put".into()),
        ..ObjectEvent::default()
    }
}

fn report_of(outcome: Outcome) -> Result<RunReport, BenchError> {
    match outcome {
        Outcome::Report(r) => Ok(*r),
        Outcome::Skipped { key, reason } => {
            Err(failed(format!("the splitter skipped {key}: {reason}")))
        }
    }
}

/// Link (or copy) a file into place.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BenchError> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io_ctx(format!(
            "copying {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    Ok(())
}

/// Check a casefeed run's report and the keys it sent against the generator's answers.
fn check_casefeed(report: &RunReport, sent: Vec<String>, exp: &Expected) -> Result<(), BenchError> {
    if report.status != RunStatus::Applied {
        return Err(BenchError::Check(format!(
            "casefeed: run status {:?} (expected applied){}",
            report.status,
            report
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )));
    }
    let c = &report.counts;
    let want = (
        exp.new.len() as u64,
        exp.changed.len() as u64,
        exp.removed.len() as u64,
    );
    if (c.new, c.changed, c.removed) != want {
        return Err(BenchError::Check(format!(
            "casefeed: report counts new {} changed {} removed {}, expected new {} changed {} removed {}",
            c.new, c.changed, c.removed, want.0, want.1, want.2
        )));
    }
    let n = sent.len();
    let set: HashSet<String> = sent.into_iter().collect();
    if set.len() != n {
        return Err(BenchError::Check(format!(
            "casefeed: {} messages sent for {} distinct record keys",
            n,
            set.len()
        )));
    }
    check_keys("casefeed sent record keys", &set, &exp.sent()).map_err(BenchError::Check)
}

// ---------------------------------------------------------------------------------------------
// The child: one measurement
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct ChildResult {
    wall_s: f64,
    /// Peak resident set (VmHWM) in KiB.
    hwm_kb: u64,
    /// Baseline set-up: the snapshot file (casefeed) or the next object's ETag (casefeed-s3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    made: Option<String>,
    /// casefeed: the run report's own timings (read state / diff and send / commit, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phases: Option<String>,
}

fn pin_to_cpu(cpu: usize) -> Result<(), BenchError> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(failed(format!("cpu {cpu} is out of range")));
    }
    // SAFETY: `set` is a plain bit set owned by this frame; CPU_ZERO/CPU_SET only write
    // inside it and sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(failed(format!(
            "pinning to cpu {cpu}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// This process's peak resident set in KiB (`VmHWM`).
fn vm_hwm_kb() -> Result<u64, BenchError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(io_ctx("reading /proc/self/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| failed("no VmHWM in /proc/self/status"))
}

fn find_newline(hay: &[u8]) -> Option<usize> {
    // SAFETY: the pointer and length come from a live slice; memchr reads at most `len`
    // bytes from it and returns null or a pointer into it.
    let p = unsafe { libc::memchr(hay.as_ptr().cast(), b'\n' as libc::c_int, hay.len()) };
    if p.is_null() {
        None
    } else {
        Some(p as usize - hay.as_ptr() as usize)
    }
}

/// Read a file in large chunks and xxh3 every line; returns (lines, combined hash).
pub fn floor_hash(path: &Path) -> io::Result<(u64, u64)> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; FLOOR_BUF];
    let mut have = 0usize;
    let mut lines = 0u64;
    let mut acc = 0u64;
    loop {
        if have == buf.len() {
            // one line longer than the buffer
            buf.resize(buf.len() * 2, 0);
        }
        let n = f.read(&mut buf[have..])?;
        if n == 0 {
            if have > 0 {
                acc = acc.wrapping_add(xxhash_rust::xxh3::xxh3_64(&buf[..have]));
                lines += 1;
            }
            return Ok((lines, acc));
        }
        let end = have + n;
        let mut pos = 0usize;
        while let Some(i) = find_newline(&buf[pos..end]) {
            acc = acc.wrapping_add(xxhash_rust::xxh3::xxh3_64(&buf[pos..pos + i]));
            lines += 1;
            pos += i + 1;
        }
        buf.copy_within(pos..end, 0);
        have = end - pos;
    }
}

fn key_index(path: &Path) -> Result<usize, BenchError> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| failed(format!("opening {}: {e}", path.display())))?;
    let h = r
        .byte_headers()
        .map_err(|e| failed(format!("reading the header of {}: {e}", path.display())))?;
    h.iter()
        .position(|c| c == KEY_COLUMN.as_bytes())
        .ok_or_else(|| failed(format!("{} has no {KEY_COLUMN} column", path.display())))
}

/// Run one measurement; prints `CASEFEED-BENCH-RESULT {json}` on success.
pub fn child(args: ChildArgs) -> Result<ExitCode, BenchError> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let wall = match args.tool {
        Tool::Floor => child_floor(&args)?,
        Tool::CsvDiff => child_csv_diff(&args)?,
        Tool::Casefeed | Tool::CasefeedS3 | Tool::CasefeedFull | Tool::CasefeedTs => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(io_ctx("starting the tokio runtime"))?;
            if args.baseline {
                rt.block_on(child_baseline(&args))?
            } else {
                let r = rt.block_on(child_casefeed(&args));
                let _ = std::fs::remove_dir_all(&args.work);
                r?
            }
        }
    };
    let res = serde_json::to_string(&wall).map_err(|e| failed(format!("encoding: {e}")))?;
    println!("{RESULT_MARK}{res}");
    Ok(ExitCode::SUCCESS)
}

fn child_floor(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    let t = Instant::now();
    let (lines, acc) =
        floor_hash(&args.next).map_err(io_ctx(format!("reading {}", args.next.display())))?;
    let wall_s = t.elapsed().as_secs_f64();
    let hwm_kb = vm_hwm_kb()?;
    std::hint::black_box(acc);
    let exp = Expected::load(&args.next)?;
    // quoted fields may hold line breaks: a file has at least a line per row and the header
    let want = exp.rows + exp.malformed + 1;
    if lines < want {
        return Err(BenchError::Check(format!(
            "floor: {lines} lines, expected at least {want} (header + rows)"
        )));
    }
    Ok(ChildResult {
        wall_s,
        hwm_kb,
        ..ChildResult::default()
    })
}

fn child_csv_diff(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    use csv_diff::csv::Csv;
    use csv_diff::csv_diff::CsvByteDiffLocalBuilder;
    use csv_diff::diff_row::DiffByteRecord;

    let ki = key_index(&args.prev)?;
    if key_index(&args.next)? != ki {
        return Err(failed(format!(
            "{KEY_COLUMN} is not at the same position in both files"
        )));
    }
    let open = |p: &Path| File::open(p).map_err(io_ctx(format!("opening {}", p.display())));
    let t = Instant::now();
    let differ = CsvByteDiffLocalBuilder::new()
        .primary_key_columns([ki])
        .build()
        .map_err(|e| failed(format!("csv-diff: {e}")))?;
    let left = open(&args.prev)?;
    let right = open(&args.next)?;
    let result = differ
        .diff(
            Csv::<File>::with_reader_seek(left),
            Csv::<File>::with_reader_seek(right),
        )
        .map_err(|e| failed(format!("csv-diff: {e}")))?;
    let wall_s = t.elapsed().as_secs_f64();
    let hwm_kb = vm_hwm_kb()?;

    let key =
        |r: &csv::ByteRecord| String::from_utf8_lossy(r.get(ki).unwrap_or_default()).into_owned();
    let (mut added, mut modified, mut deleted) = (HashSet::new(), HashSet::new(), HashSet::new());
    for d in result.iter() {
        match d {
            DiffByteRecord::Add(i) => added.insert(key(i.byte_record())),
            DiffByteRecord::Modify { add, .. } => modified.insert(key(add.byte_record())),
            DiffByteRecord::Delete(i) => deleted.insert(key(i.byte_record())),
        };
    }
    let exp = Expected::load(&args.next)?;
    check_keys("csv-diff added", &added, &exp.new).map_err(BenchError::Check)?;
    check_keys("csv-diff modified", &modified, &exp.changed).map_err(BenchError::Check)?;
    check_keys("csv-diff deleted", &deleted, &exp.removed).map_err(BenchError::Check)?;
    Ok(ChildResult {
        wall_s,
        hwm_kb,
        ..ChildResult::default()
    })
}

async fn child_casefeed(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    let queue = NullQueue::default();
    let (wall_s, report) = if args.tool == Tool::CasefeedS3 {
        let endpoint = args
            .endpoint
            .as_deref()
            .ok_or_else(|| failed("casefeed-s3 needs --endpoint"))?;
        let conf = local::sdk_config(endpoint).await;
        let store = S3Store::from_conf(&conf).with_ranged_reads(casefeed::s3::RangedReads {
            concurrency: args.s3_read_concurrency,
            ..casefeed::s3::RangedReads::default()
        });
        // every timed run starts from the same previous snapshot
        store
            .copy(
                BUCKET,
                S3_BASE_SNAPSHOT,
                &OpenSpec::default(),
                &snapshot_key(FEED),
            )
            .await
            .map_err(|e| failed(format!("restoring the baseline snapshot in moto: {e}")))?;
        let size = std::fs::metadata(&args.next).map(|m| m.len()).ok();
        let ev = event(NEXT_KEY, args.etag.clone(), size);
        let sp = splitter(store, queue.clone(), args.tool);
        let t = Instant::now();
        let out = sp
            .process(&ev)
            .await
            .map_err(|e| failed(format!("Splitter::process (S3): {e}")))?;
        (t.elapsed().as_secs_f64(), report_of(out)?)
    } else {
        let snapshot = args
            .snapshot
            .as_deref()
            .ok_or_else(|| failed("casefeed needs --snapshot"))?;
        let store = FileStore::new(&args.work);
        let to = |k: &str| store.path(BUCKET, k).map_err(|e| failed(e.to_string()));
        link_or_copy(snapshot, &to(&snapshot_key(FEED))?)?;
        let next_path = to(NEXT_KEY)?;
        link_or_copy(&args.next, &next_path)?;
        let meta = std::fs::metadata(&next_path)
            .map_err(io_ctx(format!("reading {}", next_path.display())))?;
        let ev = event(NEXT_KEY, Some(etag_of(&meta)), Some(meta.len()));
        let sp = splitter(store, queue.clone(), args.tool);
        let t = Instant::now();
        let out = sp
            .process(&ev)
            .await
            .map_err(|e| failed(format!("Splitter::process: {e}")))?;
        (t.elapsed().as_secs_f64(), report_of(out)?)
    };
    let hwm_kb = vm_hwm_kb()?;
    let exp = Expected::load(&args.next)?;
    check_casefeed(&report, queue.keys(), &exp)?;
    let t = &report.timings;
    Ok(ChildResult {
        wall_s,
        hwm_kb,
        made: None,
        phases: Some(format!(
            "read state {} ms, diff+send {} ms, commit {} ms; {} of {} rows known by their line",
            t.read_state_ms,
            t.diff_and_send_ms,
            t.commit_ms,
            report.counts.known,
            report.counts.read
        )),
    })
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Measured {
    tool: Tool,
    cores: String,
    pinned: bool,
    walls: Vec<f64>,
    hwm_kb: u64,
    /// Rows and bytes of the next file, when it is not the size's main pair.
    other_data: Option<(f64, f64)>,
}

struct Run<'a> {
    args: &'a BenchArgs,
    exe: PathBuf,
    scratch: PathBuf,
}

impl Run<'_> {
    /// The untimed baseline run on `pair`'s previous file: the snapshot every timed casefeed
    /// run on that pair starts from.
    fn baseline(&self, pair: &Pair, base: &[String], size: &str) -> Result<String, BenchError> {
        eprintln!("bench: {size} casefeed baseline run (untimed)");
        let mut b = base.to_vec();
        if let Some(w) = b.iter().position(|a| a == "--work") {
            b[w + 1] = pair.dir.join("work-baseline").display().to_string();
        }
        b.extend(["--tool".into(), "casefeed".into(), "--baseline".into()]);
        self.child(&b, &format!("{size} casefeed baseline run"))?
            .made
            .ok_or_else(|| failed("the baseline run named no snapshot"))
    }

    /// Start one child and wait for its result.
    fn child(&self, extra: &[String], what: &str) -> Result<ChildResult, BenchError> {
        std::fs::create_dir_all(&self.scratch)
            .map_err(io_ctx(format!("creating {}", self.scratch.display())))?;
        let out_path = self.scratch.join("child.stdout");
        let err_path = self.scratch.join("child.stderr");
        let out = File::create(&out_path).map_err(io_ctx("creating the child's stdout file"))?;
        let err = File::create(&err_path).map_err(io_ctx("creating the child's stderr file"))?;
        let mut ch = Command::new(&self.exe)
            .arg("bench-child")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_ctx(format!("starting {}", self.exe.display())))?;
        let limit = Duration::from_secs(self.args.child_timeout);
        let started = Instant::now();
        let status = loop {
            if let Some(s) = ch.try_wait().map_err(io_ctx("waiting for a child"))? {
                break s;
            }
            if started.elapsed() > limit {
                let _ = ch.kill();
                let _ = ch.wait();
                return Err(failed(format!(
                    "{what}: no result within {limit:?}; killed"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        if !status.success() {
            let msg = stderr.trim();
            let msg = msg.strip_prefix("Error: ").unwrap_or(msg);
            return Err(if let Some(m) = msg.strip_prefix("wrong answer: ") {
                BenchError::Check(format!("{what}: {m}"))
            } else {
                failed(format!("{what}: child failed ({status}): {msg}"))
            });
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(RESULT_MARK))
            .ok_or_else(|| failed(format!("{what}: the child printed no result")))?;
        serde_json::from_str(line).map_err(|e| failed(format!("{what}: bad result line: {e}")))
    }

    fn measure(
        &self,
        tool: Tool,
        pinned: bool,
        runs: usize,
        base: &[String],
        size: &str,
    ) -> Result<Measured, BenchError> {
        let cores = if pinned {
            "1".to_string()
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get().to_string())
                .unwrap_or_else(|_| "all".into())
        };
        let mut m = Measured {
            tool,
            cores: if tool == Tool::CasefeedS3 {
                format!("{cores} (+moto)")
            } else {
                cores
            },
            pinned,
            walls: Vec::new(),
            hwm_kb: 0,
            other_data: None,
        };
        for i in 0..runs {
            let mut extra = base.to_vec();
            extra.push("--tool".into());
            extra.push(
                tool.to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default(),
            );
            if pinned {
                extra.push("--cpu".into());
                extra.push(self.args.cpu.to_string());
            }
            let what = format!(
                "{size} {} ({} core{}, run {}/{runs})",
                tool.label(),
                m.cores,
                if pinned { "" } else { "s" },
                i + 1
            );
            let r = self.child(&extra, &what)?;
            eprintln!(
                "bench: {what}: {:.3} s, peak RSS {:.0} MB{}",
                r.wall_s,
                r.hwm_kb as f64 / 1024.0,
                r.phases
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            );
            m.walls.push(r.wall_s);
            m.hwm_kb = m.hwm_kb.max(r.hwm_kb);
        }
        Ok(m)
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let ram_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpu}, {cores} cores, {ram_gib:.1} GiB RAM, Linux {kernel}")
}

fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(local::root())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} (+ uncommitted changes)")
            } else {
                c
            }
        }
        None => "unknown".into(),
    }
}

/// The untimed baseline run on files: builds the snapshot every timed run starts from.
async fn file_baseline(prev: &Path, work: &Path) -> Result<PathBuf, BenchError> {
    let _ = std::fs::remove_dir_all(work);
    let store = FileStore::new(work);
    let prev_path = store
        .path(BUCKET, PREV_KEY)
        .map_err(|e| failed(e.to_string()))?;
    link_or_copy(prev, &prev_path)?;
    let meta = std::fs::metadata(&prev_path)
        .map_err(io_ctx(format!("reading {}", prev_path.display())))?;
    let sp = splitter(store.clone(), NullQueue::default(), Tool::Casefeed);
    let out = sp
        .process(&event(PREV_KEY, Some(etag_of(&meta)), Some(meta.len())))
        .await
        .map_err(|e| failed(format!("baseline run: {e}")))?;
    let r = report_of(out)?;
    if r.status != RunStatus::Baseline {
        return Err(failed(format!(
            "baseline run: status {:?}, expected baseline ({})",
            r.status,
            r.reason.unwrap_or_default()
        )));
    }
    store
        .path(BUCKET, &snapshot_key(FEED))
        .map_err(|e| failed(e.to_string()))
}

async fn child_baseline(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    let t = Instant::now();
    let made = if args.tool == Tool::CasefeedS3 {
        let endpoint = args
            .endpoint
            .as_deref()
            .ok_or_else(|| failed("casefeed-s3 needs --endpoint"))?;
        s3_setup(endpoint, &args.prev, &args.next).await?
    } else {
        file_baseline(&args.prev, &args.work)
            .await?
            .display()
            .to_string()
    };
    Ok(ChildResult {
        wall_s: t.elapsed().as_secs_f64(),
        hwm_kb: vm_hwm_kb()?,
        made: Some(made),
        phases: None,
    })
}

/// moto with both files uploaded and the baseline snapshot saved; returns the next
/// object's ETag.
async fn s3_setup(endpoint: &str, prev: &Path, next: &Path) -> Result<String, BenchError> {
    use aws_sdk_s3::primitives::ByteStream;
    let conf = local::sdk_config(endpoint).await;
    let store = S3Store::from_conf(&conf);
    let s3 = store.client();
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .map_err(|e| failed(format!("moto CreateBucket: {e:?}")))?;
    let mut etags = Vec::new();
    for (key, path) in [(PREV_KEY, prev), (NEXT_KEY, next)] {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
        let out = s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| failed(format!("moto PutObject {key}: {e:?}")))?;
        etags.push(out.e_tag().map(str::to_string));
    }
    let prev_etag = etags.first().cloned().flatten();
    let next_etag = etags
        .get(1)
        .cloned()
        .flatten()
        .ok_or_else(|| failed("moto returned no ETag for the next file"))?;
    let sp = splitter(store.clone(), NullQueue::default(), Tool::Casefeed);
    let out = sp
        .process(&event(
            PREV_KEY,
            prev_etag,
            std::fs::metadata(prev).map(|m| m.len()).ok(),
        ))
        .await
        .map_err(|e| failed(format!("baseline run on moto: {e}")))?;
    let r = report_of(out)?;
    if r.status != RunStatus::Baseline {
        return Err(failed(format!(
            "baseline run on moto: status {:?} ({})",
            r.status,
            r.reason.unwrap_or_default()
        )));
    }
    store
        .copy(
            BUCKET,
            &snapshot_key(FEED),
            &OpenSpec::default(),
            S3_BASE_SNAPSHOT,
        )
        .await
        .map_err(|e| failed(format!("saving the baseline snapshot in moto: {e}")))?;
    Ok(next_etag)
}

struct SizeResult {
    rows: u64,
    markdown: String,
    target_lines: Vec<String>,
}

fn run_size(run: &Run<'_>, root: &Path, rows: u64) -> Result<SizeResult, BenchError> {
    let args = run.args;
    let size = human_rows(rows);
    let pair = ensure_pair(root, args, rows, false)?;
    let runs = args
        .runs
        .unwrap_or(if rows > 1_000_000 { 3 } else { 5 })
        .max(1);
    warm(&pair.prev)?;
    warm(&pair.next)?;
    let base = pair.child_args();
    let mut measured: Vec<Measured> = Vec::new();
    let tools: BTreeSet<Tool> = args.tools.iter().copied().collect();
    // the snapshot of `prev` every casefeed run on the main pair starts from
    let mut baseline: Option<String> = None;
    let mut ts_note: Option<String> = None;

    for &tool in &tools {
        match tool {
            Tool::Floor | Tool::CsvDiff => {
                for pinned in [true, false] {
                    measured.push(run.measure(tool, pinned, runs, &base, &size)?);
                }
            }
            Tool::Casefeed | Tool::CasefeedFull => {
                let snap = match &baseline {
                    Some(s) => s.clone(),
                    None => {
                        let s = run.baseline(&pair, &base, &size)?;
                        baseline = Some(s.clone());
                        s
                    }
                };
                let mut b = base.clone();
                b.push("--snapshot".into());
                b.push(snap);
                for pinned in [true, false] {
                    measured.push(run.measure(tool, pinned, runs, &b, &size)?);
                }
            }
            Tool::CasefeedTs => {
                let ts = ensure_pair(root, args, rows, true)?;
                warm(&ts.prev)?;
                warm(&ts.next)?;
                let base = ts.child_args();
                let snap = run.baseline(&ts, &base, &size)?;
                let mut b = base.clone();
                b.push("--snapshot".into());
                b.push(snap);
                for pinned in [true, false] {
                    let mut m = run.measure(tool, pinned, runs, &b, &size)?;
                    m.other_data = Some((ts.expected.rows as f64, ts.next_bytes as f64 / 1e6));
                    measured.push(m);
                }
                let _ = std::fs::remove_dir_all(ts.dir.join("work-baseline"));
                ts_note = Some(format!(
                    "\n`{}` runs on a pair of its own, generated with the export_timestamp column kept (next file {:.0} MB): the next file refreshes it in every row, and the feed ignores it. × floor and the speed-up vs csv-diff are left out for that row (another file).\n",
                    Tool::CasefeedTs.label(),
                    ts.next_bytes as f64 / 1e6
                ));
            }
            Tool::CasefeedS3 => {
                if !args.s3_sizes.contains(&rows) {
                    continue;
                }
                eprintln!("bench: {size} starting moto, uploading, baseline run (untimed)");
                let moto = Moto::start()?;
                let mut b = base.clone();
                b.extend([
                    "--endpoint".to_string(),
                    moto.endpoint.clone(),
                    "--tool".into(),
                    "casefeed-s3".into(),
                    "--baseline".into(),
                ]);
                let etag = run
                    .child(&b, &format!("{size} moto upload and baseline run"))?
                    .made
                    .ok_or_else(|| failed("the moto baseline run gave no ETag"))?;
                let mut b = base.clone();
                b.extend([
                    "--endpoint".to_string(),
                    moto.endpoint.clone(),
                    "--etag".into(),
                    etag,
                ]);
                // one GET stream, then the production default: 4 ranged GETs of 4 MiB
                for conc in [1usize, 4] {
                    let mut b = b.clone();
                    b.extend(["--s3-read-concurrency".to_string(), conc.to_string()]);
                    let mut m = run.measure(tool, true, runs, &b, &size)?;
                    m.cores = if conc == 1 {
                        format!("{}, one GET stream", m.cores)
                    } else {
                        format!("{}, {conc} ranged GETs of 4 MiB", m.cores)
                    };
                    measured.push(m);
                }
                drop(moto);
            }
        }
    }
    let _ = std::fs::remove_dir_all(pair.dir.join("work-baseline"));

    let find = |tool: Tool, pinned: bool| {
        measured
            .iter()
            .find(|m| m.tool == tool && m.pinned == pinned)
            .and_then(|m| median(&m.walls))
    };
    let rows_next = pair.expected.rows as f64;
    let mb = pair.next_bytes as f64 / 1e6;
    let mut table = Vec::new();
    for m in &measured {
        let Some(wall) = median(&m.walls) else {
            continue;
        };
        let (rows_m, mb_m) = m.other_data.unwrap_or((rows_next, mb));
        let same_file = m.other_data.is_none();
        table.push(TableRow {
            tool: m.tool.label().to_string(),
            cores: m.cores.clone(),
            wall_s: wall,
            rows_per_s: rows_m / wall,
            mb_per_s: mb_m / wall,
            rss_mb: m.hwm_kb as f64 / 1024.0,
            vs_floor: find(Tool::Floor, m.pinned)
                .filter(|_| same_file)
                .map(|f| wall / f),
            speedup_vs_csv_diff: find(Tool::CsvDiff, m.pinned)
                .filter(|_| same_file)
                .map(|c| c / wall),
        });
    }

    let e = &pair.expected;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### {size} rows\n\nprevious file {} rows ({:.0} MB), next file {} rows ({:.0} MB, shuffled): {} new, {} changed, {} removed; median of {runs} runs.\n",
        thousands(rows as f64),
        pair.prev_bytes as f64 / 1e6,
        thousands(rows_next),
        mb,
        thousands(e.new.len() as f64),
        thousands(e.changed.len() as f64),
        thousands(e.removed.len() as f64),
    );
    md.push_str(&render_table(&table));
    if let Some(n) = ts_note {
        md.push_str(&n);
    }

    let mut targets = Vec::new();
    let cf1 = find(Tool::Casefeed, true);
    let cf2 = find(Tool::Casefeed, false);
    if let (Some(cf), Some(cd)) = (cf1, find(Tool::CsvDiff, false)) {
        let x = cd / cf;
        targets.push(format!(
            "{}: {size}: casefeed (1 core) is {x:.2}x faster than csv-diff (all cores); target ≥ 3x",
            pass(x >= 3.0)
        ));
    }
    for (pinned, cf) in [(true, cf1), (false, cf2)] {
        if let (Some(cf), Some(fl)) = (cf, find(Tool::Floor, pinned)) {
            let x = cf / fl;
            targets.push(format!(
                "{}: {size}: casefeed ({}) takes {x:.2}x the floor's time; target ≤ 2x",
                pass(x <= 2.0),
                if pinned { "1 core" } else { "all cores" }
            ));
        }
    }
    let rss = measured
        .iter()
        .filter(|m| m.tool == Tool::Casefeed)
        .map(|m| m.hwm_kb)
        .max();
    if let Some(kb) = rss {
        let limit = if rows <= 500_000 {
            Some(100.0)
        } else if rows <= 5_000_000 {
            Some(500.0)
        } else {
            None
        };
        if let Some(limit) = limit {
            let mb = kb as f64 / 1024.0;
            targets.push(format!(
                "{}: {size}: casefeed peak RSS {mb:.0} MB; target < {limit:.0} MB",
                pass(mb < limit)
            ));
        }
    }
    Ok(SizeResult {
        rows,
        markdown: md,
        target_lines: targets,
    })
}

/// `casefeed bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode, BenchError> {
    if args.sizes.is_empty() {
        return Err(failed("--sizes: give at least one size"));
    }
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| local::root().join("bench-data"));
    std::fs::create_dir_all(&root).map_err(io_ctx(format!("creating {}", root.display())))?;
    let exe = std::env::current_exe().map_err(io_ctx("locating the casefeed binary"))?;
    let run = Run {
        args: &args,
        exe,
        scratch: root.join("child-logs"),
    };
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut results = Vec::new();
    for &rows in &sizes {
        results.push(run_size(&run, &root, rows)?);
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "## casefeed diff benchmark\n\n- machine: {}\n- commit: {}\n- date: {}\n- command: `casefeed bench {}`\n",
        machine(),
        commit(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::env::args().skip(2).collect::<Vec<_>>().join(" "),
    );
    md.push_str(
        "Wall time is the median of the runs; each run is a fresh child process (1 core = pinned \
         to one CPU, otherwise unpinned), peak RSS is the highest VmHWM of those children. \
         rows/s and MB/s are over the next file. × floor = tool time / floor time and speed-up \
         vs csv-diff = csv-diff time / tool time, both at the same core count.\n\n",
    );
    for r in &results {
        md.push_str(&r.markdown);
        md.push('\n');
    }
    md.push_str("### Targets\n\n");
    for r in &results {
        for t in &r.target_lines {
            let _ = writeln!(md, "- {t}");
        }
        if r.target_lines.is_empty() {
            let _ = writeln!(md, "- {}: not measured", human_rows(r.rows));
        }
    }
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).map_err(io_ctx(format!("writing {}", out.display())))?;
        eprintln!("bench: wrote {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&run.scratch);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn parses_row_counts() {
        assert_eq!(parse_rows("500k"), Ok(500_000));
        assert_eq!(parse_rows("5M"), Ok(5_000_000));
        assert_eq!(parse_rows("20_000"), Ok(20_000));
        assert!(parse_rows("0").is_err());
        assert!(parse_rows("lots").is_err());
        assert_eq!(parse_rows_or_none("none"), Ok(0));
        assert_eq!(human_rows(500_000), "500k");
        assert_eq!(human_rows(5_000_000), "5M");
        assert_eq!(human_rows(1234), "1234");
    }

    #[test]
    fn key_sets_are_checked_both_ways() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert!(check_keys("x", &set(&["a", "b"]), &set(&["b", "a"])).is_ok());
        let e = check_keys("x", &set(&["a", "c"]), &set(&["a", "b"])).unwrap_err();
        assert!(e.contains("1 missing (e.g. b)"), "{e}");
        assert!(e.contains("1 unexpected (e.g. c)"), "{e}");
    }

    #[test]
    fn table_is_markdown() {
        let t = render_table(&[TableRow {
            tool: "floor".into(),
            cores: "1".into(),
            wall_s: 0.25,
            rows_per_s: 2_000_000.0,
            mb_per_s: 556.2,
            rss_mb: 12.4,
            vs_floor: Some(1.0),
            speedup_vs_csv_diff: None,
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("| tool | cores |"));
        assert_eq!(
            lines[2],
            "| floor | 1 | 0.250 | 2,000,000 | 556 | 12 | 1.00x | – |"
        );
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
    }

    #[test]
    fn floor_counts_lines_with_and_without_final_newline() {
        let dir = std::env::temp_dir().join(format!("casefeed-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.csv");
        std::fs::write(&a, b"h\n1\n2\n").unwrap();
        let b = dir.join("b.csv");
        std::fs::write(&b, b"h\n1\n2").unwrap();
        let (la, ha) = floor_hash(&a).unwrap();
        let (lb, hb) = floor_hash(&b).unwrap();
        assert_eq!((la, lb), (3, 3));
        assert_eq!(ha, hb);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn file_store_conditional_puts() {
        let dir = std::env::temp_dir().join(format!("casefeed-fstore-{}", std::process::id()));
        let s = FileStore::new(&dir);
        assert!(s.get_bytes("b", "k/x").await.unwrap().is_none());
        let e1 = s
            .put("b", "k/x", b"one".to_vec(), "t", PutCondition::IfAbsent)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            s.put("b", "k/x", b"two".to_vec(), "t", PutCondition::IfAbsent)
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        let e2 = s
            .put(
                "b",
                "k/x",
                b"two".to_vec(),
                "t",
                PutCondition::IfMatch(e1.clone()),
            )
            .await
            .unwrap()
            .unwrap();
        assert_ne!(e1, e2);
        assert!(matches!(
            s.put("b", "k/x", b"3".to_vec(), "t", PutCondition::IfMatch(e1))
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        let f = s.get_bytes("b", "k/x").await.unwrap().unwrap();
        assert_eq!(f.bytes, b"two");
        assert_eq!(s.list("b", "k/").await.unwrap(), vec!["k/x".to_string()]);
        assert!(s.path("b", "../x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
