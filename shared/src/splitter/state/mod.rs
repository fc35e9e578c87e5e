//! The state stage: the feed's memory of its last accepted export. The snapshot codec (a
//! compact, checksummed binary file, 32 bytes a row and its record key), the next state a
//! diff leaves, the record keys by row, and the known lines — rows the next file has byte
//! for byte, recognised without parsing.

mod known_lines;
mod names;
mod next_state;
pub(crate) mod snapshot;

pub use known_lines::{line_context, KnownLines};
pub use names::{KeyNames, NameRef};
pub use next_state::NextState;
pub(crate) use snapshot::prefetch;
pub use snapshot::{
    next_generation, Entry, Snapshot, SnapshotError, SnapshotHeader, FORMAT_VERSION, MAGIC,
};
