//! The sink stage: classes → messages → the queue port. The outbox turns a new or changed row
//! into its envelope and attributes; the sender fans them out as `SendMessageBatch` calls,
//! several in flight, retrying failed entries and reporting rows SQS refuses for good.

mod outbox;
mod sender;

pub use outbox::{EnvelopeRef, FieldsRef, Outbox, Stamps, TOMBSTONE_LINE};
pub(crate) use sender::list_sent;
pub use sender::{run_sender, Refused, SendError, SendStats, SenderSettings};
