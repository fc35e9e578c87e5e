//! The contracts: what outlives a deploy — the data bucket's layout, the message envelope and
//! its idempotency key, the run report, the held-file manifest, the identity and order of an
//! export, and the object event the splitter is given. Every type here is stored or sent;
//! changing one is a format change. This module imports nothing else of the crate.

pub mod envelope;
pub mod event;
pub mod held;
pub mod layout;
pub mod report;
pub mod source;
