//! casefeed's tools: the data generator, the local stack (moto + Runtime Interface Emulator)
//! and the `casefeed` CLI built on them.

pub mod api;
pub mod audit;
pub mod bench;
pub mod bench_consumer;
pub mod bench_ledger;
pub mod demo;
pub mod dlq;
pub mod drill;
pub mod esm;
pub mod explain;
pub mod failures;
pub mod gen;
pub mod held;
pub mod local;
pub mod ops;
pub mod preview;
pub mod reconcile;
pub mod state;
pub mod status;
