//! The first file of a feed: a baseline that sends nothing, or (`first_file = "send"`) every
//! row as new.

use super::harness::{
    assert_counts, by_key, cases, ikey, Harness, Table, BUCKET, LAB_COLS, LAB_HASHED, TS1,
};
use crate::contract::envelope::Change;
use crate::contract::layout::{run_report_key, snapshot_key};
use crate::contract::report::RunStatus;
use crate::ports::store::ObjectStore;

// ---------------------------------------------------------------------------------------
// baseline
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_file_becomes_the_baseline_and_sends_nothing() {
    let h = Harness::new();
    let t = Table::labs(1..=20, TS1);
    let (ev, r, msgs) = h.run_table("labs", "export-001.csv", &t).await;
    assert_eq!(r.status, RunStatus::Baseline);
    assert!(msgs.is_empty());
    assert_eq!(
        h.queue.calls(),
        0,
        "no SendMessageBatch call for a baseline"
    );
    assert_eq!(r.counts.read, 20);
    assert_eq!(r.counts.sent, 0);
    assert_eq!(r.counts.rejected, 0);
    assert_eq!(r.counts.removed, 0);
    assert_eq!(r.counts.duplicate, 0);
    assert_eq!(r.send_calls, 0);
    assert_eq!(r.commit_attempts, 1);
    assert!(r.previous.is_none());
    assert!(r.rejects_key.is_none());
    assert!(r.reason.is_none());
    assert_eq!(r.schema.columns, LAB_COLS);
    assert_eq!(r.schema.hashed_columns, LAB_HASHED);
    assert!(r.schema.added.is_empty() && r.schema.removed.is_empty());
    assert_eq!(r.source.etag, ev.etag);
    assert_eq!(r.source.size, Some(t.csv().len() as u64));

    let snap = h.snapshot("labs");
    assert_eq!(snap.header.row_count, 20);
    assert_eq!(snap.len(), 20);
    assert_eq!(snap.header.feed, "labs");
    assert_eq!(snap.header.key_columns, ["record_id"]);
    assert_eq!(snap.header.hashed_columns, LAB_HASHED);
    assert_eq!(snap.header.source.key, ev.key);
    assert_eq!(snap.header.source.etag, ev.etag);
    assert_eq!(snap.header.run, r.run);
    assert_eq!(
        snap.entries().collect::<Vec<_>>(),
        t.entries(&h.feed("labs"))
    );
    let state = h
        .mem
        .get_bytes(BUCKET, &snapshot_key("labs"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.snapshot_etag, state.etag);

    // exactly one report, under runs/labs/, and nothing else written but the state
    assert_eq!(h.mem.keys("runs/"), [run_report_key("labs", &r.run)]);
    assert!(run_report_key("labs", &r.run).starts_with("runs/labs/"));
    assert_eq!(h.mem.keys("incoming/"), std::slice::from_ref(&ev.key));
    assert_eq!(h.mem.keys("state/"), [snapshot_key("labs")]);
    assert!(h.mem.keys("rejects/").is_empty());
}

// ---------------------------------------------------------------------------------------
// first_file = "send"
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_file_of_a_send_feed_sends_every_row_as_new() {
    let h = Harness::new();
    let t = cases(1..=12);
    let (_, r, msgs) = h.run_table("cases", "c1.csv", &t).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_counts(&r, 12, 12, 0, 0, 0, 12);
    assert_eq!(r.send_calls, 2, "ceil(12 / 10) SendMessageBatch calls");
    let got = by_key(&msgs);
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), t.keys());
    let feed = h.feed("cases");
    for (k, m) in &got {
        assert_eq!(m.env.change, Change::New);
        assert_eq!(m.env.version, 1, "the first state is generation 1");
        assert_eq!(m.attrs["change"], "new");
        assert_eq!(m.env.fields, t.fields(k));
        assert_eq!(
            m.env.idempotency_key,
            ikey("cases", k, None, t.fp(&feed, k), 1)
        );
    }
    assert_eq!(
        h.snapshot("cases").entries().collect::<Vec<_>>(),
        t.entries(&feed)
    );
}
