//! End-to-end tests of `Splitter::process` (and of approving and discarding held files) over
//! the in-memory store and a recording fake queue, by topic:
//!
//! - `harness`: the shared fixtures — config, CSV tables, the recording queue, the harness;
//! - `faults`: `FaultyStore`, the in-memory store with faults armed per test;
//! - `baseline`: a feed's first file;
//! - `diff`: new and changed rows, idempotency keys, duplicate and composite keys;
//! - `drift`: reordered, added and missing columns;
//! - `bad_input`: malformed rows, empty objects, gzip, broken streams, a failed rejects write;
//! - `state`: the same event again, corrupt or foreign snapshots, commit races, skipped and
//!   stale events;
//! - `queue`: queue failures, refused rows, a second sending pass;
//! - `removed`: the removed list, tombstones (`removed = "send"`), old-format states;
//! - `order`: exports ordered by key or by metadata, late exports;
//! - `guards`: guards, held files, approve and discard;
//! - `privacy`: no row values in reasons, reports, errors or attributes;
//! - `known_lines`: rows known by their line and the reader thread against the plain path, and
//!   the run metrics.
//!
//! Several tests pin down defects that were found in the library and fixed, and fail if one
//! comes back: a failed rejects write, a temporarily malformed row, composite keys holding the
//! separator, a valid row after a rejected row of the same record.

mod bad_input;
mod baseline;
mod diff;
mod drift;
mod faults;
mod guards;
mod harness;
mod known_lines;
mod order;
mod privacy;
mod queue;
mod removed;
mod state;
