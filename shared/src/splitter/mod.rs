//! The splitter's decisions: for one uploaded object, diff it against the feed's state in
//! a streaming pass, let the guards decide, fan out new/changed rows, commit the next state
//! by a conditional write, and leave a run report. A file a guard stops is held for an
//! operator ([`Splitter::approve`] / [`Splitter::discard`]).
//!
//! Sending waits for the guards: the messages of the (normally few) new/changed rows are
//! kept in memory up to a budget while the file streams; a file with more than that to send
//! and no guard against it is read a second time to stream them.
//!
//! The stages are folders named by the data flow: [`source`] (bytes → rows), [`filter`]
//! (rows → new / changed / unchanged, and the guards), [`state`] (the feed's snapshot) and
//! [`sink`] (rows → messages → the queue). `admit.rs` decides, before any row is read,
//! whether a run reads its object at all; the run's phases are in `run.rs` (up to the guards)
//! and `commit.rs` (send, settle, commit), the diff pass in `pass.rs`, held files in `held.rs`.
//! [`preview`] dry-runs a feed on local files: the real splitter over an in-memory store and
//! queue (`casefeed diff`).

mod admit;
mod commit;
mod error;
pub mod filter;
mod held;
mod pass;
pub mod preview;
mod run;
pub mod sink;
pub mod source;
pub mod state;
#[cfg(test)]
mod tests;

pub use error::{HeldError, SplitError};

use crate::config::Config;
use crate::contract::event::ObjectEvent;
use crate::contract::layout::INCOMING_PREFIX;
use crate::contract::report::RunReport;
use crate::contract::source::SourceObject;
use crate::ports::queue::MessageQueue;
use crate::ports::store::{ObjectStore, OpenSpec};
use run::Job;
use sink::SenderSettings;
use std::sync::Arc;

/// How the splitter reads, buffers, sends and commits (defaults suit a Lambda function).
#[derive(Debug, Clone)]
pub struct SplitterSettings {
    /// How messages are batched and sent.
    pub sender: SenderSettings,
    /// Buffer between the S3 stream and the CSV parser.
    pub read_buffer: usize,
    /// Messages queued between the parser and the sender.
    pub channel_capacity: usize,
    /// Conditional-commit attempts before the run fails for retry.
    pub max_commit_attempts: u32,
    /// Bytes of messages kept while the guards cannot yet decide; past it, a file allowed to
    /// proceed is read a second time to send.
    pub hold_buffer_bytes: usize,
    /// Read the file on a thread of its own, ahead of fingerprinting: `None` decides (yes
    /// from two cores, when the rows are to be parsed rather than known by their lines).
    pub read_thread: Option<bool>,
    /// Recognise rows whose raw line the previous file had (by the snapshot's line hashes)
    /// without splitting or fingerprinting them. Off only to compare the two paths.
    pub known_lines: bool,
}

impl Default for SplitterSettings {
    fn default() -> Self {
        SplitterSettings {
            sender: SenderSettings::default(),
            read_buffer: 1024 * 1024,
            channel_capacity: 1000,
            max_commit_attempts: 3,
            hold_buffer_bytes: 16 * 1024 * 1024,
            read_thread: None,
            known_lines: true,
        }
    }
}

/// What became of one event record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not ours (outside `incoming/`, unknown feed, replaced object): logged, not an error.
    Skipped {
        /// The object's key.
        key: String,
        /// Why it is not processed.
        reason: String,
    },
    /// The run ended with this report (also written to `runs/<feed>/<run>.json`).
    Report(Box<RunReport>),
}

/// The splitter: one object event in, one run report out (or a failure Lambda retries).
pub struct Splitter<S: ObjectStore, Q: MessageQueue> {
    /// The data bucket's store.
    pub store: S,
    /// The work queue.
    pub queue: Q,
    /// The feeds.
    pub config: Arc<Config>,
    /// How it reads, buffers, sends and commits.
    pub settings: SplitterSettings,
}

/// A run id: processing time plus a short hash of the source object's identity.
pub fn run_id(ev: &ObjectEvent) -> String {
    let ident = format!(
        "{}\0{}\0{}\0{}",
        ev.bucket,
        ev.key,
        ev.etag.as_deref().unwrap_or(""),
        ev.version_id.as_deref().unwrap_or("")
    );
    let h = xxhash_rust::xxh3::xxh3_64(ident.as_bytes());
    // a few random bits keep two runs of one event in the same millisecond apart
    let r = {
        use std::hash::{BuildHasher, Hasher};
        let mut x = std::collections::hash_map::RandomState::new().build_hasher();
        x.write_u64(h);
        x.finish()
    };
    format!(
        "{}-{:08x}{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        h >> 32,
        r & 0xffff
    )
}

impl<S: ObjectStore, Q: MessageQueue> Splitter<S, Q> {
    /// Process one object event.
    pub async fn process(&self, ev: &ObjectEvent) -> Result<Outcome, SplitError> {
        let Some(feed) = self.config.feed_for_key(&ev.key) else {
            let reason = if ev.key.starts_with(INCOMING_PREFIX) {
                "no feed is configured for this prefix"
            } else {
                "object is outside incoming/"
            };
            return Ok(Outcome::Skipped {
                key: ev.key.clone(),
                reason: reason.into(),
            });
        };
        let feed = feed.clone();
        let source = SourceObject {
            bucket: ev.bucket.clone(),
            key: ev.key.clone(),
            etag: ev.etag.clone(),
            version_id: ev.version_id.clone(),
            last_modified: None,
            sequencer: ev.sequencer.clone(),
            size: ev.size,
            event_time: ev.event_time.clone(),
            order_metadata: None,
        };
        let job = Job {
            bucket: ev.bucket.clone(),
            read_key: ev.key.clone(),
            spec: OpenSpec::pinned(ev.version_id.clone(), ev.etag.clone(), ev.size),
            approve: None,
        };
        self.reported(&feed, run_id(ev), source, job).await
    }
}
