//! How a feed's exports are ordered: by upload (the default), by object key, or by an S3
//! user-metadata value. A late export — older by the feed's order than the one its state
//! comes from — is stale: nothing sent, the state unchanged.

use super::faults::FaultyStore;
use super::harness::{diff_scenario, Harness, Table, TS1};
use crate::contract::report::RunStatus;
use crate::contract::source::{ExportOrder, OrderMetadata};

fn by_key() -> Harness {
    Harness::new().configure("labs", |f| f.order = ExportOrder::Key)
}

fn by_metadata() -> Harness<FaultyStore> {
    let store = FaultyStore::new();
    Harness::with_store(store.inner.clone(), store).configure("labs", |f| {
        f.order = ExportOrder::Metadata("export-seq".into())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_key_an_older_key_after_a_newer_one_is_stale_and_sends_nothing() {
    let h = by_key();
    let (t1, t2) = diff_scenario();
    h.run_table("labs", "2026-03-01T1000.csv", &t1).await;
    let (_, r2, msgs) = h.run_table("labs", "2026-03-01T1030.csv", &t2).await;
    assert_eq!((r2.status, msgs.len()), (RunStatus::Applied, 8));
    let state = h.snapshot_bytes("labs").unwrap();
    // the 09:30 export arrives late, after the 10:30 one (S3 sees it as the newest upload)
    let mut late = t1.clone();
    late.set("3", "result", "inconclusive");
    let (_, r, msgs) = h.run_table("labs", "2026-03-01T0930.csv", &late).await;
    assert_eq!(r.status, RunStatus::Stale, "{:?}", r.reason);
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.contains("incoming/labs/2026-03-01T0930.csv")
            && reason.contains("incoming/labs/2026-03-01T1030.csv"),
        "{reason}"
    );
    assert!(msgs.is_empty(), "a late export must not roll the API back");
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    // the newest name again, with other bytes: not later either
    let (_, r, msgs) = h.run_table("labs", "2026-03-01T1030.csv", &late).await;
    assert_eq!((r.status, msgs.len()), (RunStatus::Stale, 0));
    // a later name applies
    let (_, r, _) = h.run_table("labs", "2026-03-01T1100.csv", &late).await;
    assert_eq!(r.status, RunStatus::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_metadata_an_older_value_after_a_newer_one_is_stale_and_sends_nothing() {
    let h = by_metadata();
    let (t1, t2) = diff_scenario();
    // names that sort the other way, to show the key plays no part
    let e1 = h.upload_with_metadata("labs", "z.csv", t1.csv(), &[("export-seq", "9")]);
    assert_eq!(h.run(&e1).await.status, RunStatus::Baseline);
    let e2 = h.upload_with_metadata("labs", "y.csv", t2.csv(), &[("export-seq", "10")]);
    let r2 = h.run(&e2).await;
    assert_eq!(r2.status, RunStatus::Applied);
    assert_eq!(h.take_sent().len(), 8);
    // the state keeps the value it came from
    let want = OrderMetadata {
        name: "export-seq".into(),
        value: "10".into(),
    };
    assert_eq!(h.snapshot("labs").header.source.order_metadata, Some(want));
    let state = h.snapshot_bytes("labs").unwrap();
    // 9 < 10 as integers (as strings "9" would be later)
    let late = h.upload_with_metadata("labs", "x.csv", t1.csv(), &[("export-seq", "9")]);
    let r = h.run(&late).await;
    assert_eq!(r.status, RunStatus::Stale, "{:?}", r.reason);
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.contains("x-amz-meta-export-seq")
            && reason.contains("\"9\"")
            && reason.contains("\"10\""),
        "{reason}"
    );
    assert!(h.take_sent().is_empty());
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    // an export without the value is rejected, permanently: it cannot be ordered
    let bare = h.upload("labs", "w.csv", t2.csv());
    let r = h.run(&bare).await;
    assert_eq!(r.status, RunStatus::Rejected);
    assert!(r
        .reason
        .as_deref()
        .unwrap()
        .contains("x-amz-meta-export-seq"));
    assert!(h.take_sent().is_empty());
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    // a later value applies
    let next = h.upload_with_metadata("labs", "a.csv", t1.csv(), &[("export-seq", "11")]);
    assert_eq!(h.run(&next).await.status, RunStatus::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_ordered_feed_rejects_a_first_file_without_its_value() {
    let h = by_metadata();
    let r = h
        .run(&h.upload("labs", "first.csv", Table::labs(1..=5, TS1).csv()))
        .await;
    assert_eq!(r.status, RunStatus::Rejected);
    assert!(
        h.snapshot_bytes("labs").is_none(),
        "no state from an unordered file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_upload_order_file_names_play_no_part() {
    let h = Harness::new();
    let (t1, t2) = diff_scenario();
    h.run_table("labs", "2026-03-01T1000.csv", &t1).await;
    // named earlier, uploaded later: applied as before (the upload order decides)
    let (_, r, msgs) = h.run_table("labs", "2026-03-01T0930.csv", &t2).await;
    assert_eq!((r.status, msgs.len()), (RunStatus::Applied, 8));
    assert_eq!(h.snapshot("labs").header.source.order_metadata, None);
}
