//! Removed records: the removed list every committed run that removed records writes, the
//! tombstones of a feed with `removed = "send"`, a held shrink, a state written before
//! record keys were kept, and a tombstone the queue refuses.

use super::faults::{slow_down, FaultyStore, Keys, Op};
use super::harness::{by_key, diff_scenario, Harness, Table, BUCKET, TS1, TS2};
use crate::config::Removals;
use crate::contract::envelope::{idempotency_key, Change};
use crate::contract::layout::removed_key;
use crate::contract::report::{RemovedRecord, RunReport, RunStatus};
use crate::ports::store::ObjectStore;
use crate::splitter::state::MAGIC;
use crate::splitter::Outcome;
use std::collections::BTreeSet;

fn sending(h: Harness) -> Harness {
    h.configure("labs", |f| f.removed = Removals::Send)
}

impl<S: ObjectStore> Harness<S> {
    /// The removed list a run wrote, as the report names it.
    fn removed_list(&self, r: &RunReport) -> Vec<RemovedRecord> {
        let key = r
            .removed_key
            .as_deref()
            .expect("the report names the removed list");
        assert_eq!(key, removed_key(&r.feed, &r.run));
        let body = self.mem.get(BUCKET, key).expect("removed list object");
        std::str::from_utf8(&body)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
                assert_eq!(keys, ["record_key", "version"], "keys only, no fields");
                serde_json::from_value(v).unwrap()
            })
            .collect()
    }
}

fn keys_of(list: &[RemovedRecord]) -> BTreeSet<String> {
    list.iter().map(|r| r.record_key.clone()).collect()
}

fn ids(range: std::ops::RangeInclusive<u32>) -> BTreeSet<String> {
    range.map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_removed_records_are_listed_by_key_and_not_sent() {
    let h = Harness::new();
    let (t1, t2) = diff_scenario();
    let (_, r1, _) = h.run_table("labs", "e1.csv", &t1).await;
    assert_eq!(r1.removed_key, None, "a baseline removes nothing");
    let (_, r2, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!((r2.status, r2.counts.removed), (RunStatus::Applied, 6));
    assert_eq!(msgs.len(), 8, "only the new and changed rows");
    assert!(msgs.iter().all(|m| m.env.change != Change::Removed));
    let list = h.removed_list(&r2);
    assert_eq!(keys_of(&list), ids(25..=30));
    let version = h.snapshot("labs").header.generation;
    assert!(list.iter().all(|r| r.version == version && version == 2));
    assert_eq!(r2.counts.removed_unnamed, 0);
    // removed records leave the state
    let snap = h.snapshot("labs");
    assert!(snap
        .entry(t1.fingerprints(&h.feed("labs"), "25").key)
        .is_none());
    // a file that removes nothing writes no list
    let (_, r3, _) = h.run_table("labs", "e3.csv", &t2).await;
    assert_eq!((r3.counts.removed, r3.removed_key), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_removals_sends_one_tombstone_per_removed_record_and_none_on_a_rerun() {
    let h = sending(Harness::new());
    let feed = h.feed("labs");
    let (t1, t2) = diff_scenario();
    h.run_table("labs", "e1.csv", &t1).await;
    let before = h.snapshot("labs");
    let (ev2, r2, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r2.status, RunStatus::Applied);
    assert_eq!((r2.counts.removed, r2.counts.sent), (6, 8 + 6));
    let version = h.snapshot("labs").header.generation;
    let tombs: Vec<_> = msgs
        .iter()
        .filter(|m| m.env.change == Change::Removed)
        .cloned()
        .collect();
    let by = by_key(&tombs);
    assert_eq!(by.keys().cloned().collect::<BTreeSet<_>>(), ids(25..=30));
    for (k, m) in &by {
        assert!(
            m.env.fields.is_empty(),
            "{k}: a tombstone carries no fields"
        );
        assert_eq!(m.env.version, version, "{k}");
        assert_eq!(m.attrs["change"], "removed");
        let prev = t1.state_in(&feed, &before, k).unwrap();
        assert_eq!(
            m.env.idempotency_key,
            idempotency_key("labs", &[k.as_bytes()], Some(prev), None, version),
            "{k}"
        );
    }
    // they come after the rows' messages
    let first_tomb = msgs
        .iter()
        .position(|m| m.env.change == Change::Removed)
        .unwrap();
    assert!(msgs[first_tomb..]
        .iter()
        .all(|m| m.env.change == Change::Removed));
    assert_eq!(keys_of(&h.removed_list(&r2)), ids(25..=30));
    // the same event again: nothing more
    let again = h.run(&ev2).await;
    assert_eq!(again.status, RunStatus::Noop);
    assert!(h.take_sent().is_empty());
    // and the same content again under another name: the records are gone already
    let (_, r3, msgs) = h.run_table("labs", "e2-again.csv", &t2).await;
    assert_eq!((r3.counts.removed, msgs.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_shrink_sends_no_tombstones_until_it_is_approved() {
    let h = sending(Harness::new()).configure("labs", |f| {
        f.guards.max_removed_share = 0.3;
        f.guards.guard_floor = 5;
    });
    let t1 = Table::labs(1..=100, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    let cut = Table::labs(1..=30, TS2);
    let r = h.run(&h.upload("labs", "cut.csv", cut.csv())).await;
    assert_eq!((r.status, r.counts.removed), (RunStatus::Held, 70));
    assert!(h.take_sent().is_empty(), "a held file sends no tombstones");
    assert_eq!(r.removed_key, None, "nor lists removals it did not commit");
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    let id = r.held.unwrap().id;
    let Ok(Outcome::Report(a)) = h.splitter.approve(BUCKET, "labs", &id).await else {
        panic!("approve failed")
    };
    assert_eq!(a.status, RunStatus::Applied, "{:?}", a.reason);
    let msgs = h.take_sent();
    assert_eq!(msgs.len(), 70);
    assert!(msgs.iter().all(|m| m.env.change == Change::Removed));
    assert_eq!(
        by_key(&msgs).into_keys().collect::<BTreeSet<_>>(),
        ids(31..=100)
    );
    assert_eq!(a.counts.sent, 70);
    assert_eq!(keys_of(&h.removed_list(&a)), ids(31..=100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_state_is_read_its_removals_counted_unnamed_and_the_next_state_is_format_3() {
    let h = sending(Harness::new());
    let feed = h.feed("labs");
    let (t1, t2) = diff_scenario();
    h.run_table("labs", "e1.csv", &t1).await;
    // the state as the previous release wrote it
    let v2 = h.snapshot("labs").encode_format_2();
    assert_eq!(&v2[..8], b"CFSNAP\x00\x02");
    h.restore_snapshot("labs", v2);
    let (_, r2, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!((r2.status, r2.counts.removed), (RunStatus::Applied, 6));
    assert_eq!(
        r2.counts.removed_unnamed, 6,
        "a format 2 state cannot name them"
    );
    assert!(h.removed_list(&r2).is_empty());
    assert_eq!(msgs.len(), 8, "no tombstone without a record key");
    assert_eq!(r2.counts.known, 0, "its rows take the full path once");
    // the next state is format 3 and names every row, from the file
    let bytes = h.snapshot_bytes("labs").unwrap();
    assert_eq!(&bytes[..8], MAGIC);
    let snap = h.snapshot("labs");
    for k in t2.keys() {
        let pos = snap.position(t2.fingerprints(&feed, &k).key).unwrap();
        assert_eq!(snap.name_at(pos), Some(k.as_bytes()), "{k}");
    }
    // from then on: rows known by their line, removals named
    let mut t3 = t2.clone();
    t3.remove("3");
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert!(r3.counts.known > 0);
    assert_eq!((r3.counts.removed, r3.counts.removed_unnamed), (1, 0));
    assert_eq!(keys_of(&h.removed_list(&r3)), ids(3..=3));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].env.change, Change::Removed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_the_queue_refuses_keeps_its_record_for_the_next_file() {
    let h = sending(Harness::new());
    let feed = h.feed("labs");
    let (t1, t2) = diff_scenario();
    h.run_table("labs", "e1.csv", &t1).await;
    *h.queue.refuse.lock().unwrap() = vec![r#""change":"removed","record_key":"27","#.into()];
    let (_, r2, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r2.status, RunStatus::Applied);
    let tombs: BTreeSet<String> = msgs
        .iter()
        .filter(|m| m.env.change == Change::Removed)
        .map(|m| m.env.record_key.clone())
        .collect();
    assert_eq!(
        tombs,
        ids(25..=30).into_iter().filter(|k| k != "27").collect()
    );
    assert_eq!(r2.counts.rejected, 1);
    let rejects = h.rejects(r2.rejects_key.as_deref().unwrap());
    assert_eq!(rejects.len(), 1);
    assert!(
        rejects[0]["reason"].as_str().unwrap().contains("tombstone"),
        "{}",
        rejects[0]
    );
    // 27 stays in the state as it was, named; the others are gone
    let snap = h.snapshot("labs");
    let pos = snap
        .position(t1.fingerprints(&feed, "27").key)
        .expect("27 kept");
    assert_eq!(snap.name_at(pos), Some(&b"27"[..]));
    assert_eq!(snap.content_at(pos), t1.fp(&feed, "27"));
    assert!(snap.position(t1.fingerprints(&feed, "26").key).is_none());
    // the next file removes it again, and its tombstone goes out
    h.queue.refuse.lock().unwrap().clear();
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t2).await;
    assert_eq!(r3.counts.removed, 1);
    let m = &msgs[0];
    assert_eq!(
        (msgs.len(), m.env.change, m.env.record_key.as_str()),
        (1, Change::Removed, "27")
    );
    assert_eq!(m.env.version, h.snapshot("labs").header.generation);
    assert!(h
        .snapshot("labs")
        .position(t1.fingerprints(&feed, "27").key)
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_removed_list_write_fails_the_run_before_the_state_moves() {
    let store = FaultyStore::new();
    let h = Harness::with_store(store.inner.clone(), store.clone());
    let (t1, t2) = diff_scenario();
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    store.fail(Op::Put, Keys::Prefix("removed/"), 1, slow_down);
    let ev = h.upload("labs", "e2.csv", t2.csv());
    let err = h.process(&ev).await.expect_err("the run fails");
    assert!(err.retryable(), "{err}");
    assert_eq!(
        h.snapshot_bytes("labs").unwrap(),
        state,
        "the state did not move"
    );
    h.take_sent();
    // Lambda's retry writes it and commits
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_eq!(keys_of(&h.removed_list(&r)), ids(25..=30));
}
