//! The ports: the small traits the core needs from the world — object storage, the queues,
//! the consumer's ledger table, the contact-tracing API — and their in-memory doubles for tests and local tools. The
//! adapters implement them for AWS and HTTP.

pub mod api;
pub mod gate;
pub mod ledger;
pub mod queue;
pub mod store;
