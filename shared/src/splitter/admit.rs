//! Admission: whether a run reads its object at all, decided from what is known before any
//! row is read — the feed's state, the object's identity and size — without I/O. A file the
//! state already comes from is a no-op, an older one is stale, an oversized one is rejected,
//! and an approval is refused when the state has moved since the file was held.

use super::error::HeldError;
use super::source::FileRejection;
use crate::contract::held::HeldManifest;
use crate::contract::report::RunStatus;
use crate::contract::source::SourceObject;

/// What the run does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Admission {
    /// Read the object.
    Proceed,
    /// The run ends here: nothing is read or sent and the state does not move.
    End {
        /// `noop`, `stale` or `rejected`.
        status: RunStatus,
        /// Why, for the run report.
        reason: String,
    },
    /// (approval) The state already comes from the held file: an earlier approval committed
    /// but did not clean up; the held file is removed and the run is a no-op.
    AlreadyApplied,
}

/// The feed's state as admission sees it: where it came from and its ETag.
#[derive(Debug, Clone, Copy)]
pub(super) struct StateRef<'a> {
    /// The object the state was made from.
    pub source: &'a SourceObject,
    /// The snapshot's ETag.
    pub etag: Option<&'a str>,
}

fn end(status: RunStatus, reason: impl Into<String>) -> Admission {
    Admission::End {
        status,
        reason: reason.into(),
    }
}

fn too_large(size: Option<u64>, limit: u64) -> Option<Admission> {
    size.filter(|&n| n > limit).map(|size| {
        end(
            RunStatus::Rejected,
            FileRejection::TooLarge { size, limit }.to_string() + " (max_object_bytes)",
        )
    })
}

fn same_etag(a: Option<&str>, b: Option<&str>) -> bool {
    a.map(|e| e.trim_matches('"')) == b.map(|e| e.trim_matches('"'))
}

/// Before the object is opened: by the event's identity and size (`limit`: the feed's
/// `max_object_bytes`). `approving` is the manifest of a held file being approved.
pub(super) fn before_open(
    state: Option<StateRef<'_>>,
    approving: Option<&HeldManifest>,
    source: &SourceObject,
    limit: u64,
) -> Result<Admission, HeldError> {
    match (approving, state) {
        (Some(m), st) => {
            if st.is_some_and(|st| st.source.same_object(&m.source)) {
                return Ok(Admission::AlreadyApplied);
            }
            if !same_etag(st.and_then(|s| s.etag), m.state_etag.as_deref()) {
                return Err(HeldError::StateMoved {
                    id: m.id.clone(),
                    feed: m.feed.clone(),
                });
            }
        }
        (None, Some(st)) => {
            if st.source.same_object(source) {
                return Ok(end(
                    RunStatus::Noop,
                    "the feed's state already comes from this object",
                ));
            }
            if st.source.key == source.key && source.older_than(st.source) {
                return Ok(end(
                    RunStatus::Stale,
                    "an older version of this object (by S3 event sequencer) than the one the feed's state comes from",
                ));
            }
        }
        (None, None) => {}
    }
    Ok(too_large(source.size, limit).unwrap_or(Admission::Proceed))
}

/// After the object is opened: by what the store answered (its size and last-modified time,
/// already in `source` for an upload; `size` is the opened object's).
pub(super) fn after_open(
    state: Option<StateRef<'_>>,
    approving: bool,
    source: &SourceObject,
    size: Option<u64>,
    limit: u64,
) -> Admission {
    if let Some(a) = too_large(size, limit) {
        return a;
    }
    match state {
        Some(st) if !approving && source.older_than(st.source) => end(
            RunStatus::Stale,
            "the object is older than the one the feed's state comes from",
        ),
        _ => Admission::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::report::{Counts, SchemaReport};

    fn obj(key: &str, etag: &str, seq: Option<&str>, lm: Option<&str>) -> SourceObject {
        SourceObject {
            bucket: "b".into(),
            key: key.into(),
            etag: Some(etag.into()),
            sequencer: seq.map(str::to_string),
            last_modified: lm.map(str::to_string),
            ..SourceObject::default()
        }
    }

    fn manifest(source: SourceObject, state_etag: Option<&str>) -> HeldManifest {
        HeldManifest {
            v: 1,
            feed: "f".into(),
            id: "0123456789abcdef".into(),
            run: "r".into(),
            held_at: "2026-01-01T00:00:00Z".into(),
            reason: "flood guard".into(),
            guards: Vec::new(),
            source,
            copy_key: "held/f/0123456789abcdef.source".into(),
            copy_etag: None,
            state_etag: state_etag.map(str::to_string),
            previous: None,
            counts: Counts::default(),
            schema: SchemaReport::default(),
        }
    }

    fn status(a: Admission) -> Option<RunStatus> {
        match a {
            Admission::End { status, .. } => Some(status),
            _ => None,
        }
    }

    #[test]
    fn the_state_s_own_object_is_a_noop_and_an_older_version_stale() {
        let prev = obj("incoming/f/a.csv", "e1", Some("0B"), None);
        let st = Some(StateRef {
            source: &prev,
            etag: Some("s1"),
        });
        let same = obj("incoming/f/a.csv", "\"e1\"", Some("0B"), None);
        assert_eq!(
            status(before_open(st, None, &same, 100).unwrap()),
            Some(RunStatus::Noop)
        );
        let older = obj("incoming/f/a.csv", "e0", Some("0A"), None);
        assert_eq!(
            status(before_open(st, None, &older, 100).unwrap()),
            Some(RunStatus::Stale)
        );
        let newer = obj("incoming/f/a.csv", "e2", Some("0C"), None);
        assert_eq!(
            before_open(st, None, &newer, 100).unwrap(),
            Admission::Proceed
        );
        // another key is ordered after opening, by last-modified
        let other = obj("incoming/f/b.csv", "e3", None, None);
        assert_eq!(
            before_open(st, None, &other, 100).unwrap(),
            Admission::Proceed
        );
    }

    #[test]
    fn an_object_over_the_limit_is_rejected_before_and_after_opening() {
        let mut big = obj("incoming/f/a.csv", "e", None, None);
        big.size = Some(101);
        assert_eq!(
            status(before_open(None, None, &big, 100).unwrap()),
            Some(RunStatus::Rejected)
        );
        big.size = Some(100);
        assert_eq!(
            before_open(None, None, &big, 100).unwrap(),
            Admission::Proceed
        );
        let Admission::End { status, reason } = after_open(None, false, &big, Some(101), 100)
        else {
            panic!("the opened size decides too")
        };
        assert_eq!(status, RunStatus::Rejected);
        assert!(reason.contains("max_object_bytes"), "{reason}");
    }

    #[test]
    fn after_opening_an_upload_older_than_the_state_is_stale() {
        let prev = obj("incoming/f/a.csv", "e1", None, Some("2026-01-01T00:00:10Z"));
        let st = Some(StateRef {
            source: &prev,
            etag: None,
        });
        let old = obj("incoming/f/b.csv", "e2", None, Some("2026-01-01T00:00:05Z"));
        assert_eq!(
            status(after_open(st, false, &old, None, 100)),
            Some(RunStatus::Stale)
        );
        // an approval is not ordered again: the guards held it in its time
        assert_eq!(after_open(st, true, &old, None, 100), Admission::Proceed);
        let new = obj("incoming/f/c.csv", "e3", None, Some("2026-01-01T00:00:15Z"));
        assert_eq!(after_open(st, false, &new, None, 100), Admission::Proceed);
    }

    #[test]
    fn an_approval_needs_the_state_it_was_diffed_against() {
        let held = obj("incoming/f/h.csv", "eh", None, None);
        let prev = obj("incoming/f/a.csv", "e1", None, None);
        let st = Some(StateRef {
            source: &prev,
            etag: Some("\"s1\""),
        });
        let m = manifest(held.clone(), Some("s1"));
        assert_eq!(
            before_open(st, Some(&m), &held, 100).unwrap(),
            Admission::Proceed
        );
        let moved = manifest(held.clone(), Some("s0"));
        assert!(matches!(
            before_open(st, Some(&moved), &held, 100),
            Err(HeldError::StateMoved { .. })
        ));
        // a feed without state: only a file held without state can be approved
        let first = manifest(held.clone(), None);
        assert_eq!(
            before_open(None, Some(&first), &held, 100).unwrap(),
            Admission::Proceed
        );
        assert!(before_open(None, Some(&m), &held, 100).is_err());
        // the state already comes from the held file: an earlier approval committed
        let applied = StateRef {
            source: &held,
            etag: Some("s9"),
        };
        assert_eq!(
            before_open(Some(applied), Some(&m), &held, 100).unwrap(),
            Admission::AlreadyApplied
        );
    }
}
