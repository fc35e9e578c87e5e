//! Schema drift that needs no operator: reordered columns and shuffled rows, an added
//! column; and a missing required column, which rejects the file. (A renamed column trips
//! the schema guard: `guards.rs`.)

use super::harness::{assert_counts, history, ikey, Harness, Table, LAB_HASHED, TS1, TS2, TS3};
use crate::contract::envelope::{next_chain, Change};
use crate::contract::report::RunStatus;

// ---------------------------------------------------------------------------------------
// reordered columns, shuffled rows
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_columns_and_shuffled_rows_change_nothing() {
    let h = Harness::new();
    let t1 = Table::labs(1..=25, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let before = h.snapshot("labs");
    let mut t2 = t1.reorder(&[
        "result",
        "export_timestamp",
        "collected",
        "record_id",
        "patient_name",
    ]);
    t2.rows
        .sort_by_key(|r| (r[3].parse::<u32>().unwrap() * 7) % 25);
    t2.rows.reverse();
    t2.set_all("export_timestamp", TS2);
    assert_ne!(t2.keys(), t1.keys(), "rows really are shuffled");
    let (ev2, r, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_counts(&r, 25, 0, 0, 0, 25, 0);
    assert!(msgs.is_empty());
    assert_eq!(h.queue.calls(), 0);
    let after = h.snapshot("labs");
    assert_eq!(
        after.entries().collect::<Vec<_>>(),
        before.entries().collect::<Vec<_>>()
    );
    assert_eq!(
        after.header.source.key, ev2.key,
        "the state now comes from the new file"
    );
    assert_eq!(after.header.hashed_columns, LAB_HASHED);
}

// ---------------------------------------------------------------------------------------
// an added column
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_changes_nothing_then_counts_from_the_next_file() {
    let h = Harness::new();
    let feed = h.feed("labs");
    let t1 = Table::labs(1..=15, TS1);
    h.run_table("labs", "e1.csv", &t1).await;

    let mut t2 = t1.clone();
    t2.add_column("lab_site", |k| {
        format!("site-{}", k.parse::<u32>().unwrap() % 3)
    });
    t2.set_all("export_timestamp", TS2);
    let (_, r2, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r2.status, RunStatus::Applied);
    assert_counts(&r2, 15, 0, 0, 0, 15, 0);
    assert!(msgs.is_empty());
    assert_eq!(r2.schema.added, ["lab_site"]);
    assert!(r2.schema.removed.is_empty());
    assert_eq!(
        r2.schema.hashed_columns,
        ["collected", "lab_site", "patient_name", "result"]
    );
    let snap = h.snapshot("labs");
    assert_eq!(
        snap.header.hashed_columns,
        ["collected", "lab_site", "patient_name", "result"]
    );
    assert_eq!(snap.entries().collect::<Vec<_>>(), t2.entries(&feed));

    // now only the new column of one row changes
    let mut t3 = t2.clone();
    t3.set("4", "lab_site", "site-moved");
    t3.set_all("export_timestamp", TS3);
    // the unchanged rows took the new column set's fingerprint but kept their history
    let s2 = h.snapshot("labs");
    let p4 = t2.state_in(&feed, &s2, "4").unwrap();
    assert_eq!(p4.content, t2.fp(&feed, "4"));
    assert_eq!(p4.chain, next_chain(None, t1.fp(&feed, "4")));
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert_eq!(r3.status, RunStatus::Applied);
    assert_counts(&r3, 15, 0, 1, 0, 14, 1);
    assert!(
        r3.schema.added.is_empty(),
        "lab_site is part of the state now"
    );
    let m = &msgs[0];
    assert_eq!(m.env.record_key, "4");
    assert_eq!(m.env.change, Change::Changed);
    assert_eq!(m.env.fields, t3.fields("4"));
    assert_eq!(
        m.env.idempotency_key,
        ikey("labs", "4", Some(p4), t3.fp(&feed, "4"), 3)
    );
}

// ---------------------------------------------------------------------------------------
// missing required column
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_column_rejects_the_file_and_keeps_the_state() {
    let h = Harness::new();
    let feed = h.feed("labs");
    let t1 = Table::labs(1..=10, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();

    for (col, name) in [("result", "no-result.csv"), ("record_id", "no-key.csv")] {
        let mut t = t1.drop_column(col);
        t.set_all("export_timestamp", TS2);
        let ev = h.upload("labs", name, t.csv());
        let r = h.run(&ev).await;
        assert_eq!(r.status, RunStatus::Rejected);
        let reason = r.reason.clone().unwrap();
        assert!(
            reason.contains("missing") && reason.contains(col),
            "{reason}"
        );
        assert_eq!(r.counts.sent, 0);
        assert!(r.snapshot_etag.is_none());
        assert!(h.take_sent().is_empty());
        assert_eq!(
            h.snapshot_bytes("labs").unwrap(),
            state,
            "state must not move"
        );
    }
    assert_eq!(h.queue.calls(), 0);

    // the feed still works afterwards, against the untouched state
    let mut t3 = t1.clone();
    t3.set("2", "result", "positive");
    let (_, r, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert_counts(&r, 10, 0, 1, 0, 9, 1);
    assert_eq!(
        msgs[0].env.idempotency_key,
        ikey(
            "labs",
            "2",
            Some(history(t1.fp(&feed, "2"), &[])),
            t3.fp(&feed, "2"),
            2
        )
    );
}
