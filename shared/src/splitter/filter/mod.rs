//! The filter stage: rows → new / changed / unchanged. The column plan maps the file's columns
//! onto fingerprints, the differ classifies every row against the feed's state and collects
//! the next state, and the guards decide whether the result may go on or is held.

mod differ;
mod fingerprint;
pub mod guards;
mod plan;
#[cfg(test)]
mod tests;

pub use differ::{Class, DiffCounts, Differ, FpHasher, FpSet};
pub use fingerprint::{key_fp, record_key, write_record_key, Fingerprinter, Fingerprints};
pub use plan::ColumnPlan;
