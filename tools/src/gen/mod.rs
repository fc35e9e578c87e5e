//! `casefeed gen`: a deterministic, seeded generator of realistic lab-result CSV exports.
//!
//! * `gen baseline` writes a first full export.
//! * `gen next` reads a previous export (by header name, so reordered files work) and writes
//!   the next one: some rows removed, some changed in a compared column, some new rows
//!   appended, a fresh `export_timestamp` in every row, optionally shuffled rows, reordered,
//!   added or dropped columns, and malformed lines.
//!
//! Beside every output `PATH` a `PATH.expected.json` records what a correct diff must find.
//!
//! Row content is a pure function of `(seed, record index, version)`: the generator hashes
//! those with xxh3 into the state of a SplitMix64 stream and draws from fixed pools, so any
//! row can be regenerated on its own, and `next` can work from nothing but the previous file.
//! No row value is ever printed: the summary line carries counts and paths only.

mod baseline;
mod cli;
mod columns;
mod errors;
mod expected;
mod next;
mod plan;
mod pools;
mod row;
#[cfg(test)]
mod tests;

pub use baseline::baseline;
pub use cli::{run, BaselineOpts, ColumnOpts, GenArgs, GenCommand, NextOpts};
pub use columns::COLUMNS;
pub(crate) use columns::TS_COLUMN;
pub use errors::{expected_path, GenError, Summary};
pub use next::next;
