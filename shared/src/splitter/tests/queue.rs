//! The queue: transient and lasting failures, rows it refuses for good, and more to send
//! than the hold buffer holds (a second pass).

use super::harness::{
    assert_counts, by_key, history, ikey, lab_row, Harness, QueueMode, Table, TS1, TS2, TS3,
};
use crate::contract::envelope::Change;
use crate::contract::report::{RunReport, RunStatus};
use crate::splitter::SplitError;
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------
// queue failures
// ---------------------------------------------------------------------------------------

/// Baseline 1..=30; the next file changes 1..=25 and adds 31..=35: 30 messages.
fn thirty_changes() -> (Table, Table) {
    let t1 = Table::labs(1..=30, TS1);
    let mut t2 = t1.clone();
    for id in 1..=25 {
        t2.set(&id.to_string(), "result", "positive");
    }
    for id in 31..=35 {
        t2.push(lab_row(id, TS1));
    }
    t2.set_all("export_timestamp", TS2);
    (t1, t2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_queue_failures_still_send_everything_exactly_once() {
    let h = Harness::new();
    let (t1, t2) = thirty_changes();
    h.run_table("labs", "e1.csv", &t1).await;
    h.queue.set_mode(QueueMode::Flaky);
    let (_, r, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_counts(&r, 35, 5, 25, 0, 5, 30);
    assert_eq!(msgs.len(), 30);
    let keys: BTreeSet<&str> = msgs
        .iter()
        .map(|m| m.env.idempotency_key.as_str())
        .collect();
    assert_eq!(keys.len(), 30, "every message accepted exactly once");
    let records: BTreeSet<&str> = msgs.iter().map(|m| m.env.record_key.as_str()).collect();
    assert_eq!(records.len(), 30);
    let retried = h
        .queue
        .attempts
        .lock()
        .unwrap()
        .values()
        .filter(|n| **n > 1)
        .count();
    assert!(retried > 0, "the fake queue really failed some entries");
    assert!(h.queue.calls() > 3, "retries took extra calls");
    assert_eq!(h.snapshot("labs").header.source.key, "incoming/labs/e2.csv");
    // the run's sent list names every accepted message once, by its keys (no fields)
    let key = r.sent_key.as_deref().expect("a sent list");
    assert_eq!(key, crate::contract::layout::sent_key("labs", &r.run));
    let listed = h.rejects(key);
    assert_eq!(listed.len(), 30);
    let listed_keys: BTreeSet<&str> = listed
        .iter()
        .map(|l| l["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(listed_keys, keys);
    for l in &listed {
        assert_eq!(l.as_object().unwrap().len(), 3, "{l}");
        let change = l["change"].as_str().unwrap();
        assert!(change == "new" || change == "changed", "{l}");
        assert!(records.contains(l["record_key"].as_str().unwrap()), "{l}");
    }
    assert_eq!(r.counts.sent_unlisted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_always_fails_fails_the_run_and_keeps_the_state() {
    for mode in [QueueMode::CallErr, QueueMode::EntryErr] {
        let h = Harness::new();
        let feed = h.feed("labs");
        let (t1, t2) = thirty_changes();
        h.run_table("labs", "e1.csv", &t1).await;
        let state = h.snapshot_bytes("labs").unwrap();
        h.queue.set_mode(mode);
        let ev = h.upload("labs", "e2.csv", t2.csv());
        let err = h.process(&ev).await.expect_err("the run must fail");
        assert!(matches!(err, SplitError::Send(_)), "{mode:?}: {err:?}");
        assert!(err.retryable(), "{mode:?}");
        assert!(h.take_sent().is_empty());
        // the failed run leaves a report
        let failed: Vec<RunReport> = h
            .reports("labs")
            .into_iter()
            .filter(|r| r.status == RunStatus::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "{mode:?}: one failed run report");
        assert_eq!(failed[0].source.key, ev.key);
        assert_eq!(failed[0].counts.sent, 0);
        assert!(failed[0].snapshot_etag.is_none());
        assert_eq!(
            failed[0].reason.as_deref(),
            Some(err.to_string().as_str()),
            "{mode:?}"
        );
        assert_eq!(
            h.snapshot_bytes("labs").unwrap(),
            state,
            "{mode:?}: state moved"
        );
        let attempted = h.queue.attempted_keys();

        // Lambda retries the event once SQS is back: everything goes, under the same keys
        h.queue.set_mode(QueueMode::Healthy);
        let r = h.run(&ev).await;
        assert_eq!(r.status, RunStatus::Applied);
        let msgs = h.take_sent();
        assert_eq!(msgs.len(), 30);
        assert_eq!(r.counts.sent, 30);
        let keys: BTreeSet<String> = msgs.iter().map(|m| m.env.idempotency_key.clone()).collect();
        assert_eq!(keys.len(), 30);
        assert!(!attempted.is_empty());
        assert!(
            attempted.is_subset(&keys),
            "{mode:?}: the retry uses the same keys"
        );
        assert_eq!(
            h.snapshot("labs").entries().collect::<Vec<_>>(),
            t2.entries(&feed)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_queue_refuses_are_rejected_and_retried_by_the_next_file() {
    let h = Harness::new();
    let feed = h.feed("labs");
    let t1 = Table::labs(1..=10, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let mut t2 = t1.clone();
    t2.set("3", "result", "positive");
    t2.set("7", "result", "positive");
    t2.push(lab_row(11, TS1));
    *h.queue.refuse.lock().unwrap() = vec![
        "\"record_key\":\"7\"".into(),
        "\"record_key\":\"11\"".into(),
    ];
    let (_, r, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_counts(&r, 11, 1, 2, 0, 8, 1);
    assert_eq!(r.counts.rejected, 2);
    assert_eq!(msgs[0].env.record_key, "3");
    let rejects = h.rejects(r.rejects_key.as_deref().unwrap());
    let mut lines: Vec<u64> = rejects
        .iter()
        .map(|j| j["line"].as_u64().unwrap())
        .collect();
    lines.sort();
    assert_eq!(lines, [8, 12], "rows 7 and 11 are on lines 8 and 12");
    assert!(rejects
        .iter()
        .all(|j| j["reason"].as_str().unwrap().contains("SQS refused")));
    // the refused rows stay at their previous state
    let snap = h.snapshot("labs");
    assert_eq!(
        snap.get(t2.fingerprints(&feed, "7").key),
        Some(t1.fp(&feed, "7"))
    );
    assert_eq!(snap.get(t2.fingerprints(&feed, "11").key), None);
    assert_eq!(
        snap.get(t2.fingerprints(&feed, "3").key),
        Some(t2.fp(&feed, "3"))
    );
    assert_eq!(
        t2.state_in(&feed, &snap, "7"),
        Some(history(t1.fp(&feed, "7"), &[])),
        "a refused row keeps its whole previous state, history included"
    );

    // the next file (SQS fine again) sends them
    h.queue.refuse.lock().unwrap().clear();
    let mut t3 = t2.clone();
    t3.set_all("export_timestamp", TS3);
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert_counts(&r3, 11, 1, 1, 0, 9, 2);
    let got = by_key(&msgs);
    assert_eq!(got["7"].env.change, Change::Changed);
    assert_eq!(got["11"].env.change, Change::New);
    assert_eq!(
        got["7"].env.idempotency_key,
        ikey(
            "labs",
            "7",
            Some(history(t1.fp(&feed, "7"), &[])),
            t3.fp(&feed, "7"),
            3
        )
    );
}

// ---------------------------------------------------------------------------------------
// more to send than the buffer holds
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_to_send_than_the_buffer_holds_streams_in_a_second_pass() {
    let mut h = Harness::new();
    h.splitter.settings.hold_buffer_bytes = 2_000;
    let t1 = Table::labs(1..=60, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let mut t2 = t1.clone();
    for id in 1..=50 {
        t2.set(&id.to_string(), "result", "positive");
    }
    t2.push(lab_row(61, TS2));
    let (_, r, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_eq!((r.counts.changed, r.counts.new, msgs.len()), (50, 1, 51));
    assert_eq!(by_key(&msgs).len(), 51);
}
