//! The contact-tracing API behind a small trait: one call per message, and what the
//! transport saw (a status, a timeout, an unreachable API, a broken connection). The answer's meaning is decided
//! in [`crate::consumer::answer`].

use crate::contract::envelope::Envelope;
use std::future::Future;

/// What the transport saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAnswer {
    /// The API answered with an HTTP status.
    Status {
        /// The HTTP status code.
        code: u16,
        /// The `Retry-After` header as sent; `None` when there was none.
        retry_after: Option<String>,
    },
    /// No answer within the request timeout.
    Timeout,
    /// No connection could be made (refused, name not resolved, TLS handshake failed,
    /// connect timeout): the request never left, so the API cannot have applied it.
    Unreachable(String),
    /// The connection broke after it was made, before an answer (reset, closed): the
    /// request may have reached the API.
    Connection(String),
}

/// The contact-tracing API: one delivery per message.
pub trait Api: Send + Sync + 'static {
    /// `POST /cases` with the envelope's key as `Idempotency-Key`.
    fn deliver(&self, env: &Envelope) -> impl Future<Output = ApiAnswer> + Send;

    /// The API refused our credentials: read them again (a rotated secret). `true` when
    /// they changed, so a second call may succeed. By default there is nothing to re-read.
    fn refresh_credentials(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}
