//! casefeed: turn full-history CSV exports into exactly-once effects on an HTTP API.
//!
//! ```text
//!  upload ─► S3 incoming/<feed>/…           (contract::layout, contract::event)
//!               │ ObjectCreated
//!               ▼
//!  splitter ─ source ─► filter ─► state ─► sink ───► SQS work queue
//!             bytes→rows  rows→classes  snapshot  classes→messages   (contract::envelope)
//!             run report, rejects, held files ─► S3  (contract::report, contract::held)
//!               │
//!               ▼
//!  consumer ─ deliver: ledger ─► API ─► answer ─► fate  (applied / duplicate / DLQ / retry)
//! ```
//!
//! * [`contract`] — what outlives a deploy: the bucket's layout, the envelope and its
//!   idempotency key, the run report, the held-file manifest, an export's identity and order.
//!   It imports nothing else of the crate.
//! * [`splitter`] — the source side: one uploaded export diffed against the feed's state,
//!   its new and changed rows fanned out, the next state committed. Its stages are folders
//!   named by the data flow: [`splitter::source`], [`splitter::filter`],
//!   [`splitter::state`], [`splitter::sink`].
//! * [`consumer`] — the sink side: one message, one API call, once in effect.
//! * [`ports`] — the traits the core needs (object store, queues, the API) and in-memory
//!   doubles; [`adapters`] — their AWS and HTTP implementations, the Lambda event
//!   translation and the start-up wiring: the only code that imports the AWS SDK, the HTTP
//!   client or Lambda event types.
//!
//! Everything that decides something lives here and is unit-tested without AWS; the Lambda
//! binaries in `functions/` only wire events to [`splitter::Splitter`] and
//! [`consumer::Consumer`] through [`adapters::lambda`].

#![warn(missing_docs)]

pub mod adapters;
pub mod backoff;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod metrics;
pub mod ports;
pub mod splitter;
