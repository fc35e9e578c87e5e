//! The contact-tracing API behind a small trait: one call per message, and what the
//! transport saw (a status, a timeout, a connection failure). The answer's meaning is decided
//! in [`crate::consumer::answer`].

use crate::contract::envelope::Envelope;
use std::future::Future;

/// What the transport saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAnswer {
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    Timeout,
    /// Connection refused/reset, TLS failure, or the connection dropped before an answer.
    Connection(String),
}

pub trait Api: Send + Sync + 'static {
    /// `POST /cases` with the envelope's key as `Idempotency-Key`.
    fn deliver(&self, env: &Envelope) -> impl Future<Output = ApiAnswer> + Send;
}
