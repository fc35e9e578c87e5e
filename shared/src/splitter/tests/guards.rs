//! Guards (flood, shrink, schema, object size) and held files: approving, an approval
//! that fails to commit, discarding.

use super::faults::{slow_down, FaultyStore, Keys, Op};
use super::harness::{by_key, lab_row, Harness, Table, BUCKET, LAB_COLS, TS1, TS2};
use crate::contract::envelope::Change;
use crate::contract::layout::held_manifest_key;
use crate::contract::report::{GuardKind, RunReport, RunStatus};
use crate::ports::store::ObjectStore;
use crate::splitter::{Outcome, SplitError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// guards: flood, shrink, schema, object size; held files approved or discarded
// ---------------------------------------------------------------------------------------

/// A harness whose `labs` feed has small guard limits: at most 20 changes, shares of 30%
/// above 5 rows.
fn guarded() -> Harness {
    let mut h = Harness::new();
    let mut c = (*h.splitter.config).clone();
    for f in &mut c.feeds {
        f.guards.max_changes = 20;
        f.guards.max_change_share = 0.3;
        f.guards.max_removed_share = 0.3;
        f.guards.guard_floor = 5;
    }
    h.splitter.config = Arc::new(c);
    h
}

fn tripped(r: &RunReport) -> Vec<GuardKind> {
    r.guards
        .iter()
        .filter(|g| g.tripped)
        .map(|g| g.guard)
        .collect()
}

impl<S: ObjectStore> Harness<S> {
    async fn approve(&self, feed: &str, id: &str) -> Result<Outcome, SplitError> {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.splitter.approve(BUCKET, feed, id),
        )
        .await
        .expect("approve hung")
    }
    fn held_keys(&self, feed: &str) -> Vec<String> {
        self.mem.keys(&format!("held/{feed}/"))
    }
}

fn report_of(o: Result<Outcome, SplitError>) -> RunReport {
    match o {
        Ok(Outcome::Report(r)) => *r,
        other => panic!("expected a report, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_guard_holds_and_approve_sends_each_row_once_and_commits() {
    let h = guarded();
    let t1 = Table::labs(1..=100, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    // the exporter reformats `collected` in 40 rows: 40 > 20 and 40% > 30%
    let mut t2 = t1.clone();
    for id in 1..=40 {
        t2.set(
            &id.to_string(),
            "collected",
            &format!("01/{:02}/2026", id % 28 + 1),
        );
    }
    let ev = h.upload("labs", "e2.csv", t2.csv());
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Held, "{:?}", r.reason);
    assert_eq!(tripped(&r), vec![GuardKind::Flood]);
    assert_eq!((r.counts.changed, r.counts.sent), (40, 0));
    assert!(h.take_sent().is_empty(), "a held file sends nothing");
    assert_eq!(
        h.snapshot_bytes("labs").unwrap(),
        state,
        "the state did not move"
    );
    let held = r.held.clone().expect("held ref");
    assert_eq!(held.manifest_key, held_manifest_key("labs", &held.id));
    assert_eq!(h.mem.get(BUCKET, &held.copy_key).unwrap(), t2.csv());
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("flood guard") && reason.contains(&held.id),
        "{reason}"
    );
    // the same event again holds the same file once
    let again = h.run(&ev).await;
    assert_eq!(again.status, RunStatus::Held);
    assert_eq!(again.held.as_ref().unwrap().id, held.id);
    assert_eq!(h.held_keys("labs").len(), 2, "one manifest, one copy");
    let listed = h.splitter.list_held(BUCKET, Some("labs")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].counts.changed, 40);

    // approve: exactly the 40 rows, once, as changes; the state now comes from e2.csv
    let a = report_of(h.approve("labs", &held.id).await);
    assert_eq!(a.status, RunStatus::Applied, "{:?}", a.reason);
    assert_eq!(a.approved_held.as_deref(), Some(held.id.as_str()));
    assert_eq!(a.source.key, ev.key);
    let msgs = h.take_sent();
    let keys: BTreeSet<String> = by_key(&msgs).into_keys().collect();
    let want: BTreeSet<String> = (1..=40).map(|i| i.to_string()).collect();
    assert_eq!(keys, want);
    assert!(msgs
        .iter()
        .all(|m| m.env.change == Change::Changed && m.env.source.key == ev.key));
    assert_eq!(a.counts.sent, 40);
    let snap = h.snapshot("labs");
    assert_eq!(snap.header.source.key, ev.key);
    assert_eq!(
        snap.get(t2.fingerprints(&h.feed("labs"), "1").key),
        Some(t2.fp(&h.feed("labs"), "1"))
    );
    assert!(h.held_keys("labs").is_empty(), "approved files leave held/");
    // approving twice is refused; the original event again is a no-op
    let e = h.approve("labs", &held.id).await.unwrap_err();
    assert!(e.to_string().contains("nothing is held"), "{e}");
    assert!(!e.retryable());
    assert_eq!(h.run(&ev).await.status, RunStatus::Noop);
    assert!(h.take_sent().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_fails_to_commit_resends_the_same_keys_and_then_commits() {
    let store = FaultyStore::new();
    let mut h = Harness::with_store(store.inner.clone(), store.clone());
    let mut c = (*h.splitter.config).clone();
    c.feeds[0].guards.max_changes = 5;
    h.splitter.config = Arc::new(c);
    let t1 = Table::labs(1..=50, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let mut t2 = t1.clone();
    for id in 1..=8 {
        t2.set(&id.to_string(), "result", "positive");
    }
    let r = h.run(&h.upload("labs", "e2.csv", t2.csv())).await;
    assert_eq!(r.status, RunStatus::Held);
    let id = r.held.unwrap().id;
    store.fail(Op::Put, Keys::Prefix("state/"), 1, slow_down);
    let e = h.approve("labs", &id).await.unwrap_err();
    assert!(e.retryable(), "{e}");
    let first: BTreeMap<String, String> = by_key(&h.take_sent())
        .into_iter()
        .map(|(k, m)| (k, m.env.idempotency_key))
        .collect();
    assert_eq!(first.len(), 8);
    assert_eq!(
        h.held_keys("labs").len(),
        2,
        "still held after a failed approval"
    );
    let a = report_of(h.approve("labs", &id).await);
    assert_eq!(a.status, RunStatus::Applied);
    let second: BTreeMap<String, String> = by_key(&h.take_sent())
        .into_iter()
        .map(|(k, m)| (k, m.env.idempotency_key))
        .collect();
    assert_eq!(first, second, "the retry sends the same transitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_file_whose_state_moved_cannot_be_approved_only_discarded() {
    let h = guarded();
    let t1 = Table::labs(1..=100, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let mut bad = t1.clone();
    bad.set_all("result", "pending");
    let r = h.run(&h.upload("labs", "bad.csv", bad.csv())).await;
    assert_eq!(r.status, RunStatus::Held);
    let id = r.held.unwrap().id;
    // a corrected export arrives and applies
    let mut good = t1.clone();
    good.set("3", "result", "positive");
    let (_, r2, msgs) = h.run_table("labs", "good.csv", &good).await;
    assert_eq!((r2.status, msgs.len()), (RunStatus::Applied, 1));
    let state = h.snapshot_bytes("labs").unwrap();
    let e = h.approve("labs", &id).await.unwrap_err();
    assert!(e.to_string().contains("has since changed"), "{e}");
    assert!(h.take_sent().is_empty());
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    let d = report_of(h.splitter.discard(BUCKET, "labs", &id).await);
    assert_eq!(d.status, RunStatus::Discarded);
    assert!(d.reason.unwrap().contains("discarded"));
    assert!(h.held_keys("labs").is_empty());
    assert_eq!(h.stored_report("labs", &d.run).status, RunStatus::Discarded);
    assert!(h.splitter.discard(BUCKET, "labs", &id).await.is_err());
    assert!(h
        .splitter
        .discard(BUCKET, "labs", "../../state/x")
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrink_guard_holds_a_truncated_file() {
    let h = guarded();
    let t1 = Table::labs(1..=100, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    // an upload cut after 30 rows (and a header-only file)
    let truncated = Table::labs(1..=30, TS2);
    let r = h.run(&h.upload("labs", "cut.csv", truncated.csv())).await;
    assert_eq!(r.status, RunStatus::Held, "{:?}", r.reason);
    assert_eq!(tripped(&r), vec![GuardKind::Shrink]);
    assert_eq!(r.counts.removed, 70);
    let header_only = Table::labs(std::iter::empty(), TS2);
    let r = h.run(&h.upload("labs", "hdr.csv", header_only.csv())).await;
    assert_eq!(r.status, RunStatus::Held);
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    assert!(h.take_sent().is_empty());
    // removals under the limit apply
    let mut fine = t1.clone();
    for id in 1..=20 {
        fine.remove(&id.to_string());
    }
    let (_, r, _) = h.run_table("labs", "fine.csv", &fine).await;
    assert_eq!((r.status, r.counts.removed), (RunStatus::Applied, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_column_holds_and_approval_sends_only_new_rows_then_compares_again() {
    let h = Harness::new();
    let t1 = Table::labs(1..=10, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    // `collected` renamed to `collection_date`; one row changed, two new
    let mut t2 = t1.clone();
    t2.set("4", "result", "positive");
    t2.push(lab_row(11, TS2));
    t2.push(lab_row(12, TS2));
    let mut t2 = t2.reorder(&LAB_COLS);
    let c = t2.idx("collected");
    t2.cols[c] = "collection_date".into();
    let r = h.run(&h.upload("labs", "e2.csv", t2.csv())).await;
    assert_eq!(r.status, RunStatus::Held, "{:?}", r.reason);
    assert_eq!(tripped(&r), vec![GuardKind::Schema]);
    assert_eq!(r.schema.removed, vec!["collected"]);
    assert_eq!(r.schema.added, vec!["collection_date"]);
    assert_eq!(
        (r.counts.new, r.counts.changed, r.counts.rebaselined),
        (2, 0, 10)
    );
    assert!(r.reason.as_deref().unwrap().contains("collected"));
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    let a = report_of(h.approve("labs", &r.held.unwrap().id).await);
    assert_eq!(a.status, RunStatus::Applied);
    let keys: Vec<String> = by_key(&h.take_sent()).into_keys().collect();
    assert_eq!(keys, vec!["11", "12"]);
    // from now on the new column set is compared
    let mut t3 = t2.clone();
    t3.set("5", "collection_date", "2026-02-02");
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert_eq!(
        (r3.status, r3.counts.changed, msgs.len()),
        (RunStatus::Applied, 1, 1)
    );
    assert!(r3.guards.iter().all(|g| !g.tripped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_size_limit_admits_the_limit_and_rejects_one_byte_more() {
    let mut h = Harness::new();
    let t1 = Table::labs(1..=10, TS1);
    let body = t1.csv();
    let limit = body.len() as u64;
    let mut c = (*h.splitter.config).clone();
    c.feeds[0].guards.max_object_bytes = limit;
    h.splitter.config = Arc::new(c);
    let r = h.run(&h.upload("labs", "at.csv", body.clone())).await;
    assert_eq!(r.status, RunStatus::Baseline);
    let state = h.snapshot_bytes("labs").unwrap();
    let mut over = body.clone();
    over.extend_from_slice(b"\n");
    let r = h.run(&h.upload("labs", "over.csv", over)).await;
    assert_eq!(r.status, RunStatus::Rejected);
    let reason = r.reason.unwrap();
    assert!(
        reason.contains(&format!("{}", limit + 1)) && reason.contains("max_object_bytes"),
        "{reason}"
    );
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    // the size S3 reports is checked too, when the event carried none
    let mut ev = h.upload("labs", "over2.csv", {
        let mut b = body.clone();
        b.extend_from_slice(b"\n\n");
        b
    });
    ev.size = None;
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
}
