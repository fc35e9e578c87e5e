//! The feed's state across runs: the same event again, a corrupt or foreign snapshot, two
//! runs racing to commit, skipped events, and stale (older) events.

use super::faults::{FaultyStore, Keys, Op};
use super::harness::{cases, diff_scenario, lab_row, Harness, Msg, Table, BUCKET, TS1, TS2, TS3};
use crate::contract::event::ObjectEvent;
use crate::contract::layout::snapshot_key;
use crate::contract::report::{RunReport, RunStatus};
use crate::splitter::state::SnapshotError;
use crate::splitter::{Outcome, SplitError};
use std::collections::{BTreeMap, HashMap};

// ---------------------------------------------------------------------------------------
// the same event again
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_again_is_a_noop() {
    let h = Harness::new();
    let (t1, t2) = diff_scenario();
    let (ev1, _, _) = h.run_table("labs", "e1.csv", &t1).await;
    // a duplicate event of the baseline itself
    let again = h.run(&ev1).await;
    assert_eq!(again.status, RunStatus::Noop);
    let (ev2, _, msgs) = h.run_table("labs", "e2.csv", &t2).await;
    assert_eq!(msgs.len(), 8);
    let state = h.snapshot_bytes("labs").unwrap();
    let calls = h.queue.calls();
    for _ in 0..2 {
        let r = h.run(&ev2).await;
        assert_eq!(r.status, RunStatus::Noop);
        assert!(
            r.reason.as_deref().unwrap().contains("already"),
            "{:?}",
            r.reason
        );
        assert_eq!(r.counts.sent, 0);
        assert!(h.take_sent().is_empty());
        assert_eq!(h.snapshot_bytes("labs").unwrap(), state, "state moved");
    }
    assert_eq!(h.queue.calls(), calls);
    // the event without the quotes S3 sometimes leaves off the ETag is the same object
    let mut unquoted = ev2.clone();
    unquoted.etag = ev2.etag.as_deref().map(|e| e.trim_matches('"').to_string());
    assert_eq!(h.run(&unquoted).await.status, RunStatus::Noop);
}

// ---------------------------------------------------------------------------------------
// corrupt snapshot
// ---------------------------------------------------------------------------------------

type IsError = fn(&SnapshotError) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_snapshot_fails_the_run_permanently() {
    let h = Harness::new();
    let t1 = Table::labs(1..=10, TS1);
    h.run_table("labs", "e1.csv", &t1).await;
    let good = h.snapshot_bytes("labs").unwrap();
    // another feed's (valid) snapshot
    h.run_table("cases", "c1.csv", &cases(1..=3)).await;
    let foreign = h.snapshot_bytes("cases").unwrap();
    h.take_sent();
    let calls = h.queue.calls();

    let mut t2 = t1.clone();
    t2.set("1", "result", "positive");
    let ev = h.upload("labs", "e2.csv", t2.csv());
    let cases_: [(&str, Vec<u8>, IsError); 4] = [
        ("garbage", b"this is not a snapshot at all".to_vec(), |e| {
            *e == SnapshotError::BadMagic
        }),
        ("truncated", good[..good.len() / 2].to_vec(), |e| {
            *e == SnapshotError::Checksum
        }),
        ("empty", Vec::new(), |e| *e == SnapshotError::BadMagic),
        ("foreign", foreign, |e| {
            matches!(e, SnapshotError::ForeignFeed { .. })
        }),
    ];
    for (what, bytes, want) in cases_ {
        h.restore_snapshot("labs", bytes.clone());
        // no sleep: runs of the same event in the same millisecond still get distinct ids
        let before_reports = h.reports("labs").len();
        let err = h.process(&ev).await.expect_err(what);
        match &err {
            SplitError::Snapshot {
                bucket,
                key,
                source,
            } => {
                assert_eq!(bucket, BUCKET);
                assert_eq!(key, &snapshot_key("labs"));
                assert!(want(source), "{what}: {source:?}");
            }
            other => panic!("{what}: expected SplitError::Snapshot, got {other:?}"),
        }
        assert!(!err.retryable(), "{what}");
        assert!(err.to_string().contains("state was not changed"), "{err}");
        assert!(h.take_sent().is_empty());
        assert_eq!(
            h.snapshot_bytes("labs").unwrap(),
            bytes,
            "{what}: the bad state is left for an operator"
        );
        let reports = h.reports("labs");
        assert_eq!(
            reports.len(),
            before_reports + 1,
            "{what}: one report per run"
        );
        let failed: Vec<&RunReport> = reports
            .iter()
            .filter(|r| r.status == RunStatus::Failed)
            .collect();
        assert!(!failed.is_empty(), "{what}: a failed run report exists");
        assert!(failed
            .iter()
            .all(|r| r.reason.as_deref().unwrap().contains("snapshot")));
        assert!(failed.iter().all(|r| r.counts.sent == 0));
    }
    assert_eq!(h.queue.calls(), calls, "nothing sent");
}

// ---------------------------------------------------------------------------------------
// a lost race
// ---------------------------------------------------------------------------------------

/// Baseline 1..=40; X changes 1..=10 and adds 41..=45; Y changes 6..=15 and adds 46..=50.
fn race_scenario() -> (Table, Table, Table) {
    let base = Table::labs(1..=40, TS1);
    let mut x = base.clone();
    for id in 1..=10 {
        x.set(&id.to_string(), "result", "X-positive");
    }
    for id in 41..=45 {
        x.push(lab_row(id, TS1));
    }
    x.set_all("export_timestamp", TS2);
    let mut y = base.clone();
    for id in 6..=15 {
        y.set(&id.to_string(), "result", "Y-inconclusive");
    }
    for id in 46..=50 {
        y.push(lab_row(id, TS1));
    }
    y.set_all("export_timestamp", TS3);
    (base, x, y)
}

/// `m` without its column `col`.
fn without(mut m: BTreeMap<String, String>, col: &str) -> BTreeMap<String, String> {
    m.remove(col);
    m
}

fn race_harness() -> Harness<FaultyStore> {
    let store = FaultyStore::new();
    Harness::with_store(store.inner.clone(), store)
}

/// Two files of the same feed processed concurrently against the same store; both first
/// read the baseline state before either commits.
async fn race(
    h: &Harness<FaultyStore>,
) -> (ObjectEvent, ObjectEvent, RunReport, RunReport, Vec<Msg>) {
    let (base, x, y) = race_scenario();
    h.run_table("labs", "base.csv", &base).await;
    let ex = h.upload("labs", "x.csv", x.csv());
    let ey = h.upload("labs", "y.csv", y.csv());
    h.splitter
        .store
        .meet_at(Op::GetBytes, Keys::Prefix("state/"), 2);
    let (rx, ry) = tokio::join!(h.process(&ex), h.process(&ey));
    let report = |r: Result<Outcome, SplitError>| match r {
        Ok(Outcome::Report(r)) => *r,
        other => panic!("{other:?}"),
    };
    let (rx, ry) = (report(rx), report(ry));
    (ex, ey, rx, ry, h.take_sent())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_race_loses_nothing() {
    let h = race_harness();
    let feed = h.feed("labs");
    let (base, x, y) = race_scenario();
    let (ex, ey, rx, ry, msgs) = race(&h).await;
    assert_eq!(rx.status, RunStatus::Applied);
    assert_eq!(ry.status, RunStatus::Applied);
    let mut attempts = [rx.commit_attempts, ry.commit_attempts];
    attempts.sort();
    assert_eq!(
        attempts,
        [1, 2],
        "exactly one run lost the conditional commit and retried"
    );

    let snap = h.snapshot("labs");
    let (final_t, final_r) = if snap.header.source.key == ex.key {
        (&x, &rx)
    } else {
        assert_eq!(snap.header.source.key, ey.key);
        (&y, &ry)
    };
    assert_eq!(
        final_r.commit_attempts, 2,
        "the last committer is the one that retried"
    );
    assert_eq!(snap.header.run, final_r.run);
    assert_eq!(snap.entries().collect::<Vec<_>>(), final_t.entries(&feed));

    // every record whose final content differs from the baseline was sent with that content,
    // and the last message about each record carries its final content
    let compared = |t: &Table, k: &str| without(t.fields(k), "export_timestamp");
    let mut last: BTreeMap<String, &Msg> = BTreeMap::new();
    for m in &msgs {
        last.insert(m.env.record_key.clone(), m);
    }
    for k in final_t.keys() {
        let want = compared(final_t, &k);
        let differs = !base.has(&k) || compared(&base, &k) != want;
        if differs {
            assert!(
                msgs.iter().any(|m| m.env.record_key == k
                    && without(m.env.fields.clone(), "export_timestamp") == want),
                "record {k}: final content never sent"
            );
        }
        match last.get(&k) {
            Some(m) => assert_eq!(
                without(m.env.fields.clone(), "export_timestamp"),
                want,
                "record {k}: last message is stale"
            ),
            None => assert!(!differs, "record {k}"),
        }
    }
    // and each (record, transition) key was accepted for exactly one content
    let mut by_ikey: HashMap<&str, &BTreeMap<String, String>> = HashMap::new();
    for m in &msgs {
        if let Some(prev) = by_ikey.insert(&m.env.idempotency_key, &m.env.fields) {
            assert_eq!(
                without(prev.clone(), "export_timestamp"),
                without(m.env.fields.clone(), "export_timestamp"),
                "one idempotency key, two contents"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_reports_count_every_message_sent() {
    let h = race_harness();
    let (_, _, rx, ry, msgs) = race(&h).await;
    assert_eq!(rx.counts.sent + ry.counts.sent, msgs.len() as u64);
    assert_eq!(rx.send_calls + ry.send_calls, h.queue.calls() as u64);
}

// ---------------------------------------------------------------------------------------
// skipped events
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_and_unknown_feeds_are_skipped() {
    let h = Harness::new();
    let body = Table::labs(1..=3, TS1).csv();
    let keys = [
        ("runs/labs/x.json", "outside incoming/"),
        ("state/labs/snapshot", "outside incoming/"),
        ("rejects/labs/r.jsonl", "outside incoming/"),
        ("labs/e1.csv", "outside incoming/"),
        ("incoming/unknown/e1.csv", "no feed"),
        ("incoming/labs/", ""),
        ("incoming/labs", ""),
        ("incoming/e1.csv", ""),
    ];
    for (key, why) in keys {
        let etag = h.mem.insert(BUCKET, key, body.clone());
        let ev = ObjectEvent {
            bucket: BUCKET.into(),
            key: key.into(),
            etag: Some(etag),
            ..Default::default()
        };
        match h.process(&ev).await {
            Ok(Outcome::Skipped { key: k, reason }) => {
                assert_eq!(k, key);
                assert!(reason.contains(why), "{key}: {reason}");
            }
            other => panic!("{key}: expected Skipped, got {other:?}"),
        }
    }
    // nothing written: only the objects the test put there
    assert_eq!(h.mem.keys("runs/"), ["runs/labs/x.json"]);
    assert_eq!(h.mem.keys("rejects/"), ["rejects/labs/r.jsonl"]);
    assert_eq!(h.snapshot_bytes("labs").unwrap(), body);
    assert_eq!(h.queue.calls(), 0);

    // deleted or replaced after the event
    let h = Harness::new();
    let ghost = ObjectEvent {
        bucket: BUCKET.into(),
        key: "incoming/labs/gone.csv".into(),
        etag: Some("\"etag-404\"".into()),
        ..Default::default()
    };
    assert!(matches!(
        h.process(&ghost).await,
        Ok(Outcome::Skipped { .. })
    ));
    let old = h.upload("labs", "replaced.csv", body.clone());
    h.upload("labs", "replaced.csv", Table::labs(1..=4, TS2).csv());
    assert!(matches!(h.process(&old).await, Ok(Outcome::Skipped { .. })));
    assert!(h.snapshot_bytes("labs").is_none());
    assert!(h.mem.keys("runs/").is_empty());
}

// ---------------------------------------------------------------------------------------
// stale events
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_of_the_same_key_is_stale() {
    let h = Harness::new();
    let t1 = Table::labs(1..=5, TS1);
    let mut e1 = h.upload("labs", "latest.csv", t1.csv());
    e1.sequencer = Some("0055AED6DCD90281E5".into());
    h.run(&e1).await;
    let mut t2 = t1.clone();
    t2.set("2", "result", "positive");
    let mut e2 = h.upload("labs", "latest.csv", t2.csv());
    e2.sequencer = Some("0055AED6DCD90281E6".into());
    let r2 = h.run(&e2).await;
    assert_eq!(r2.counts.sent, 1);
    h.take_sent();
    let state = h.snapshot_bytes("labs").unwrap();
    // the first event arrives again, late
    let r = h.run(&e1).await;
    assert_eq!(r.status, RunStatus::Stale);
    assert!(r.reason.as_deref().unwrap().contains("sequencer"));
    assert!(h.take_sent().is_empty());
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_file_replayed_after_a_newer_one_is_stale() {
    let store = FaultyStore::new();
    let h = Harness::with_store(store.inner.clone(), store.clone());
    let (t1, t2) = diff_scenario();
    let e1 = h.upload("labs", "e1.csv", t1.csv());
    store.set_last_modified(&e1.key, "2026-03-01T00:00:05Z");
    let e2 = h.upload("labs", "e2.csv", t2.csv());
    store.set_last_modified(&e2.key, "2026-03-01T00:30:05Z");
    h.run(&e1).await;
    h.run(&e2).await;
    assert_eq!(h.take_sent().len(), 8);
    let state = h.snapshot_bytes("labs").unwrap();
    let r = h.run(&e1).await;
    assert_eq!(r.status, RunStatus::Stale);
    assert!(r.reason.as_deref().unwrap().contains("older"));
    assert!(
        h.take_sent().is_empty(),
        "an old file must not roll the API back"
    );
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_orders_files_modified_in_the_same_second() {
    let store = FaultyStore::new();
    let h = Harness::with_store(store.inner.clone(), store.clone());
    let (t1, t2) = diff_scenario();
    let mut e1 = h.upload("labs", "e1.csv", t1.csv());
    let mut e2 = h.upload("labs", "e2.csv", t2.csv());
    for (ev, at) in [
        (&mut e1, "2026-03-01T00:00:05.120Z"),
        (&mut e2, "2026-03-01T00:00:05.870Z"),
    ] {
        // S3's last-modified has 1 s resolution: both files carry the same one
        store.set_last_modified(&ev.key, "2026-03-01T00:00:05Z");
        ev.event_time = Some(at.into());
    }
    let r1 = h.run(&e1).await;
    assert_eq!(r1.source.event_time, e1.event_time);
    let r2 = h.run(&e2).await;
    assert_eq!(r2.status, RunStatus::Applied);
    assert_eq!(h.take_sent().len(), 8);
    assert_eq!(h.snapshot("labs").header.source.event_time, e2.event_time);
    let state = h.snapshot_bytes("labs").unwrap();
    let r = h.run(&e1).await;
    assert_eq!(r.status, RunStatus::Stale);
    assert!(
        r.reason.as_deref().unwrap().contains("older"),
        "{:?}",
        r.reason
    );
    assert!(h.take_sent().is_empty());
    assert_eq!(h.snapshot_bytes("labs").unwrap(), state);
}
