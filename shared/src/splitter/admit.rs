//! Admission: whether a run reads its object at all, decided from what is known before any
//! row is read — the feed's state, the object's identity, size and order value — without
//! I/O. A file the state already comes from is a no-op, an older one (by the feed's
//! [`ExportOrder`]) is stale, an oversized one is rejected, and so is one of a
//! metadata-ordered feed without its metadata value; an approval is refused when the state
//! has moved since the file was held.

use super::error::HeldError;
use super::source::FileRejection;
use crate::contract::held::HeldManifest;
use crate::contract::report::RunStatus;
use crate::contract::source::{ExportOrder, OrderVerdict, SourceObject};

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

/// The feed's order's verdict as an admission (`None`: go on).
fn by_order(
    order: &ExportOrder,
    source: &SourceObject,
    state: Option<StateRef<'_>>,
) -> Option<Admission> {
    match order.place(source, state.map(|s| s.source)) {
        OrderVerdict::Later => None,
        OrderVerdict::Stale(reason) => Some(end(RunStatus::Stale, reason)),
        OrderVerdict::MissingMetadata(reason) => Some(end(RunStatus::Rejected, reason)),
    }
}

/// Before the object is opened: by the event's identity and size (`limit`: the feed's
/// `max_object_bytes`) and, for a feed ordered by key, its key. `approving` is the manifest
/// of a held file being approved.
pub(super) fn before_open(
    state: Option<StateRef<'_>>,
    approving: Option<&HeldManifest>,
    source: &SourceObject,
    limit: u64,
    order: &ExportOrder,
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
            match order {
                ExportOrder::Upload => {
                    if st.source.key == source.key && source.older_than(st.source) {
                        return Ok(end(
                            RunStatus::Stale,
                            "an older version of this object (by S3 event sequencer) than the one the feed's state comes from",
                        ));
                    }
                }
                ExportOrder::Key => {
                    if let Some(a) = by_order(order, source, Some(st)) {
                        return Ok(a);
                    }
                }
                // the value is the object's: known once it is opened
                ExportOrder::Metadata(_) => {}
            }
        }
        (None, None) => {}
    }
    Ok(too_large(source.size, limit).unwrap_or(Admission::Proceed))
}

/// After the object is opened: by what the store answered (its size, last-modified time and
/// order metadata, already in `source` for an upload; `size` is the opened object's). An
/// approval is not ordered again: the file was admitted when it was held.
pub(super) fn after_open(
    state: Option<StateRef<'_>>,
    approving: bool,
    source: &SourceObject,
    size: Option<u64>,
    limit: u64,
    order: &ExportOrder,
) -> Admission {
    if let Some(a) = too_large(size, limit) {
        return a;
    }
    if approving {
        return Admission::Proceed;
    }
    match order {
        ExportOrder::Upload => match state {
            Some(st) if source.older_than(st.source) => end(
                RunStatus::Stale,
                "the object is older than the one the feed's state comes from",
            ),
            _ => Admission::Proceed,
        },
        // decided before opening
        ExportOrder::Key => Admission::Proceed,
        ExportOrder::Metadata(_) => by_order(order, source, state).unwrap_or(Admission::Proceed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::report::{Counts, SchemaReport};
    use crate::contract::source::OrderMetadata;

    const UP: ExportOrder = ExportOrder::Upload;

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
            status(before_open(st, None, &same, 100, &UP).unwrap()),
            Some(RunStatus::Noop)
        );
        let older = obj("incoming/f/a.csv", "e0", Some("0A"), None);
        assert_eq!(
            status(before_open(st, None, &older, 100, &UP).unwrap()),
            Some(RunStatus::Stale)
        );
        let newer = obj("incoming/f/a.csv", "e2", Some("0C"), None);
        assert_eq!(
            before_open(st, None, &newer, 100, &UP).unwrap(),
            Admission::Proceed
        );
        // another key is ordered after opening, by last-modified
        let other = obj("incoming/f/b.csv", "e3", None, None);
        assert_eq!(
            before_open(st, None, &other, 100, &UP).unwrap(),
            Admission::Proceed
        );
    }

    #[test]
    fn an_object_over_the_limit_is_rejected_before_and_after_opening() {
        let mut big = obj("incoming/f/a.csv", "e", None, None);
        big.size = Some(101);
        assert_eq!(
            status(before_open(None, None, &big, 100, &UP).unwrap()),
            Some(RunStatus::Rejected)
        );
        big.size = Some(100);
        assert_eq!(
            before_open(None, None, &big, 100, &UP).unwrap(),
            Admission::Proceed
        );
        let Admission::End { status, reason } = after_open(None, false, &big, Some(101), 100, &UP)
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
            status(after_open(st, false, &old, None, 100, &UP)),
            Some(RunStatus::Stale)
        );
        // an approval is not ordered again: the guards held it in its time
        assert_eq!(
            after_open(st, true, &old, None, 100, &UP),
            Admission::Proceed
        );
        let new = obj("incoming/f/c.csv", "e3", None, Some("2026-01-01T00:00:15Z"));
        assert_eq!(
            after_open(st, false, &new, None, 100, &UP),
            Admission::Proceed
        );
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
            before_open(st, Some(&m), &held, 100, &UP).unwrap(),
            Admission::Proceed
        );
        let moved = manifest(held.clone(), Some("s0"));
        assert!(matches!(
            before_open(st, Some(&moved), &held, 100, &UP),
            Err(HeldError::StateMoved { .. })
        ));
        // a feed without state: only a file held without state can be approved
        let first = manifest(held.clone(), None);
        assert_eq!(
            before_open(None, Some(&first), &held, 100, &UP).unwrap(),
            Admission::Proceed
        );
        assert!(before_open(None, Some(&m), &held, 100, &UP).is_err());
        // the state already comes from the held file: an earlier approval committed
        let applied = StateRef {
            source: &held,
            etag: Some("s9"),
        };
        assert_eq!(
            before_open(Some(applied), Some(&m), &held, 100, &UP).unwrap(),
            Admission::AlreadyApplied
        );
    }

    #[test]
    fn by_key_an_older_key_is_stale_before_opening_whatever_s3_s_times_say() {
        let prev = obj(
            "incoming/f/2026-03-01T1000.csv",
            "e1",
            None,
            Some("2026-01-01T00:00:00Z"),
        );
        let st = Some(StateRef {
            source: &prev,
            etag: Some("s1"),
        });
        // uploaded later (by S3's clock) but named earlier: a late export
        let late = obj(
            "incoming/f/2026-03-01T0930.csv",
            "e2",
            None,
            Some("2026-01-02T00:00:00Z"),
        );
        let Admission::End { status, reason } =
            before_open(st, None, &late, 100, &ExportOrder::Key).unwrap()
        else {
            panic!("a late export by key is stale")
        };
        assert_eq!(status, RunStatus::Stale);
        assert!(
            reason.contains("2026-03-01T0930") && reason.contains("2026-03-01T1000"),
            "{reason}"
        );
        // the same key re-uploaded (another object under it) is not later either
        let again = obj("incoming/f/2026-03-01T1000.csv", "e3", Some("0F"), None);
        assert_eq!(
            status_of(before_open(st, None, &again, 100, &ExportOrder::Key)),
            Some(RunStatus::Stale)
        );
        // the state's own object is still a no-op; a later key proceeds
        assert_eq!(
            status_of(before_open(st, None, &prev, 100, &ExportOrder::Key)),
            Some(RunStatus::Noop)
        );
        let next = obj(
            "incoming/f/2026-03-01T1030.csv",
            "e4",
            None,
            Some("2025-12-01T00:00:00Z"),
        );
        assert_eq!(
            before_open(st, None, &next, 100, &ExportOrder::Key).unwrap(),
            Admission::Proceed
        );
        // ...and upload order does not second-guess it after opening
        assert_eq!(
            after_open(st, false, &next, None, 100, &ExportOrder::Key),
            Admission::Proceed
        );
    }

    #[test]
    fn by_metadata_an_older_value_is_stale_and_a_missing_one_rejected_after_opening() {
        let order = ExportOrder::Metadata("export-seq".into());
        let with = |key: &str, etag: &str, v: Option<&str>| {
            let mut o = obj(key, etag, None, None);
            o.order_metadata = v.map(|v| OrderMetadata {
                name: "export-seq".into(),
                value: v.into(),
            });
            o
        };
        let prev = with("incoming/f/a.csv", "e1", Some("42"));
        let st = Some(StateRef {
            source: &prev,
            etag: Some("s1"),
        });
        let older = with("incoming/f/z.csv", "e2", Some("41"));
        // not decided before opening: the value is the opened object's
        assert_eq!(
            before_open(st, None, &older, 100, &order).unwrap(),
            Admission::Proceed
        );
        let Admission::End { status, reason } = after_open(st, false, &older, None, 100, &order)
        else {
            panic!("an older value is stale")
        };
        assert_eq!(status, RunStatus::Stale);
        assert!(
            reason.contains("\"41\"") && reason.contains("\"42\""),
            "{reason}"
        );
        let newer = with("incoming/f/b.csv", "e3", Some("43"));
        assert_eq!(
            after_open(st, false, &newer, None, 100, &order),
            Admission::Proceed
        );
        // without the value: rejected, a first file too
        let bare = with("incoming/f/c.csv", "e4", None);
        for state in [st, None] {
            let Admission::End { status, reason } =
                after_open(state, false, &bare, None, 100, &order)
            else {
                panic!("a missing value is rejected")
            };
            assert_eq!(status, RunStatus::Rejected);
            assert!(reason.contains("x-amz-meta-export-seq"), "{reason}");
        }
        // an approval is not ordered again
        assert_eq!(
            after_open(st, true, &older, None, 100, &order),
            Admission::Proceed
        );
    }

    fn status_of(a: Result<Admission, HeldError>) -> Option<RunStatus> {
        a.ok().and_then(status)
    }
}
