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
//!
//! [`Splitter::process`]: casefeed::splitter::Splitter::process
//! [`ObjectStore`]: casefeed::ports::store::ObjectStore
//! [`MessageQueue`]: casefeed::ports::queue::MessageQueue
//! [`S3Store`]: casefeed::adapters::s3::S3Store

mod baseline;
mod child;
mod cli;
mod data;
mod errors;
mod expected;
mod helpers;
mod parent;
mod splitter;
mod store;
#[cfg(test)]
mod tests;

pub use child::{child, floor_hash};
pub use cli::{BenchArgs, ChildArgs, Tool};
pub use errors::BenchError;
pub use expected::Expected;
pub use helpers::{check_keys, median, render_table, thousands, TableRow};
pub use parent::run;
pub use store::{FileStore, NullQueue};

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
