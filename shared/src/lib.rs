//! casefeed: turn full-history CSV exports into exactly-once effects on an HTTP API.
//!
//! Everything that decides something lives here and is unit-tested without AWS; the Lambda
//! binaries in `functions/` only wire events to [`splitter::Splitter`] (and the consumer).

pub mod api;
pub mod app;
pub mod backoff;
pub mod config;
pub mod consumer;
pub mod diff;
pub mod envelope;
pub mod event;
pub mod guards;
pub mod held;
pub mod ledger;
pub mod metrics;
pub mod queue;
pub mod report;
pub mod rows;
pub mod s3;
pub mod snapshot;
pub mod splitter;
#[cfg(test)]
mod splitter_tests;
pub mod store;
