//! Differential runs that must equal the plain path: rows known by their raw line, the
//! reader on a thread or inline; and the run metrics, known rows included.

use super::harness::{by_key, Harness, Table, TS1, TS2};
use crate::contract::envelope::Change;
use crate::contract::report::RunStatus;

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
        assert!(crate::metrics::EMITTED.contains(&n.as_str()), "{n}");
    }
    assert_eq!(crate::metrics::validate_emf(&doc), Ok(()));
    assert_eq!(doc["RunsApplied"], 1);
    assert_eq!((doc["RowsKnown"].as_u64(), r.counts.known), (Some(99), 99));
    assert_eq!(doc["RowsChanged"], 1);
    assert_eq!(doc["RowsRead"], 100);
    assert_eq!(doc["feed"], "labs");
}
