//! The adapters: the only code that talks to AWS or HTTP. Each implements a port
//! ([`crate::ports`]) over its SDK client; [`lambda`] translates Lambda events to and from the
//! core's types; [`mod@env`] wires a function from its environment at start-up; `sdk` is the
//! one place an SDK error becomes a message and a retryable/permanent class.

pub mod dynamodb;
mod dynamodb_gate;
pub mod env;
pub mod http_api;
pub mod lambda;
pub mod s3;
pub(crate) mod sdk;
pub mod secrets;
pub mod sqs;
