//! Bad input: malformed rows and their rejects report, empty objects, gzip bodies (whole
//! and truncated), a broken stream, a failed rejects write, rejected rows that recover.

use super::faults::{slow_down, FaultyStore, Keys, Op};
use super::harness::{
    assert_counts, by_key, diff_scenario, gzip, history, Harness, Msg, Table, LAB_HEADER, TS1, TS3,
};
use crate::contract::envelope::Change;
use crate::contract::layout::rejects_key;
use crate::contract::report::{RunReport, RunStatus};
use crate::splitter::{Outcome, SplitError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// malformed rows
// ---------------------------------------------------------------------------------------

/// Baseline ids 1..=10, then a file with bad rows at lines 3, 4, 5 and 9 (`nl` is the line
/// terminator; line 7 holds a quoted field spanning two lines).
fn malformed_file(nl: &str) -> Vec<u8> {
    let mut b: Vec<u8> = Vec::new();
    let mut line = |s: &[u8]| {
        b.extend_from_slice(s);
        b.extend_from_slice(nl.as_bytes());
    };
    line(LAB_HEADER.as_bytes()); // 1
    line(b"1,Patient 1,negative,2026-01-02,T2"); // 2 unchanged
    line(b"2,Patient 2,negative,2026-01-03,T2,extra"); // 3 ragged (6 fields)
    line(b"3,Bad \xFF\xFE Name,negative,2026-01-04,T2"); // 4 invalid UTF-8
    line(b",Nobody,negative,2026-01-05,T2"); // 5 empty key
    line(b"4,Patient 4,positive,2026-01-05,T2"); // 6 changed
    line(format!("5,\"Patient 5{nl}second line\",negative,2026-01-06,T2").as_bytes()); // 7-8 changed
    line(b"6,short"); // 9 ragged (2 fields)
    line(b"11,Patient 11,negative,2026-01-12,T2"); // 10 new
    for id in 7..=10 {
        line(format!("{id},Patient {id},negative,2026-01-{:02},T2", id % 28 + 1).as_bytes());
    }
    b
}

async fn check_malformed(nl: &str, read_thread: bool) {
    let mut h = Harness::new();
    h.splitter.settings.read_thread = Some(read_thread);
    h.run_table("labs", "e1.csv", &Table::labs(1..=10, TS1))
        .await;
    let ev = h.upload("labs", "e2.csv", malformed_file(nl));
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Applied);
    // 12 data rows: 4 rejected; of the 8 good ones 1 new, 2 changed, 5 unchanged; ids 2, 3
    // and 6 have no usable row but a readable key, so they keep their state (not removed)
    assert_counts(&r, 12, 1, 2, 0, 5, 3);
    assert_eq!(r.counts.rejected, 4);
    let key = r.rejects_key.clone().expect("a rejects report");
    assert_eq!(key, rejects_key("labs", &r.run));
    assert!(key.starts_with("rejects/labs/") && key.ends_with(".jsonl"));
    let rejects = h.rejects(&key);
    let lines: Vec<u64> = rejects
        .iter()
        .map(|j| j["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5, 9], "line numbers with {nl:?} line ends");
    let reasons: Vec<&str> = rejects
        .iter()
        .map(|j| j["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].contains("ragged") && reasons[0].contains('6'),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("UTF-8") && reasons[1].contains("`patient_name`"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("empty key") && reasons[2].contains("`record_id`"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].contains("ragged") && reasons[3].contains('2'),
        "{}",
        reasons[3]
    );
    assert_eq!(
        rejects[2]["fields"][1], "Nobody",
        "raw fields kept in the S3 rejects report"
    );

    let got = by_key(&h.take_sent());
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["11", "4", "5"]
    );
    assert_eq!(got["11"].env.change, Change::New);
    assert_eq!(got["4"].env.change, Change::Changed);
    assert_eq!(got["4"].env.fields["result"], "positive");
    assert_eq!(got["5"].env.change, Change::Changed);
    assert_eq!(
        got["5"].env.fields["patient_name"],
        format!("Patient 5{nl}second line")
    );
    let snap = h.snapshot("labs");
    assert_eq!(snap.len(), 11, "8 good rows + 3 carried records");
    let feed = h.feed("labs");
    let t1 = Table::labs(1..=10, TS1);
    for id in ["2", "3", "6"] {
        assert_eq!(
            t1.state_in(&feed, &snap, id),
            Some(history(t1.fp(&feed, id), &[])),
            "record {id} keeps its baseline state"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_rejected_with_lines_and_reasons() {
    check_malformed("\n", true).await;
    check_malformed("\n", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_crlf_line_numbers() {
    check_malformed("\r\n", true).await;
    check_malformed("\r\n", false).await;
}

// ---------------------------------------------------------------------------------------
// empty object
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_object_is_rejected() {
    let h = Harness::new();
    // as a first file
    let ev = h.upload("labs", "empty.csv", Vec::new());
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Rejected);
    assert!(
        r.reason.as_deref().unwrap().contains("empty"),
        "{:?}",
        r.reason
    );
    assert!(
        h.snapshot_bytes("labs").is_none(),
        "no state from an empty file"
    );
    // and after a baseline
    h.run_table("labs", "e1.csv", &Table::labs(1..=5, TS1))
        .await;
    let state = h.snapshot_bytes("labs").unwrap();
    for (name, body) in [
        ("empty2.csv", Vec::new()),
        ("bom.csv", b"\xEF\xBB\xBF".to_vec()),
        ("gz.csv.gz", gzip(b"")),
    ] {
        let ev = h.upload("labs", name, body);
        let r = h.run(&ev).await;
        assert_eq!(r.status, RunStatus::Rejected, "{name}");
        assert!(
            r.reason.as_deref().unwrap().contains("empty"),
            "{name}: {:?}",
            r.reason
        );
        assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    }
    assert!(h.take_sent().is_empty());
}

// ---------------------------------------------------------------------------------------
// gzip
// ---------------------------------------------------------------------------------------

type Normal = BTreeSet<(String, String, String, BTreeMap<String, String>)>;

fn normal(msgs: &[Msg]) -> Normal {
    msgs.iter()
        .map(|m| {
            (
                m.env.record_key.clone(),
                m.env.change.as_str().to_string(),
                m.env.idempotency_key.clone(),
                m.env.fields.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_process_like_plain_ones() {
    let (t1, t2) = diff_scenario();
    let plain = Harness::new();
    plain.run_table("labs", "e1.csv", &t1).await;
    let (_, rp, mp) = plain.run_table("labs", "e2.csv", &t2).await;

    let gz = Harness::new();
    let ev1 = gz.upload("labs", "e1.csv.gz", gzip(&t1.csv()));
    assert_eq!(gz.run(&ev1).await.status, RunStatus::Baseline);
    // with a byte-order mark inside the gzip, too
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&t2.csv());
    let ev2 = gz.upload("labs", "e2.csv.gz", gzip(&bom));
    let rg = gz.run(&ev2).await;
    let mg = gz.take_sent();
    assert_eq!(rg.status, RunStatus::Applied);
    assert_eq!(rg.counts, rp.counts);
    assert_eq!(rg.schema, rp.schema);
    assert_eq!(normal(&mg), normal(&mp));
    assert_eq!(mg.len(), 8);
    assert_eq!(
        gz.snapshot("labs").entries().collect::<Vec<_>>(),
        plain.snapshot("labs").entries().collect::<Vec<_>>()
    );

    // a plain file after a gzipped one: nothing changed
    let mut t3 = t2.clone();
    t3.set_all("export_timestamp", TS3);
    let (_, r3, m3) = gz.run_table("labs", "e3.csv", &t3).await;
    assert_counts(&r3, 29, 0, 0, 0, 29, 0);
    assert!(m3.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_gzip_does_not_move_the_state() {
    let h = Harness::new();
    let t1 = Table::labs(1..=50, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    let mut t2 = t1.clone();
    for id in 1..=50 {
        t2.set(&id.to_string(), "result", "positive");
    }
    let gz = gzip(&t2.csv());
    let ev = h.upload("labs", "cut.csv.gz", gz[..gz.len() * 2 / 3].to_vec());
    let res = h.process(&ev).await;
    assert_eq!(
        h.snapshot_bytes("labs").unwrap(),
        state,
        "a truncated file must not move the state"
    );
    match res {
        Err(e) => assert!(matches!(e, SplitError::Read { .. }), "{e:?}"),
        Ok(Outcome::Report(r)) => assert!(
            matches!(r.status, RunStatus::Rejected | RunStatus::Failed),
            "{:?}",
            r.status
        ),
        Ok(other) => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_gzip_is_reported() {
    let h = Harness::new();
    let t1 = Table::labs(1..=50, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let gz = gzip(&t1.csv());
    let ev = h.upload("labs", "cut.csv.gz", gz[..gz.len() * 2 / 3].to_vec());
    let state = h.snapshot_bytes("labs").unwrap();
    let r = h.run(&ev).await;
    assert_eq!(
        r.status,
        RunStatus::Rejected,
        "the same bytes fail the same way"
    );
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.contains("gzip") && reason.contains("corrupt"),
        "{reason}"
    );
    assert!(r.snapshot_etag.is_none());
    assert_eq!(
        h.reports("labs").len(),
        2,
        "a run report for the truncated file"
    );
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    assert!(h.take_sent().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_that_inflates_past_the_feed_limit_is_rejected_and_does_not_move_the_state() {
    let mut h = Harness::new();
    let t1 = Table::labs(1..=50, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let state = h.snapshot_bytes("labs").unwrap();
    // every row changed, then repeated until the file inflates to 8 MiB
    let mut t2 = t1.clone();
    t2.set_all("result", "positive");
    let one = t2.csv();
    let mut body = one.clone();
    while body.len() < 8 << 20 {
        body.extend_from_slice(&one[LAB_HEADER.len() + 1..]);
    }
    let limit = 64 * 1024;
    let mut c = (*h.splitter.config).clone();
    c.feeds[0].max_inflated_bytes = limit;
    h.splitter.config = Arc::new(c);
    let ev = h.upload("labs", "bomb.csv.gz", gzip(&body));
    let r = h.run(&ev).await;
    assert_eq!(
        r.status,
        RunStatus::Rejected,
        "the same bytes fail the same way"
    );
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.contains("max_inflated_bytes") && reason.contains(&limit.to_string()),
        "{reason}"
    );
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
    assert!(h.take_sent().is_empty(), "nothing sent from a refused file");
    // the first copy alone is within the limit and is applied
    let ev = h.upload("labs", "e2.csv.gz", gzip(&one));
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_eq!(r.counts.changed, 50);
}

// ---------------------------------------------------------------------------------------
// a broken stream
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_fails_the_run_for_retry_with_a_report() {
    let (t1, t2) = diff_scenario();
    for (name, body) in [("broken.csv", t2.csv()), ("broken.csv.gz", gzip(&t2.csv()))] {
        let store = FaultyStore::new();
        store.break_bodies(Keys::Containing("broken"), body.len() / 2);
        let h = Harness::with_store(store.inner.clone(), store);
        h.run_table("labs", "e1.csv", &t1).await;
        let state = h.snapshot_bytes("labs").unwrap();
        let ev = h.upload("labs", name, body);
        let err = h.process(&ev).await.expect_err(name);
        assert!(matches!(err, SplitError::Read { .. }), "{name}: {err:?}");
        assert!(err.retryable(), "{name}: the network may come back");
        assert_eq!(h.snapshot_bytes("labs").unwrap(), state, "{name}");
        let failed: Vec<RunReport> = h
            .reports("labs")
            .into_iter()
            .filter(|r| r.status == RunStatus::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "{name}: a failed run report");
        assert_eq!(failed[0].source.key, ev.key);
        assert!(
            failed[0].reason.as_deref().unwrap().contains("reading"),
            "{name}: {:?}",
            failed[0].reason
        );
        assert!(h.mem.keys("rejects/").is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// rejected rows: a failed rejects write, a row that recovers, a valid row after a rejected one
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rows_survive_a_failed_rejects_write() {
    let store = FaultyStore::new();
    let h = Harness::with_store(store.inner.clone(), store.clone());
    h.run_table("labs", "e1.csv", &Table::labs(1..=5, TS1))
        .await;
    let mut bad = LAB_HEADER.as_bytes().to_vec();
    bad.extend_from_slice(b"\n1,Patient 1,negative,2026-01-02,T\n2,ragged\n");
    let ev = h.upload("labs", "e2.csv", bad);
    let state = h.snapshot_bytes("labs").unwrap();
    store.fail(Op::Put, Keys::Prefix("rejects/"), 1, slow_down);
    let first = h.process(&ev).await;
    assert!(first.as_ref().is_err_and(|e| e.retryable()), "{first:?}");
    assert_eq!(
        h.snapshot_bytes("labs").unwrap(),
        state,
        "the state does not move before the rejects are written"
    );
    assert!(h.mem.keys("rejects/labs/").is_empty());
    // Lambda retries the event
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_counts(&r, 2, 0, 0, 3, 1, 0);
    assert_eq!(r.counts.rejected, 1);
    let key = r.rejects_key.clone().expect("a rejects report");
    assert_eq!(
        h.mem.keys("rejects/labs/"),
        std::slice::from_ref(&key),
        "the rejected row (line 3) is in no rejects report"
    );
    let rejects = h.rejects(&key);
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["line"], 3);
    assert_eq!(h.snapshot("labs").header.source.key, ev.key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporarily_malformed_row_is_not_resent_when_it_recovers() {
    let h = Harness::new();
    let t1 = Table::labs(1..=5, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let mut bad = LAB_HEADER.as_bytes().to_vec();
    bad.push(b'\n');
    for id in 1..=5 {
        if id == 3 {
            bad.extend_from_slice(b"3,Patient \xFF3,negative,2026-01-04,T2\n");
        } else {
            bad.extend_from_slice(
                format!("{id},Patient {id},negative,2026-01-{:02},T2\n", id % 28 + 1).as_bytes(),
            );
        }
    }
    let ev = h.upload("labs", "e2.csv", bad);
    let r2 = h.run(&ev).await;
    assert_eq!(r2.counts.rejected, 1);
    assert_eq!(r2.counts.removed, 0, "record 3 is rejected, not removed");
    assert_eq!(h.snapshot("labs").len(), 5);
    assert!(h.take_sent().is_empty());
    // the row recovers, unchanged since the baseline
    let mut t3 = t1.clone();
    t3.set_all("export_timestamp", TS3);
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert!(
        msgs.is_empty(),
        "record 3 never changed, yet {:?} was sent",
        msgs.first().map(|m| m.env.change)
    );
    assert_eq!(r3.counts.new, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_row_after_a_rejected_row_of_the_same_record_is_used() {
    let h = Harness::new();
    let t1 = Table::labs(1..=3, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let mut body = LAB_HEADER.as_bytes().to_vec();
    body.extend_from_slice(b"\n1,Patient 1,negative,2026-01-02,T2\n");
    body.extend_from_slice(b"2,Patient \xFF2,negative,2026-01-03,T2\n"); // rejected
    body.extend_from_slice(b"3,Patient 3,negative,2026-01-04,T2\n");
    body.extend_from_slice(b"2,Patient 2,positive,2026-01-03,T2\n"); // valid, changed
    body.extend_from_slice(b"4,Patient \xFF4,negative,2026-01-05,T2\n"); // rejected, new
    body.extend_from_slice(b"4,Patient 4,negative,2026-01-05,T2\n"); // valid, new
    let ev = h.upload("labs", "e2.csv", body);
    let r = h.run(&ev).await;
    assert_eq!(r.counts.rejected, 2);
    let got = by_key(&h.take_sent());
    assert_eq!(got["4"].env.change, Change::New);
    assert!(
        got.contains_key("2"),
        "record 2's valid row was dropped as a duplicate of its rejected row: {:?}",
        r.counts
    );
}

// ---------------------------------------------------------------------------------------
// key values with whitespace around them (trim_keys)
// ---------------------------------------------------------------------------------------

/// With `trim_keys`, key values with whitespace around them are the records of the bare
/// values: the run equals the bare file's run — counts, the changed row's record key and
/// idempotency key, the next state — its `fields` are the file's, a key of only whitespace
/// is still rejected, and the same padded file again is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trim_keys_padded_key_values_are_the_records_of_the_bare_ones() {
    let rows = |pad: bool| {
        let k = |bare: &str, padded: &str| {
            if pad {
                padded.to_string()
            } else {
                bare.to_string()
            }
        };
        let mut b = LAB_HEADER.as_bytes().to_vec();
        for (key, rest) in [
            (k("1", " 1 "), "Patient 1,negative,2026-01-02,T2"),
            (k("2", "\t2"), "Patient 2,negative,2026-01-03,T2"),
            (k("3", "\"3  \""), "Patient 3,negative,2026-01-04,T2"),
            (k("4", " 4"), "Patient 4,positive,2026-01-05,T2"),
            (k("5", "5"), "Patient 5,negative,2026-01-06,T2"),
            (k("", "  "), "Nobody,negative,2026-01-06,T2"),
        ] {
            b.push(b'\n');
            b.extend_from_slice(format!("{key},{rest}").as_bytes());
        }
        b.push(b'\n');
        b
    };
    let mut runs = Vec::new();
    for pad in [false, true] {
        let mut h = Harness::new();
        let mut c = (*h.splitter.config).clone();
        c.feeds[0].trim_keys = true;
        h.splitter.config = Arc::new(c);
        h.run_table("labs", "e1.csv", &Table::labs(1..=5, TS1))
            .await;
        let ev = h.upload("labs", "e2.csv", rows(pad));
        let r = h.run(&ev).await;
        assert_eq!(r.status, RunStatus::Applied, "padded: {pad}");
        assert_counts(&r, 6, 0, 1, 0, 4, 1);
        let rejects = h.rejects(r.rejects_key.as_deref().unwrap());
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0]["line"], 7);
        let reason = rejects[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("empty key column `record_id`"),
            "{reason}"
        );
        let sent = by_key(&h.take_sent());
        assert_eq!(sent.keys().map(String::as_str).collect::<Vec<_>>(), ["4"]);
        let m = &sent["4"];
        assert_eq!(m.env.fields["record_id"], if pad { " 4" } else { "4" });
        runs.push((
            m.env.idempotency_key.clone(),
            h.snapshot("labs").entries().collect::<Vec<_>>(),
        ));
        // the same file again: nothing changed
        let ev = h.upload("labs", "e3.csv", rows(pad));
        let r = h.run(&ev).await;
        assert_counts(&r, 6, 0, 0, 0, 5, 0);
        assert!(h.take_sent().is_empty());
    }
    assert_eq!(runs[0], runs[1], "padded keys give the bare file's run");
}
