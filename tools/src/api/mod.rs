//! The stand-in contact-tracing API: a real HTTP/1.1 server (axum on hyper/tokio) bound to a
//! loopback address, with an append-only ledger of applied effects and runtime fault injection.
//!
//! ```text
//! POST /cases     Authorization: Bearer <token>, Idempotency-Key: <key>, JSON body
//!                 {"feed":…, "record_key":…, "change":"new"|"changed", "fields":{…}}
//!   201 applied the first time for that key     409 already applied (replay, no second effect)
//!   400 bad request / missing key                413 body over max_body_bytes
//!   401 wrong or missing token                   422 key or record key on a reject list
//!   429 + Retry-After                            503 outage / injected failure / after a "timeout"
//!   (no answer at all)                           apply_then_drop: applied, connection dropped
//! GET  /stats     counters as JSON                POST /reset   clears counters (Bearer token)
//! POST /control   patch the faults (Bearer token) GET  /control current faults (Bearer token)
//! GET  /healthz   200
//! ```
//!
//! Order of checks for `POST /cases`: in-flight guard → latency → outage → auth → parse (400/413)
//! → reject lists (422) → 429 share → 5xx share → timeout share → apply (atomic check-and-record:
//! already applied → 409, else record → 201, or record and then drop the connection).
//!
//! Only the method, path, status and an 8-character key prefix are ever logged; row field values
//! never appear in a log line or an error body (parse errors report line and column only).
//!
//! The server runs its own accept loop (hyper `http1` per connection) instead of `axum::serve` so
//! that a handler can make its connection be dropped without any response bytes: the handler
//! signals the per-connection [`Notify`] and stays pending; the connection task then drops the
//! hyper connection, which closes the socket, and the client sees "connection closed before
//! message completed".
//!
//! [`Notify`]: tokio::sync::Notify

mod config;
mod faults;
mod handlers;
mod ledger;
mod net;
mod server;
mod stats;
#[cfg(test)]
mod tests;

pub use config::{ApiConfig, ApiError, DEFAULT_MAX_BODY_BYTES};
pub use faults::{Faults, FaultsPatch};
pub use net::{is_docker_bridge_address, DOCKER_BRIDGE_INTERFACE};
pub use server::ApiServer;
pub use stats::Stats;
