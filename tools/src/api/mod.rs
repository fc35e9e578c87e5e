//! The stand-in contact-tracing API: a real HTTP/1.1 server (axum on hyper/tokio) bound to a
//! loopback address, modelling a versioned contact-tracing system, with an append-only ledger
//! of applied effects and runtime fault injection.
//!
//! ```text
//! POST /cases     Authorization: Bearer <case token>, Idempotency-Key: <key>,
//!                 Casefeed-Version: <version> (optional; must equal the body's), JSON body
//!                 {"feed":…, "record_key":…, "change":"new"|"changed"|"removed",
//!                  "version":N (0 when absent), "source":{"bucket","key","etag","version_id"?}
//!                  (optional), "fields":{name: string} (none or {} for "removed")}
//!   201 applied {"outcome":"applied","version":N}
//!   409 {"outcome":"duplicate"}                  the key was applied before: no second effect
//!   409 {"outcome":"stale","current_version":N}  a new key at or below the record's version:
//!                                                nothing applied (the API never goes backwards)
//!   400 bad request / missing key / Casefeed-Version disagrees   413 body over max_body_bytes
//!   401 wrong or missing case token              422 key or record key on a reject list
//!   429 + Retry-After: retry_after_secs          limit_per_second exceeded, the rate_limit_next
//!                                                countdown, the rate_limit_429 share
//!   503 outage / injected failure / fail_records (a listed record below its version) / after
//!       a "timeout" / after a hang (hang_records: no answer for hang_ms, then the 503)
//!   (no answer at all)                           apply_then_drop: applied, connection dropped
//! GET  /records   {"count":N,"records":[{feed, record_key, version, versions, removed,
//!                 fields|null, source|null}]} sorted by feed and record key (admin token)
//! GET  /arrivals?since_ms=N   {"arrivals":[{at_ms, status, record_key|null, version|null}]}
//!                 every POST /cases that arrived at or after N (Unix epoch ms; 0 or absent:
//!                 all), oldest first, the newest MAX_ARRIVALS kept (admin token)
//! GET  /stats     counters as JSON                POST /reset   clears counters, arrivals and
//!                                                               records (not the keys; admin
//!                                                               token)
//! POST /control   patch the faults (admin token)  GET  /control current faults (admin token)
//! GET  /healthz   200
//! ```
//!
//! Tokens: the configured token ([`ApiConfig::token`]) is the admin token of `/control`,
//! `/records`, `/reset` and `/arrivals` (`/stats` and `/healthz` are open). `POST /cases`
//! takes the case tokens: the `case_tokens` fault when it is non-empty (then only those), the
//! admin token while it is empty. Setting `case_tokens` rotates the secret: a consumer that
//! still holds the old one gets 401 until it reads the new one.
//!
//! Faults ([`Faults`], patched by `POST /control`): the shares `fail_5xx`, `rate_limit_429`,
//! `timeout_share` (with `timeout_ms`) and `apply_then_drop`; `latency_ms`; an outage window;
//! `limit_per_second` (a sliding-window rate limit over admitted calls) and `rate_limit_next`
//! (a countdown of 429s), both with `retry_after_secs`; the reject lists; `fail_records`;
//! `hang_records` (with `hang_ms`); `case_tokens`; `seed`.
//!
//! The arrivals log records every `POST /cases` at its arrival (`at_ms`), its status when it
//! is answered (0 until then, and for good if its connection is dropped or its client gives
//! up) and its record key and version once its body is parsed. `GET /stats` reports the
//! busiest 1000 ms sliding window and calendar second of arrivals ([`Stats`]).
//!
//! Per (feed, record_key) the API keeps the record's current fields (none after a `removed`),
//! its current version and every version it acknowledged, in order. A restarted server
//! rebuilds them, and the applied keys, from its ledger file (lines of older servers, without
//! a version, load as version 0).
//!
//! Order of checks for `POST /cases`: in-flight guard and arrivals log entry → outage (503)
//! → limit_per_second (429; decided with the arrival, under the log's lock) →
//! rate_limit_next (429) → auth (401: the case tokens) → parse (400/413, the version header)
//! → per-record in-flight guard → hang_records (held hang_ms, then 503) → latency → reject
//! lists (422) → fail_records (503) → 429 share → 5xx share → timeout share → apply (atomic
//! check-and-record under one lock: key applied before → 409 duplicate, version at or below
//! the record's → 409 stale, else record → 201, or record and then drop the connection).
//!
//! Only the method, path, status and an 8-character key prefix are ever logged; row field values
//! never appear in a log line or an error body (parse errors report line and column only), nor
//! do tokens (a faults change logs how many case tokens, reject and hang keys there are).
//! The ledger file is the API's store: it holds the fields of the records it applied.
//!
//! The server runs its own accept loop (hyper `http1` per connection) instead of `axum::serve` so
//! that a handler can make its connection be dropped without any response bytes: the handler
//! signals the per-connection [`Notify`] and stays pending; the connection task then drops the
//! hyper connection, which closes the socket, and the client sees "connection closed before
//! message completed".
//!
//! [`Notify`]: tokio::sync::Notify

mod arrivals;
mod config;
mod faults;
mod handlers;
mod ledger;
mod net;
mod server;
mod stats;
#[cfg(test)]
mod tests;

pub use arrivals::{Arrival, MAX_ARRIVALS};
pub use config::{ApiConfig, ApiError, DEFAULT_MAX_BODY_BYTES};
pub use faults::{Faults, FaultsPatch};
pub use handlers::CaseSource;
pub use ledger::Record;
pub use net::{is_docker_bridge_address, DOCKER_BRIDGE_INTERFACE};
pub use server::ApiServer;
pub use stats::Stats;
