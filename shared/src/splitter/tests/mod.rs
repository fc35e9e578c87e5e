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
mod guards;
mod harness;
mod queue;
mod state;

use crate::contract::envelope::Change;
use crate::contract::report::RunStatus;
use harness::{by_key, gzip, Harness, QueueMode, Table, BUCKET, LAB_COLS, LAB_HEADER, TS1, TS2};

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
