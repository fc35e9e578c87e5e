//! The diff against the feed's state: exactly the new and changed rows, idempotency keys
//! that follow each record's transitions, duplicate keys in one file, composite keys.

use super::harness::{
    assert_counts, by_key, cases, diff_scenario, history, ikey, lab_row, Harness, Msg, Table, TS1,
    TS2, TS3, TS4,
};
use crate::contract::envelope::{idempotency_key, Change};
use crate::contract::report::RunStatus;
use crate::splitter::state::Snapshot;
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------
// the diff
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_file_sends_exactly_the_new_and_changed_rows() {
    let h = Harness::new();
    let feed = h.feed("labs");
    let (t1, t2) = diff_scenario();
    let (ev1, r1, _) = h.run_table("labs", "e1.csv", &t1).await;
    assert_eq!(r1.status, RunStatus::Baseline);
    let s1 = h.snapshot("labs");
    let (ev2, r2, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r2.status, RunStatus::Applied);
    assert_counts(&r2, 29, 5, 3, 6, 21, 8);
    assert_eq!(r2.counts.rejected, 0);
    assert_eq!(r2.counts.duplicate, 0);
    assert_eq!(r2.send_calls, 1);
    assert_eq!(
        r2.previous.as_ref().map(|p| p.key.as_str()),
        Some(ev1.key.as_str())
    );
    assert_eq!(r2.previous.as_ref().unwrap().etag, ev1.etag);
    assert!(r2.schema.added.is_empty() && r2.schema.removed.is_empty());

    let got = by_key(&msgs);
    let want: BTreeSet<String> = ["3", "7", "11", "31", "32", "33", "34", "35"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
    for (k, m) in &got {
        let is_new = !t1.has(k);
        assert_eq!(
            m.env.change,
            if is_new { Change::New } else { Change::Changed },
            "{k}"
        );
        assert_eq!(m.env.fields, t2.fields(k), "{k}");
        assert_eq!(m.env.fields["export_timestamp"], TS2);
        let prev = t1.has(k).then(|| t1.state_in(&feed, &s1, k).unwrap());
        if let Some(p) = prev {
            // a baseline record's state: its first content and a fresh history
            assert_eq!(p, history(t1.fp(&feed, k), &[]), "{k}");
        }
        assert_eq!(
            m.env.idempotency_key,
            ikey("labs", k, prev, t2.fp(&feed, k), 2)
        );
        assert_eq!(m.env.source.key, ev2.key);
    }
    let snap = h.snapshot("labs");
    assert_eq!(snap.header.source.key, ev2.key);
    assert_eq!(snap.header.row_count, 29);
    assert_eq!(snap.entries().collect::<Vec<_>>(), t2.entries(&feed));
}

// ---------------------------------------------------------------------------------------
// idempotency keys
// ---------------------------------------------------------------------------------------

fn one_key(msgs: &[Msg], record: &str) -> String {
    let m: Vec<&Msg> = msgs.iter().filter(|m| m.env.record_key == record).collect();
    assert_eq!(m.len(), 1, "exactly one message for {record}");
    m[0].env.idempotency_key.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_follow_transitions() {
    let h = Harness::new();
    let feed = h.feed("cases");
    let ta = cases(1..=5);
    let mut tb = ta.clone();
    tb.set("C003", "status", "closed");

    let (_, r1, m1) = h.run_table("cases", "f1.csv", &ta).await;
    assert_eq!(r1.counts.sent, 5);
    let k1 = one_key(&m1, "C003");
    let s1 = h.snapshot_bytes("cases").unwrap();
    let (ev2, _, m2) = h.run_table("cases", "f2.csv", &tb).await;
    assert_eq!(m2.len(), 1);
    let k2 = one_key(&m2, "C003");
    let s2 = h.snapshot_bytes("cases").unwrap();
    let (ev3, _, m3) = h.run_table("cases", "f3.csv", &ta).await;
    assert_eq!(m3.len(), 1);
    let k3 = one_key(&m3, "C003");
    assert_eq!(
        m3[0].env.fields,
        ta.fields("C003"),
        "the return to A is sent"
    );

    let (fa, fb) = (ta.fp(&feed, "C003"), tb.fp(&feed, "C003"));
    let (pa, pab) = (history(fa, &[]), history(fa, &[fb]));
    assert_eq!(k1, ikey("cases", "C003", None, fa, 1));
    assert_eq!(k2, ikey("cases", "C003", Some(pa), fb, 2));
    assert_eq!(k3, ikey("cases", "C003", Some(pab), fa, 3));
    assert_eq!(
        [m1[0].env.version, m2[0].env.version, m3[0].env.version],
        [1, 2, 3]
    );
    // the states the keys were computed from are the ones the snapshots hold
    let snap = |b: &[u8]| Snapshot::decode(b, Some("cases")).unwrap();
    assert_eq!(ta.state_in(&feed, &snap(&s1), "C003"), Some(pa));
    assert_eq!(ta.state_in(&feed, &snap(&s2), "C003"), Some(pab));
    assert_eq!(
        ta.state_in(&feed, &h.snapshot("cases"), "C003"),
        Some(history(fa, &[fb, fa]))
    );
    // an unchanged record keeps its history
    assert_eq!(
        ta.state_in(&feed, &h.snapshot("cases"), "C001"),
        Some(history(ta.fp(&feed, "C001"), &[]))
    );
    assert!(k1 != k2 && k2 != k3 && k1 != k3, "{k1} {k2} {k3}");

    // a re-run of the same transition (the state restored to before it) has the same key
    h.restore_snapshot("cases", s1);
    let (r, m) = (h.run(&ev2).await, h.take_sent());
    assert_eq!(r.status, RunStatus::Applied);
    assert_eq!(one_key(&m, "C003"), k2);
    assert_eq!(m.len(), 1);
    h.restore_snapshot("cases", s2.clone());
    let _ = h.run(&ev3).await;
    assert_eq!(one_key(&h.take_sent(), "C003"), k3);
    // and again from the same restored state
    h.restore_snapshot("cases", s2);
    let _ = h.run(&ev3).await;
    assert_eq!(one_key(&h.take_sent(), "C003"), k3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_transition_gets_a_new_key() {
    let h = Harness::new();
    let ta = cases(1..=3);
    let mut tb = ta.clone();
    tb.set("C002", "status", "closed");
    h.run_table("cases", "f1.csv", &ta).await;
    let (_, _, m2) = h.run_table("cases", "f2.csv", &tb).await; // A→B
    let (_, _, m3) = h.run_table("cases", "f3.csv", &ta).await; // B→A
    let (_, _, m4) = h.run_table("cases", "f4.csv", &tb).await; // A→B again
    let (k2, k3, k4) = (
        one_key(&m2, "C002"),
        one_key(&m3, "C002"),
        one_key(&m4, "C002"),
    );
    assert_ne!(k3, k4);
    assert_ne!(
        k2, k4,
        "the second A→B must not be deduplicated against the first"
    );
    let feed = h.feed("cases");
    let (fa, fb) = (ta.fp(&feed, "C002"), tb.fp(&feed, "C002"));
    assert_eq!(k2, ikey("cases", "C002", Some(history(fa, &[])), fb, 2));
    assert_eq!(k3, ikey("cases", "C002", Some(history(fa, &[fb])), fa, 3));
    assert_eq!(
        k4,
        ikey("cases", "C002", Some(history(fa, &[fb, fa])), fb, 4)
    );
    assert_eq!(
        tb.state_in(&feed, &h.snapshot("cases"), "C002"),
        Some(history(fa, &[fb, fa, fb]))
    );
}

// ---------------------------------------------------------------------------------------
// duplicate keys inside one file
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_first_occurrence_wins() {
    let h = Harness::new();
    let t1 = Table::labs(1..=10, TS1);
    h.run_table("labs", "e1.csv", &t1).await;

    let mut t2 = t1.clone();
    t2.set("3", "result", "positive"); // first occurrence of 3: changed
    let mut dup3 = t2.row("3").clone();
    dup3[2] = "inconclusive".into(); // second occurrence of 3: something else
    let mut dup5 = t2.row("5").clone(); // first occurrence of 5: unchanged
    dup5[2] = "positive".into(); // second occurrence of 5: a change that must lose
    let mut row12 = lab_row(12, TS1);
    row12[1] = "First Twelve".into();
    let mut dup12 = lab_row(12, TS1);
    dup12[1] = "Second Twelve".into();
    t2.push(row12);
    t2.push(dup3);
    t2.push(dup5);
    t2.push(dup12);
    t2.set_all("export_timestamp", TS2);

    let (_, r, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(r.status, RunStatus::Applied);
    assert_counts(&r, 14, 1, 1, 0, 9, 2);
    assert_eq!(r.counts.duplicate, 3);
    let got = by_key(&msgs);
    assert_eq!(got["3"].env.fields["result"], "positive");
    assert_eq!(got["12"].env.fields["patient_name"], "First Twelve");
    assert!(!got.contains_key("5"));
    assert_eq!(h.snapshot("labs").len(), 11);
    assert_eq!(
        h.snapshot("labs").entries().collect::<Vec<_>>(),
        t2.entries(&h.feed("labs"))
    );

    // the state holds the first occurrences: a file with them changes nothing ...
    let mut t3 = t1.clone();
    t3.set("3", "result", "positive");
    let mut row12 = lab_row(12, TS1);
    row12[1] = "First Twelve".into();
    t3.push(row12);
    t3.set_all("export_timestamp", TS3);
    let (_, r3, msgs) = h.run_table("labs", "e3.csv", &t3).await;
    assert_counts(&r3, 11, 0, 0, 0, 11, 0);
    assert!(msgs.is_empty());

    // ... and the second occurrences are changes
    let mut t4 = t3.clone();
    t4.set("3", "result", "inconclusive");
    t4.set("5", "result", "positive");
    t4.set("12", "patient_name", "Second Twelve");
    let (_, r4, msgs) = h.run_table("labs", "e4.csv", &t4).await;
    assert_counts(&r4, 11, 0, 3, 0, 8, 3);
    assert_eq!(
        by_key(&msgs).keys().map(String::as_str).collect::<Vec<_>>(),
        ["12", "3", "5"]
    );

    // deterministic: the same duplicate-laden file in a fresh feed gives the same state
    let h2 = Harness::new();
    h2.run_table("labs", "e1.csv", &t1).await;
    h2.run_table("labs", "e2.csv", &t2).await;
    let h3 = Harness::new();
    h3.run_table("labs", "e1.csv", &t1).await;
    let mut t2_again = t2.clone();
    t2_again.set_all("export_timestamp", TS4);
    h3.run_table("labs", "e2-again.csv", &t2_again).await;
    assert_eq!(
        h2.snapshot("labs").entries().collect::<Vec<_>>(),
        h3.snapshot("labs").entries().collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// composite keys
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_with_the_separator_do_not_collide() {
    let h = Harness::new();
    let mut t = Table::new(&["jurisdiction", "case_id", "status"], "case_id");
    t.push(vec!["CA|LA".into(), "7".into(), "open".into()]);
    t.push(vec!["CA".into(), "LA|7".into(), "open".into()]);
    let (_, r, msgs) = h.run_table("juris", "j1.csv", &t).await;
    assert_eq!(r.counts.new, 2, "two distinct records");
    assert_eq!(msgs.len(), 2);
    assert_ne!(msgs[0].env.idempotency_key, msgs[1].env.idempotency_key);
    assert_ne!(msgs[0].env.record_key, msgs[1].env.record_key);
    // record keys escape the separator; idempotency keys hash the raw values, in the
    // feed's key column order (jurisdiction, case_id)
    let feed = h.feed("juris");
    let got = by_key(&msgs);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["CA\\|LA|7", "CA|LA\\|7"]
    );
    let want = |jur: &str, case: &str| {
        idempotency_key(
            "juris",
            &[jur.as_bytes(), case.as_bytes()],
            None,
            Some(t.fp(&feed, case)),
            1,
        )
    };
    assert_eq!(got["CA\\|LA|7"].env.idempotency_key, want("CA|LA", "7"));
    assert_eq!(got["CA|LA\\|7"].env.idempotency_key, want("CA", "LA|7"));
    assert_eq!(got["CA\\|LA|7"].env.fields["jurisdiction"], "CA|LA");
    assert_eq!(h.snapshot("juris").len(), 2);
    // a single-column key is not escaped
    let mut c = cases(1..=1);
    c.push(vec!["A|B\\C".into(), "open".into(), "x".into()]);
    let (_, _, msgs) = h.run_table("cases", "c1.csv", &c).await;
    assert!(by_key(&msgs).contains_key("A|B\\C"));
}
