//! Held files: what a tripped guard leaves for an operator under `held/<feed>/`.
//!
//! * `held/<feed>/<id>.source` — a server-side copy of the exact object version that was held
//!   (so approving does not depend on the upload still being there);
//! * `held/<feed>/<id>.json` — this manifest: why it was held, the counts, and the state
//!   (snapshot ETag) the diff was made against.
//!
//! The id is derived from the object's identity and that state, so a repeated event for
//! the same object holds it once. Approving re-diffs the copy against the *same* state
//! (refused if the state has moved since), sends exactly those rows and commits; the
//! idempotency keys are those of the transitions, so a crashed approval re-run sends nothing
//! twice in effect. Discarding deletes both objects and leaves a `discarded` run report.

use super::report::{Counts, GuardCheck, SchemaReport};
use super::source::SourceObject;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes and reads (its `v`).
pub const MANIFEST_VERSION: u32 = 1;

/// The manifest of a held file: `held/<feed>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldManifest {
    /// The manifest format ([`MANIFEST_VERSION`]).
    pub v: u32,
    /// The feed the file was uploaded to.
    pub feed: String,
    /// The held id ([`held_id`]): 16 lowercase hex digits.
    pub id: String,
    /// The run that held the file (its report is `runs/<feed>/<run>.json`).
    pub run: String,
    /// When the file was held (RFC 3339, ms).
    pub held_at: String,
    /// Why it was held: the tripped guards' details.
    pub reason: String,
    /// Every guard's verdict on the file.
    pub guards: Vec<GuardCheck>,
    /// The object as uploaded.
    pub source: SourceObject,
    /// The held copy's key: `held/<feed>/<id>.source`.
    pub copy_key: String,
    /// The held copy's ETag, which approving reads it under; `None` when the store gave none.
    pub copy_etag: Option<String>,
    /// ETag of the state snapshot the diff was made against (`None`: the feed had none).
    pub state_etag: Option<String>,
    /// The source of that state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SourceObject>,
    /// The held run's counts.
    pub counts: Counts,
    /// The file's columns and how they compare with the state's.
    pub schema: SchemaReport,
}

/// A stable id for "this object diffed against this state".
pub fn held_id(source: &SourceObject, state_etag: Option<&str>) -> String {
    let ident = format!(
        "{}\0{}\0{}\0{}\0{}",
        source.bucket,
        source.key,
        source.etag.as_deref().unwrap_or("").trim_matches('"'),
        source.version_id.as_deref().unwrap_or(""),
        state_etag.unwrap_or("").trim_matches('"'),
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(ident.as_bytes()))
}

/// A held id as typed by an operator: 16 lowercase hex digits.
pub fn valid_held_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(etag: &str) -> SourceObject {
        SourceObject {
            bucket: "b".into(),
            key: "incoming/f/x.csv".into(),
            etag: Some(etag.into()),
            version_id: None,
            last_modified: None,
            sequencer: None,
            size: None,
            event_time: None,
            order_metadata: None,
        }
    }

    #[test]
    fn id_is_stable_per_object_and_state() {
        let a = held_id(&src("\"e1\""), Some("\"s1\""));
        assert_eq!(a, held_id(&src("e1"), Some("s1")));
        assert!(valid_held_id(&a));
        assert_ne!(a, held_id(&src("e2"), Some("s1")));
        assert_ne!(a, held_id(&src("e1"), Some("s2")));
        assert_ne!(a, held_id(&src("e1"), None));
        assert!(!valid_held_id("../../state/x"));
        assert!(!valid_held_id("ABCDEF0123456789"));
    }
}
