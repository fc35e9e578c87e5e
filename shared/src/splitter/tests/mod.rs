//! End-to-end tests of [`Splitter::process`] over the in-memory store and a recording fake
//! queue: baseline, diff, fan-out, envelopes, idempotency keys, schema drift, bad input,
//! corrupt state, lost commit races and queue failures.
//!
//! The tests under "further defects" (and a few others) pin down defects that were found
//! in the library and fixed: they fail if one comes back.

mod bad_input;
mod baseline;
mod diff;
mod drift;
mod faults;
mod harness;
mod queue;
mod state;

use crate::contract::envelope::Change;
use crate::contract::layout::held_manifest_key;
use crate::contract::report::{GuardKind, RunReport, RunStatus};
use crate::ports::store::ObjectStore;
use crate::splitter::{Outcome, SplitError};
use faults::{slow_down, FaultyStore, Keys, Op};
use harness::{
    by_key, gzip, lab_row, Harness, QueueMode, Table, BUCKET, LAB_COLS, LAB_HEADER, TS1, TS2,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The reader on its own thread and inline give the same run, message for message, over
/// more rows than several batches hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_ahead_on_a_thread_or_inline_gives_the_same_run() {
    let mut runs = Vec::new();
    for read_thread in [true, false] {
        let mut h = Harness::new();
        h.splitter.settings.read_thread = Some(read_thread);
        h.run_table("labs", "e1.csv", &Table::labs(1..=3000, TS1))
            .await;
        let mut t = Table::labs(10..=3080, TS1);
        for id in (600..900).step_by(7) {
            t.set(&id.to_string(), "result", "positive");
        }
        let ev = h.upload("labs", "e2.csv", t.csv());
        let r = h.run(&ev).await;
        assert_eq!(r.status, RunStatus::Applied);
        let sent: Vec<(String, Change)> = by_key(&h.take_sent())
            .into_iter()
            .map(|(k, m)| (k, m.env.change))
            .collect();
        runs.push((
            r.counts,
            sent,
            h.snapshot("labs").entries().collect::<Vec<_>>(),
        ));
    }
    assert_eq!(runs[0], runs[1]);
    let (counts, sent, _) = &runs[0];
    assert_eq!((counts.new, counts.changed, counts.removed), (80, 43, 9));
    assert_eq!(sent.len(), 123);
}

/// Rows recognised by their raw line (the snapshot's line hashes) must give exactly the run
/// the full path gives: counts, messages with their idempotency keys, and the next state —
/// across duplicates, rejected and multi-line rows, CRLF, reordered columns (new line
/// context: full path once) and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_known_by_their_line_give_the_same_run_as_the_full_path() {
    fn crlf(b: Vec<u8>) -> Vec<u8> {
        String::from_utf8(b)
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes()
    }
    let mut t2 = Table::labs(10..=3080, TS1);
    for id in (600..900).step_by(7) {
        t2.set(&id.to_string(), "result", "positive");
    }
    let mut e2 = t2.csv();
    // an identical duplicate, a changed duplicate, a ragged row of a record the file
    // otherwise lacks (its state is carried), and a quoted line break in another's name
    e2.extend_from_slice(t2.csv().split(|&b| b == b'\n').nth(500).unwrap());
    e2.extend_from_slice(b"\n501,Patient 501,positive,2026-01-01,");
    e2.extend_from_slice(TS1.as_bytes());
    e2.extend_from_slice(b"\n7,Patient 7,negative\n5,\"Patient\n5\",negative,2026-01-06,");
    e2.extend_from_slice(TS1.as_bytes());
    e2.push(b'\n');
    let mut t5 = t2.reorder(&[
        "result",
        "record_id",
        "export_timestamp",
        "collected",
        "patient_name",
    ]);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("e1.csv", Table::labs(1..=3000, TS1).csv()),
        ("e2.csv", e2),
        ("e3.csv", crlf(t2.csv())),
        ("e4.csv", t5.csv()),
        ("e5.csv", {
            t5.set("2000", "result", "positive");
            t5.remove("2001");
            t5.csv()
        }),
        // a new export timestamp in every row: an ignored column, left out of line hashes
        ("e6.csv", {
            t5.set_all("export_timestamp", TS2);
            t5.set("2002", "result", "positive");
            t5.csv()
        }),
    ];
    let mut runs = Vec::new();
    for known_lines in [true, false] {
        let mut h = Harness::new();
        h.splitter.settings.known_lines = known_lines;
        let mut steps = Vec::new();
        for (name, body) in &files {
            let ev = h.upload("labs", name, body.clone());
            let r = h.run(&ev).await;
            assert!(
                matches!(r.status, RunStatus::Applied | RunStatus::Baseline),
                "{name}: {:?} {:?}",
                r.status,
                r.reason
            );
            let mut counts = r.counts.clone();
            steps.push((name, counts.known));
            counts.known = 0;
            let sent: Vec<(String, Change, String)> = by_key(&h.take_sent())
                .into_iter()
                .map(|(k, m)| (k, m.env.change, m.env.idempotency_key))
                .collect();
            runs.push((
                known_lines,
                name,
                counts,
                sent,
                h.snapshot("labs").all_entries().collect::<Vec<_>>(),
            ));
        }
        let known: Vec<u64> = steps.iter().map(|s| s.1).collect();
        if known_lines {
            // e2: 3000 - 9 removed - 43 changed - 3 special rows; e3: CRLF, the same lines
            // (the rows e2 changed or broke included now); e4: new column order, none;
            // e5: all but the changed row (of 3070: one was removed); e6: all but the
            // changed one, though every line has a new export timestamp
            assert_eq!(known[0], 0);
            assert!(known[1] > 2_900, "{known:?}");
            assert_eq!(known[2], 3071, "{known:?}");
            assert_eq!(known[3], 0, "{known:?}");
            assert_eq!(known[4], 3070 - 1, "{known:?}");
            assert_eq!(known[5], 3070 - 1, "{known:?}");
        } else {
            assert_eq!(known, vec![0; files.len()]);
        }
    }
    let (fast, full) = runs.split_at(files.len());
    for (a, b) in fast.iter().zip(full) {
        assert_eq!(
            (&a.1, &a.2, &a.3),
            (&b.1, &b.2, &b.3),
            "{}: counts or messages differ",
            a.1
        );
        assert!(a.4 == b.4, "{}: the next state differs", a.1);
    }
    let e2 = &fast[1].2;
    assert_eq!(
        (e2.new, e2.changed, e2.duplicate, e2.rejected),
        (80, 44, 2, 1)
    );
    assert_eq!((fast[3].2.changed, fast[3].2.new), (0, 0));
    assert_eq!((fast[4].2.changed, fast[4].2.removed), (1, 1));
    assert_eq!((fast[5].2.changed, fast[5].2.unchanged), (1, 3069));
}

/// The run's metrics line declares every metric it carries, with the run's counts: rows
/// known by their line included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_metrics_carry_every_declared_count() {
    let h = Harness::new();
    h.run_table("labs", "e1.csv", &Table::labs(1..=100, TS1))
        .await;
    let mut t = Table::labs(1..=100, TS1);
    t.set("5", "result", "positive");
    let (_, r, _) = h.run_table("labs", "e2.csv", &t).await;
    let doc = crate::metrics::run_doc(&r);
    let names: Vec<String> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(doc[n.as_str()].is_u64(), "{n} has no value");
    }
    assert_eq!((doc["RowsKnown"].as_u64(), r.counts.known), (Some(99), 99));
    assert_eq!(doc["RowsChanged"], 1);
    assert_eq!(doc["RowsRead"], 100);
    assert_eq!(doc["feed"], "labs");
}

// ---------------------------------------------------------------------------------------
// no row values in reasons
// ---------------------------------------------------------------------------------------

const PII: [&str; 6] = [
    "Zelda",
    "Quixote",
    "555-0199",
    "1961-07-04",
    "Baker Street",
    "ZZ-SECRET",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_value_appears_in_any_reason() {
    let h = Harness::new();
    let pii_row = |id: u32| {
        vec![
            id.to_string(),
            format!("Zelda Quixote {id}, 221 Baker Street, 555-0199"),
            "ZZ-SECRET".to_string(),
            "1961-07-04".to_string(),
            TS1.to_string(),
        ]
    };
    let mut t1 = Table::new(&LAB_COLS, "record_id");
    for id in 1..=8 {
        t1.push(pii_row(id));
    }
    h.run_table("labs", "e1.csv", &t1).await;
    let mut errors: Vec<String> = Vec::new();

    // bad rows, each carrying values
    let mut bad = Vec::new();
    bad.extend_from_slice(LAB_HEADER.as_bytes());
    bad.extend_from_slice(b"\n1,Zelda Quixote,ZZ-SECRET,1961-07-04,T,555-0199\n");
    bad.extend_from_slice(b"2,Zelda \xFF Quixote,ZZ-SECRET,1961-07-04,T\n");
    bad.extend_from_slice(b",Zelda Quixote,ZZ-SECRET,1961-07-04,T\n");
    bad.extend_from_slice(b"3,Zelda Quixote 555-0199\n");
    let long = format!(
        "4,Zelda Quixote {},ZZ-SECRET,1961-07-04,T\n",
        "Baker Street ".repeat(6000)
    );
    bad.extend_from_slice(long.as_bytes());
    let ev = h.upload("labs", "bad-rows.csv", bad);
    let r = h.run(&ev).await;
    assert_eq!(r.counts.rejected, 5);

    // whole-file rejections: a missing column, a headerless file, an empty file
    let ev = h.upload("labs", "no-result.csv", t1.drop_column("result").csv());
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
    let headerless =
        b"9,Zelda Quixote,ZZ-SECRET,1961-07-04,T\n10,Zelda,ZZ-SECRET,1961-07-04,T\n".to_vec();
    let ev = h.upload("labs", "headerless.csv", headerless);
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
    let ev = h.upload("labs", "empty.csv", Vec::new());
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
    // SQS refusing a row
    let mut t2 = t1.clone();
    t2.set("5", "result", "ZZ-SECRET changed");
    *h.queue.refuse.lock().unwrap() = vec!["ZZ-SECRET changed".into()];
    let ev = h.upload("labs", "refused.csv", t2.csv());
    assert_eq!(h.run(&ev).await.counts.rejected, 1);
    h.queue.refuse.lock().unwrap().clear();
    // a failing queue
    h.queue.set_mode(QueueMode::EntryErr);
    let mut t3 = t1.clone();
    t3.set("6", "result", "ZZ-SECRET again");
    let ev = h.upload("labs", "queue-down.csv", t3.csv());
    errors.push(h.process(&ev).await.unwrap_err().to_string());
    h.queue.set_mode(QueueMode::Healthy);
    // a truncated gzip
    let gz = gzip(&t3.csv());
    let ev = h.upload("labs", "cut.csv.gz", gz[..gz.len() / 2].to_vec());
    if let Err(e) = h.process(&ev).await {
        errors.push(e.to_string());
    }
    // a corrupt snapshot
    h.restore_snapshot("labs", b"Zelda Quixote 555-0199".to_vec());
    errors.push(h.process(&ev).await.unwrap_err().to_string());

    let mut reasons: Vec<String> = Vec::new();
    for k in h.mem.keys("runs/labs/") {
        let v: serde_json::Value = serde_json::from_slice(&h.mem.get(BUCKET, &k).unwrap()).unwrap();
        if let Some(s) = v["reason"].as_str() {
            reasons.push(s.to_string());
        }
        // nothing but reasons, column names and identities in the whole report either
        let text = String::from_utf8(h.mem.get(BUCKET, &k).unwrap()).unwrap();
        for p in PII {
            assert!(!text.contains(p), "{k} contains {p}: {text}");
        }
    }
    for k in h.mem.keys("rejects/labs/") {
        for j in h.rejects(&k) {
            reasons.push(j["reason"].as_str().unwrap().to_string());
        }
    }
    assert!(reasons.len() >= 10, "{reasons:#?}");
    for s in reasons.iter().chain(&errors) {
        for p in PII {
            assert!(!s.contains(p), "`{s}` contains the row value {p}");
        }
    }
    // and no message attribute carries one
    for m in h.take_sent() {
        for v in m.attrs.values() {
            for p in PII {
                assert!(!v.contains(p));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headerless_file_does_not_leak_its_first_row() {
    let h = Harness::new();
    let ev = h.upload(
        "labs",
        "headerless.csv",
        b"17,Quixote,Quixote,1961-07-04,1961-07-04\n18,Zelda,x,y,z\n".to_vec(),
    );
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Rejected);
    let reason = r.reason.unwrap();
    for p in PII {
        assert!(!reason.contains(p), "`{reason}` contains {p}");
    }
    assert!(reason.contains("positions 2 and 3"), "{reason}");
    assert!(h.snapshot_bytes("labs").is_none());
}

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
        snap.get(t2.prints(&h.feed("labs"), "1").key),
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
