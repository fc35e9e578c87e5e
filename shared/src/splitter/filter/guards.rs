//! Guards: the decisions that stop a file before it floods the contact-tracing API or moves
//! the feed's state on bad data. A tripped guard *holds* the file: nothing is sent, the state
//! does not move, and the diff waits under `held/<feed>/` for an operator to approve or
//! discard it (see [`crate::contract::held`]).
//!
//! Checked after the file is diffed (the counts are needed) and before anything is sent:
//! * **flood** — new+changed rows above `max_changes`, or above `max_change_share` of the
//!   previous row count (and above `guard_floor`);
//! * **shrink** — removed rows above `max_removed_share` of the previous row count (and above
//!   `guard_floor`): a truncated upload;
//! * **schema** — a column the state's fingerprints cover is gone (removed or renamed):
//!   changes to existing rows cannot be detected in this file.
//!
//! Stale and repeated files, and the object-size limit, are decided before the diff in the
//! splitter; row-size and column-count limits in [`crate::splitter::source`].

use crate::config::Guards;
use crate::contract::report::{GuardCheck, GuardKind};
use crate::splitter::filter::differ::DiffCounts;

/// What the guards look at.
#[derive(Debug, Clone, Copy)]
pub struct GuardInput<'a> {
    /// Rows in the feed's state before this file; `None` for a feed's first file.
    pub previous_rows: Option<u64>,
    /// The file's rows by class.
    pub counts: DiffCounts,
    /// Whether this run sends its new/changed rows (a baseline does not).
    pub sends: bool,
    /// Compared columns of the state that the file no longer has.
    pub removed_columns: &'a [String],
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        100.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

/// Every applicable guard's verdict, in a fixed order.
pub fn evaluate(g: &Guards, input: &GuardInput<'_>) -> Vec<GuardCheck> {
    let mut out = Vec::new();
    let c = input.counts;
    if input.sends {
        let changes = c.new + c.changed;
        let (tripped, share_part) = match input.previous_rows {
            Some(prev) if prev > 0 => {
                let over_share =
                    changes > g.guard_floor && changes as f64 > g.max_change_share * prev as f64;
                (
                    changes > g.max_changes || over_share,
                    format!(
                        " = {:.2}% of the {prev} previous rows (limit {:.2}% above {} rows)",
                        pct(changes, prev),
                        g.max_change_share * 100.0,
                        g.guard_floor
                    ),
                )
            }
            _ => (changes > g.max_changes, String::new()),
        };
        out.push(GuardCheck {
            guard: GuardKind::Flood,
            tripped,
            detail: format!(
                "{changes} new+changed rows ({} new, {} changed){share_part}; limit {} rows",
                c.new, c.changed, g.max_changes
            ),
        });
    }
    if let Some(prev) = input.previous_rows {
        let tripped = c.removed > g.guard_floor
            && prev > 0
            && c.removed as f64 > g.max_removed_share * prev as f64;
        out.push(GuardCheck {
            guard: GuardKind::Shrink,
            tripped,
            detail: format!(
                "{} of the {prev} previous rows are missing ({:.2}%; limit {:.2}% above {} rows)",
                c.removed,
                pct(c.removed, prev),
                g.max_removed_share * 100.0,
                g.guard_floor
            ),
        });
        let tripped = !input.removed_columns.is_empty();
        out.push(GuardCheck {
            guard: GuardKind::Schema,
            tripped,
            detail: if tripped {
                format!(
                    "compared column(s) missing from the file: {}; changes to the {} existing rows cannot be detected in this file (approving sends the {} new rows and re-baselines the rest)",
                    input.removed_columns.join(", "),
                    c.rebaselined,
                    c.new
                )
            } else {
                "every compared column of the state is present".into()
            },
        });
    }
    out
}

/// The tripped guards' details joined into one reason, `None` when the file may proceed.
pub fn hold_reason(checks: &[GuardCheck]) -> Option<String> {
    let tripped: Vec<String> = checks
        .iter()
        .filter(|c| c.tripped)
        .map(|c| format!("{} guard: {}", c.guard.as_str(), c.detail))
        .collect();
    if tripped.is_empty() {
        None
    } else {
        Some(tripped.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(new: u64, changed: u64, removed: u64) -> DiffCounts {
        DiffCounts {
            new,
            changed,
            removed,
            ..DiffCounts::default()
        }
    }

    fn tripped(g: &Guards, input: GuardInput<'_>) -> Vec<GuardKind> {
        evaluate(g, &input)
            .into_iter()
            .filter(|c| c.tripped)
            .map(|c| c.guard)
            .collect()
    }

    fn input(prev: Option<u64>, c: DiffCounts) -> GuardInput<'static> {
        GuardInput {
            previous_rows: prev,
            counts: c,
            sends: true,
            removed_columns: &[],
        }
    }

    #[test]
    fn flood_absolute_and_share() {
        let g = Guards {
            max_changes: 1000,
            max_change_share: 0.10,
            guard_floor: 100,
            ..Guards::default()
        };
        // 3% of 10k: fine
        assert!(tripped(&g, input(Some(10_000), counts(200, 100, 0))).is_empty());
        // absolute limit
        assert_eq!(
            tripped(&g, input(Some(1_000_000), counts(900, 101, 0))),
            vec![GuardKind::Flood]
        );
        // exactly at the limit is allowed
        assert!(tripped(&g, input(Some(1_000_000), counts(900, 100, 0))).is_empty());
        // share limit: 20% of 2,000
        assert_eq!(
            tripped(&g, input(Some(2_000), counts(0, 400, 0))),
            vec![GuardKind::Flood]
        );
        // a small feed: 50 changes of 60 rows stay under the floor
        assert!(tripped(&g, input(Some(60), counts(20, 30, 0))).is_empty());
        // a first file that sends: only the absolute limit applies
        assert!(tripped(&g, input(None, counts(1000, 0, 0))).is_empty());
        assert_eq!(
            tripped(&g, input(None, counts(1001, 0, 0))),
            vec![GuardKind::Flood]
        );
    }

    #[test]
    fn baseline_runs_have_no_flood_guard() {
        let g = Guards {
            max_changes: 10,
            ..Guards::default()
        };
        let mut i = input(None, counts(1_000_000, 0, 0));
        i.sends = false;
        assert!(evaluate(&g, &i).is_empty());
    }

    #[test]
    fn shrink_guard() {
        let g = Guards::default(); // 10% above 100 rows
        assert_eq!(
            tripped(&g, input(Some(500_000), counts(0, 0, 250_000))),
            vec![GuardKind::Shrink]
        );
        assert!(tripped(&g, input(Some(500_000), counts(0, 0, 300))).is_empty());
        // a header-only file of a big feed
        assert_eq!(
            tripped(&g, input(Some(1_000), counts(0, 0, 1_000))),
            vec![GuardKind::Shrink]
        );
        // tiny feeds stay under the floor
        assert!(tripped(&g, input(Some(50), counts(0, 0, 50))).is_empty());
    }

    #[test]
    fn schema_guard_names_columns_and_no_values() {
        let g = Guards::default();
        let removed = vec!["result".to_string()];
        let c = DiffCounts {
            new: 3,
            rebaselined: 97,
            ..DiffCounts::default()
        };
        let checks = evaluate(
            &g,
            &GuardInput {
                previous_rows: Some(100),
                counts: c,
                sends: true,
                removed_columns: &removed,
            },
        );
        let reason = hold_reason(&checks).unwrap();
        assert!(reason.starts_with("schema guard:"), "{reason}");
        assert!(
            reason.contains("result") && reason.contains("97"),
            "{reason}"
        );
    }

    #[test]
    fn reasons_list_every_tripped_guard() {
        let g = Guards::default();
        let checks = evaluate(&g, &input(Some(1_000), counts(0, 500, 400)));
        let r = hold_reason(&checks).unwrap();
        assert!(
            r.contains("flood guard") && r.contains("shrink guard"),
            "{r}"
        );
        assert!(hold_reason(&evaluate(&g, &input(Some(1_000), counts(1, 1, 1)))).is_none());
    }
}
