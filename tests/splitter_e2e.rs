//! The splitter end to end: generated files in moto's S3, the release `splitter` binary under
//! AWS's Runtime Interface Emulator, fan-out into moto's SQS.

use casefeed::contract::envelope::{Envelope, ENVELOPE_VERSION};
use casefeed::splitter::state::Snapshot;
use casefeed_e2e::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const FEED: &str = "lab_results";

async fn setup(test: &str) -> (Stack, Rie) {
    setup_with(test, FEEDS).await
}

async fn setup_with(test: &str, feeds_toml: &str) -> (Stack, Rie) {
    let stack = Stack::new(test, feeds_toml).await;
    let rie = Rie::start(
        &release_bin("splitter"),
        &stack.lambda_env(),
        &format!("splitter-{test}"),
    );
    (stack, rie)
}

fn result0(resp: &Value) -> &Value {
    resp.get("results")
        .and_then(|r| r.get(0))
        .unwrap_or_else(|| panic!("unexpected invoke answer: {resp}"))
}

async fn baseline(stack: &Stack, rie: &Rie, rows: &str) -> std::path::PathBuf {
    let base = stack.path("base.csv");
    let exp = gen(&["baseline", "--rows", rows, "--seed", "7"], &base);
    let ev = stack
        .upload("incoming/lab_results/export-0001.csv", &base)
        .await;
    baseline_of(rie, &ev, &exp).await;
    base
}

/// Invoke on a feed's first file; it must be a baseline of every row.
async fn baseline_of(rie: &Rie, ev: &Value, exp: &Expected) {
    let resp = rie.invoke(ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "baseline", "{resp}");
    assert_eq!(r["counts"]["read"], exp.rows);
    assert_eq!(r["counts"]["new"], exp.rows);
    assert_eq!(r["counts"]["sent"], 0);
}

fn check_envelopes(msgs: &[Received], next: &std::path::Path, exp: &Expected) {
    let rows = read_rows(next);
    let new: BTreeSet<&String> = exp.new.iter().collect();
    let changed: BTreeSet<&String> = exp.changed.iter().collect();
    let mut seen = BTreeSet::new();
    for m in msgs {
        let env = Envelope::decode(&m.body).expect("envelope decodes");
        assert_eq!(env.v, ENVELOPE_VERSION);
        assert_eq!(env.feed, FEED);
        assert_eq!(env.source.bucket, BUCKET);
        assert!(env.source.key.starts_with("incoming/lab_results/"));
        let want = if new.contains(&env.record_key) {
            "new"
        } else if changed.contains(&env.record_key) {
            "changed"
        } else {
            panic!(
                "message for a row that is neither new nor changed: {}",
                env.record_key
            )
        };
        assert_eq!(env.change.as_str(), want, "{}", env.record_key);
        assert_eq!(m.attributes.get("feed").map(String::as_str), Some(FEED));
        assert_eq!(m.attributes.get("change").map(String::as_str), Some(want));
        assert_eq!(
            m.attributes.get("idempotency_key"),
            Some(&env.idempotency_key)
        );
        assert_eq!(env.idempotency_key.len(), 32);
        let row = &rows[&env.record_key];
        let fields: BTreeMap<String, String> = env.fields.clone();
        assert_eq!(
            &fields, row,
            "fields of {} equal the file's row",
            env.record_key
        );
        assert!(
            seen.insert(env.record_key.clone()),
            "{} sent twice",
            env.record_key
        );
    }
    assert_eq!(seen.len(), exp.new.len() + exp.changed.len());
}

/// (a) first file = baseline, (b) next file → exactly its new+changed rows,
/// (c) the same event again → nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_next_and_repeated_event() {
    let (stack, rie) = setup("next").await;
    let base = baseline(&stack, &rie, "3000").await;
    assert!(
        stack.drain(&stack.queue_url).await.is_empty(),
        "a baseline sends nothing"
    );
    let snap = stack
        .get("state/lab_results/snapshot")
        .await
        .expect("snapshot written");
    let snap = Snapshot::decode(&snap, Some(FEED)).expect("snapshot decodes");
    assert_eq!(snap.header.row_count, 3000);
    assert_eq!(
        snap.header.source.key,
        "incoming/lab_results/export-0001.csv"
    );

    let next = stack.path("next.csv");
    let exp = gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "40",
            "--changed",
            "55",
            "--removed",
            "12",
            "--seed",
            "8",
            "--shuffle",
        ],
        &next,
    );
    let ev = stack
        .upload("incoming/lab_results/export 0002+final.csv", &next)
        .await;
    let resp = rie.invoke(&ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "applied", "{resp}");
    assert_eq!(
        r["key"], "incoming/lab_results/export 0002+final.csv",
        "key decoded"
    );
    assert_eq!(r["counts"]["new"], 40);
    assert_eq!(r["counts"]["changed"], 55);
    assert_eq!(r["counts"]["removed"], 12);
    assert_eq!(r["counts"]["unchanged"], exp.rows - 95);
    assert_eq!(r["counts"]["sent"], 95);
    let msgs = stack.drain(&stack.queue_url).await;
    assert_eq!(msgs.len(), 95);
    check_envelopes(&msgs, &next, &exp);

    // the run report in S3 says the same
    let reports = stack.reports(FEED).await;
    assert_eq!(reports.len(), 2);
    let rep = &reports[1];
    assert_eq!(rep["status"], "applied");
    assert_eq!(rep["counts"]["sent"], 95);
    assert_eq!(rep["send_calls"], 10, "ceil(95/10) SendMessageBatch calls");
    assert_eq!(
        rep["source"]["key"],
        "incoming/lab_results/export 0002+final.csv"
    );
    assert_eq!(
        rep["previous"]["key"],
        "incoming/lab_results/export-0001.csv"
    );

    // (c) the same event again: a no-op
    let resp = rie.invoke(&ev).await;
    assert_eq!(result0(&resp)["status"], "noop", "{resp}");
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    // an event for an object that is gone by now is skipped, not an error
    let snap_before = stack.get("state/lab_results/snapshot").await;
    let resp = rie
        .invoke(&s3_event(
            "incoming/lab_results/does-not-exist.csv",
            "x",
            1,
            "00AA",
        ))
        .await;
    assert!(
        result0(&resp)["skipped"]
            .as_str()
            .unwrap_or("")
            .contains("deleted or replaced"),
        "{resp}"
    );
    assert_eq!(stack.get("state/lab_results/snapshot").await, snap_before);

    // no row value in the function's logs
    let log = rie.log_text();
    let rows = read_rows(&next);
    for row in rows.values().take(200) {
        for col in [
            "first_name",
            "last_name",
            "phone",
            "street",
            "date_of_birth",
        ] {
            let v = &row[col];
            if v.len() >= 5 {
                assert!(!log.contains(v.as_str()), "log contains the value of {col}");
            }
        }
    }
}

/// (d) shuffled rows and reordered columns, no content change → nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_rows_and_reordered_columns_send_nothing() {
    let (stack, rie) = setup("shuffle").await;
    let base = baseline(&stack, &rie, "2000").await;
    let next = stack.path("same.csv");
    let exp = gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "0",
            "--changed",
            "0",
            "--removed",
            "0",
            "--seed",
            "9",
            "--shuffle",
            "--reorder-columns",
        ],
        &next,
    );
    let base_cols: Vec<String> = csv::Reader::from_path(&base)
        .unwrap()
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_ne!(
        exp.columns, base_cols,
        "the generator reordered the columns"
    );
    let ev = stack
        .upload("incoming/lab_results/export-0002.csv", &next)
        .await;
    let resp = rie.invoke(&ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "applied", "{resp}");
    assert_eq!(r["counts"]["new"], 0);
    assert_eq!(r["counts"]["changed"], 0);
    assert_eq!(r["counts"]["unchanged"], 2000);
    assert_eq!(r["counts"]["sent"], 0);
    assert!(stack.drain(&stack.queue_url).await.is_empty());
}

/// (e) malformed rows → rejects report with line numbers; good rows still processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_reported_and_the_rest_processed() {
    let (stack, rie) = setup("malformed").await;
    let base = baseline(&stack, &rie, "1500").await;
    let next = stack.path("bad.csv");
    let exp = gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "7",
            "--changed",
            "9",
            "--removed",
            "0",
            "--malformed",
            "6",
            "--seed",
            "10",
        ],
        &next,
    );
    assert_eq!(exp.malformed_lines.len(), 6);
    let ev = stack
        .upload("incoming/lab_results/export-0002.csv", &next)
        .await;
    let resp = rie.invoke(&ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "applied", "{resp}");
    assert_eq!(r["counts"]["rejected"], 6);
    assert_eq!(r["counts"]["sent"], 16);
    let msgs = stack.drain(&stack.queue_url).await;
    check_envelopes(&msgs, &next, &exp);
    let rejects = stack.list("rejects/lab_results/").await;
    assert_eq!(rejects.len(), 1);
    let body = String::from_utf8(stack.get(&rejects[0]).await.unwrap()).unwrap();
    let mut lines = Vec::new();
    for l in body.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.contains("ragged") || reason.contains("UTF-8"),
            "{reason}"
        );
        lines.push(v["line"].as_u64().unwrap());
    }
    lines.sort();
    assert_eq!(lines, exp.malformed_lines);
    let reports = stack.reports(FEED).await;
    assert_eq!(reports[1]["rejects_key"], rejects[0].as_str());
}

/// (f) a missing required column rejects the file; the state does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_column_rejects_the_file() {
    let (stack, rie) = setup("required").await;
    let base = baseline(&stack, &rie, "1000").await;
    let before = stack.get("state/lab_results/snapshot").await.unwrap();
    let next = stack.path("nores.csv");
    gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "5",
            "--changed",
            "5",
            "--removed",
            "0",
            "--drop-column",
            "result",
            "--seed",
            "11",
        ],
        &next,
    );
    let ev = stack
        .upload("incoming/lab_results/export-0002.csv", &next)
        .await;
    let resp = rie.invoke(&ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "rejected", "{resp}");
    assert!(r["reason"].as_str().unwrap().contains("result"), "{resp}");
    assert_eq!(
        stack.get("state/lab_results/snapshot").await.unwrap(),
        before,
        "state unchanged"
    );
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    let reports = stack.reports(FEED).await;
    assert_eq!(reports[1]["status"], "rejected");

    // an empty object is rejected with a clear reason too
    let empty = stack.path("empty.csv");
    std::fs::write(&empty, b"").unwrap();
    let ev = stack
        .upload("incoming/lab_results/export-0003.csv", &empty)
        .await;
    let resp = rie.invoke(&ev).await;
    assert_eq!(result0(&resp)["status"], "rejected");
    assert!(result0(&resp)["reason"].as_str().unwrap().contains("empty"));
    assert_eq!(
        stack.get("state/lab_results/snapshot").await.unwrap(),
        before
    );
}

/// Objects that are not ours, and events that are not S3 notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_and_events() {
    let (stack, rie) = setup("foreign").await;
    let f = stack.path("x.csv");
    gen(&["baseline", "--rows", "10", "--seed", "1"], &f);
    let ev = stack.upload("incoming/unknown_feed/x.csv", &f).await;
    let resp = rie.invoke(&ev).await;
    assert!(
        result0(&resp)["skipped"]
            .as_str()
            .unwrap()
            .contains("no feed"),
        "{resp}"
    );
    let ev = stack.upload("runs/lab_results/x.csv", &f).await;
    let resp = rie.invoke(&ev).await;
    assert!(
        result0(&resp)["skipped"]
            .as_str()
            .unwrap()
            .contains("outside incoming/"),
        "{resp}"
    );
    let resp = rie
        .invoke(&serde_json::json!({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
        .await;
    assert_eq!(resp["ignored"], "s3:TestEvent", "{resp}");
    let resp = rie.invoke(&serde_json::json!({"hello": "world"})).await;
    assert!(
        resp["errorMessage"]
            .as_str()
            .unwrap_or("")
            .contains("unsupported event"),
        "{resp}"
    );
    assert!(stack.list("state/").await.is_empty());
    assert!(stack.drain(&stack.queue_url).await.is_empty());
}

/// (g) two splitters racing on one feed: the state is never lost and no row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_splitters_lose_nothing() {
    let (stack, rie1) = setup("race").await;
    let rie2 = Rie::start(
        &release_bin("splitter"),
        &stack.lambda_env(),
        "splitter-race-2",
    );
    let base = baseline(&stack, &rie1, "20000").await;
    let f1 = stack.path("f1.csv");
    let f2 = stack.path("f2.csv");
    let f3 = stack.path("f3.csv");
    gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "50",
            "--changed",
            "60",
            "--removed",
            "5",
            "--seed",
            "21",
            "--shuffle",
        ],
        &f1,
    );
    gen(
        &[
            "next",
            "--prev",
            f1.to_str().unwrap(),
            "--new",
            "30",
            "--changed",
            "40",
            "--removed",
            "5",
            "--seed",
            "22",
            "--shuffle",
        ],
        &f2,
    );
    gen(
        &[
            "next",
            "--prev",
            f2.to_str().unwrap(),
            "--new",
            "20",
            "--changed",
            "25",
            "--removed",
            "5",
            "--seed",
            "23",
            "--shuffle",
        ],
        &f3,
    );
    let e1 = stack
        .upload("incoming/lab_results/export-0002.csv", &f1)
        .await;

    // the same file twice at once: one applies it, the other finds it done
    let (a, b) = tokio::join!(rie1.invoke(&e1), rie2.invoke(&e1));
    for r in [&a, &b] {
        assert!(r.get("errorMessage").is_none(), "{r}");
    }
    let mut statuses = vec![
        result0(&a)["status"].to_string(),
        result0(&b)["status"].to_string(),
    ];
    statuses.sort();
    assert_eq!(statuses, ["\"applied\"", "\"noop\""], "{a} {b}");
    let after_f1 = stack.drain(&stack.queue_url).await;

    // two different files at once (f3 uploaded after f2): whatever the interleaving, the
    // newest file ends up as the state and every row that differs from f1 is sent
    let e2 = stack
        .upload("incoming/lab_results/export-0003.csv", &f2)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let e3 = stack
        .upload("incoming/lab_results/export-0004.csv", &f3)
        .await;
    let (a, b) = tokio::join!(rie1.invoke(&e2), rie2.invoke(&e3));
    for r in [&a, &b] {
        assert!(r.get("errorMessage").is_none(), "{r}");
    }
    let snap = Snapshot::decode(
        &stack.get("state/lab_results/snapshot").await.unwrap(),
        Some(FEED),
    )
    .unwrap();
    assert_eq!(
        snap.header.source.key, "incoming/lab_results/export-0004.csv",
        "the newest file is the state: {a} {b}"
    );
    // a replay of f2's event now is stale and changes nothing
    let resp = rie1.invoke(&e2).await;
    assert_eq!(result0(&resp)["status"], "stale", "{resp}");
    let snap2 = Snapshot::decode(
        &stack.get("state/lab_results/snapshot").await.unwrap(),
        Some(FEED),
    )
    .unwrap();
    assert_eq!(
        snap2.header.source.key,
        "incoming/lab_results/export-0004.csv"
    );

    let base = f1.clone();
    let f2 = f3.clone();
    let _ = after_f1;
    // nothing lost: every record whose final content differs from the baseline was sent
    // with that final content
    let msgs = stack.drain(&stack.queue_url).await;
    let mut sent: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for m in &msgs {
        let env = Envelope::decode(&m.body).unwrap();
        keys.insert(env.idempotency_key.clone());
        sent.entry(env.record_key.clone())
            .or_default()
            .push(env.fields.clone());
    }
    let strip = |mut r: BTreeMap<String, String>| {
        r.remove("export_timestamp");
        r
    };
    let base_rows = read_rows(&base);
    let final_rows = read_rows(&f2);
    let mut differing = 0;
    for (id, row) in &final_rows {
        let row = strip(row.clone());
        if base_rows.get(id).map(|b| strip(b.clone())) == Some(row.clone()) {
            continue;
        }
        differing += 1;
        let got = sent
            .get(id)
            .unwrap_or_else(|| panic!("record {id} changed but was never sent"));
        assert!(
            got.iter().any(|f| strip(f.clone()) == row),
            "record {id}: its final content was never sent"
        );
    }
    assert!(differing >= 50, "the files really differ ({differing})");
    // duplicates of a transition carry the same key: distinct keys ≤ distinct transitions
    assert!(
        keys.len() <= 50 + 60 + 30 + 40 + differing,
        "{} keys",
        keys.len()
    );
}

/// Large objects are read by parallel ranged GETs (here against moto, with small parts):
/// the bytes come back whole and in order, the object's identity is that of the first part,
/// and a stale ETag fails the open instead of mixing versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_parallel_reads_return_the_object_whole_and_in_order() {
    use casefeed::adapters::s3::{RangedReads, S3Store};
    use casefeed::ports::store::{ObjectStore, OpenSpec, StoreError};
    use tokio::io::AsyncReadExt;
    let stack = Stack::new("ranged", FEEDS).await;
    // 3 MiB + a bit of bytes that differ by position, so a part out of order would show
    let data: Vec<u8> = (0..(3u64 << 20) + 12_345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = stack.path("blob.bin");
    std::fs::write(&file, &data).expect("write blob");
    let ev = stack.upload("incoming/lab_results/blob.bin", &file).await;
    let etag = ev["Records"][0]["s3"]["object"]["eTag"]
        .as_str()
        .map(str::to_string);
    let conf = casefeed_tools::local::sdk_config(&stack.inner.moto.endpoint).await;
    let store = S3Store::from_conf(&conf).with_ranged_reads(RangedReads {
        min_size: 1,
        part_size: 256 * 1024,
        concurrency: 3,
    });
    for hint in [Some(data.len() as u64), Some(1), None] {
        let spec = OpenSpec {
            if_match: etag.clone(),
            size_hint: hint,
            ..OpenSpec::default()
        };
        let mut obj = store
            .open(BUCKET, "incoming/lab_results/blob.bin", &spec)
            .await
            .expect("open");
        assert_eq!(obj.meta.size, Some(data.len() as u64), "hint {hint:?}");
        let mut got = Vec::new();
        obj.body.read_to_end(&mut got).await.expect("read");
        assert_eq!(got.len(), data.len(), "hint {hint:?}");
        assert!(got == data, "bytes differ (hint {hint:?})");
    }
    // a small object under a ranged read: one answer holds it all
    let small = stack.path("small.bin");
    std::fs::write(&small, b"id,v\n1,a\n").expect("write");
    stack.upload("incoming/lab_results/small.bin", &small).await;
    let spec = OpenSpec {
        size_hint: Some(10),
        ..OpenSpec::default()
    };
    let mut obj = store
        .open(BUCKET, "incoming/lab_results/small.bin", &spec)
        .await
        .expect("open small");
    let mut got = Vec::new();
    obj.body.read_to_end(&mut got).await.expect("read small");
    assert_eq!(got, b"id,v\n1,a\n");
    // the object was replaced since the event: the conditional first part refuses
    let spec = OpenSpec {
        if_match: Some("0123456789abcdef0123456789abcdef".into()),
        size_hint: Some(data.len() as u64),
        ..OpenSpec::default()
    };
    let err = store
        .open(BUCKET, "incoming/lab_results/blob.bin", &spec)
        .await
        .err()
        .expect("a stale ETag must fail");
    assert!(matches!(err, StoreError::PreconditionFailed), "{err}");
}

/// A feed of lab results whose exports are ordered by object key, and one ordered by the
/// user metadata `x-amz-meta-export-seq`.
const ORDERED_FEEDS: &str = r#"
[defaults]
first_file = "baseline"

[[feed]]
name = "labs_by_key"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
order = "key"

[[feed]]
name = "labs_by_seq"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
order = "metadata"
order_metadata = "export-seq"
"#;

/// A small baseline and the next export of it (new, changed and removed rows).
fn two_exports(stack: &Stack) -> (std::path::PathBuf, Expected, std::path::PathBuf, Expected) {
    let base = stack.path("base.csv");
    let base_exp = gen(&["baseline", "--rows", "300", "--seed", "31"], &base);
    let next = stack.path("next.csv");
    let next_exp = gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "5",
            "--changed",
            "7",
            "--removed",
            "3",
            "--seed",
            "32",
        ],
        &next,
    );
    (base, base_exp, next, next_exp)
}

fn state_key(feed: &str) -> String {
    format!("state/{feed}/snapshot")
}

/// (1) Exports ordered by key: the export named earlier, uploaded after a later one, is stale
/// and sends nothing (S3 sees it as the newest upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_export_ordered_by_key_is_stale_and_sends_nothing() {
    let (stack, rie) = setup_with("late-key", ORDERED_FEEDS).await;
    let (base, base_exp, next, _) = two_exports(&stack);
    let ev = stack
        .upload("incoming/labs_by_key/2026-03-01T1000.csv", &base)
        .await;
    baseline_of(&rie, &ev, &base_exp).await;
    let ev = stack
        .upload("incoming/labs_by_key/2026-03-01T1030.csv", &next)
        .await;
    assert_eq!(result0(&rie.invoke(&ev).await)["status"], "applied");
    assert_eq!(stack.drain(&stack.queue_url).await.len(), 12);
    let state = stack.get(&state_key("labs_by_key")).await;
    // the 09:30 export arrives late
    let ev = stack
        .upload("incoming/labs_by_key/2026-03-01T0930.csv", &base)
        .await;
    let resp = rie.invoke(&ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "stale", "{resp}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("2026-03-01T0930.csv") && reason.contains("2026-03-01T1030.csv"),
        "{resp}"
    );
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    assert_eq!(stack.get(&state_key("labs_by_key")).await, state);
}

/// (2) Exports ordered by `x-amz-meta-export-seq`: a lower value, uploaded last, is stale
/// and sends nothing; an export without the value is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_export_ordered_by_metadata_is_stale_and_sends_nothing() {
    let (stack, rie) = setup_with("late-meta", ORDERED_FEEDS).await;
    let (base, base_exp, next, _) = two_exports(&stack);
    let up = |name: &str, file: &std::path::Path, seq: &'static str| {
        let (st, key, path) = (
            &stack,
            format!("incoming/labs_by_seq/{name}"),
            file.to_path_buf(),
        );
        async move {
            st.upload_with_metadata(&key, &path, &[("export-seq", seq)])
                .await
        }
    };
    baseline_of(&rie, &up("b.csv", &base, "9").await, &base_exp).await;
    let resp = rie.invoke(&up("a.csv", &next, "10").await).await;
    assert_eq!(result0(&resp)["status"], "applied", "{resp}");
    assert_eq!(stack.drain(&stack.queue_url).await.len(), 12);
    let state = stack.get(&state_key("labs_by_seq")).await;
    let snap = Snapshot::decode(state.as_deref().unwrap(), Some("labs_by_seq")).unwrap();
    let seq = snap
        .header
        .source
        .order_metadata
        .expect("the state keeps its order value");
    assert_eq!(
        (seq.name.as_str(), seq.value.as_str()),
        ("export-seq", "10")
    );
    // 9 after 10: late (as strings "9" would sort after "10")
    let resp = rie.invoke(&up("c.csv", &base, "9").await).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "stale", "{resp}");
    assert!(r["reason"]
        .as_str()
        .unwrap_or("")
        .contains("x-amz-meta-export-seq"));
    // no value at all: rejected
    let ev = stack.upload("incoming/labs_by_seq/d.csv", &base).await;
    let resp = rie.invoke(&ev).await;
    assert_eq!(result0(&resp)["status"], "rejected", "{resp}");
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    assert_eq!(stack.get(&state_key("labs_by_seq")).await, state);
}

/// (3) The default `removed = "count"`: nothing is sent for removed rows, and the run's
/// removed list names exactly the records the generator removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_records_are_listed_by_key_and_not_sent() {
    let (stack, rie) = setup("removed").await;
    let base = baseline(&stack, &rie, "400").await;
    let next = stack.path("next.csv");
    let exp = gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "4",
            "--changed",
            "6",
            "--removed",
            "9",
            "--seed",
            "41",
            "--shuffle",
        ],
        &next,
    );
    let ev = stack
        .upload("incoming/lab_results/export-0002.csv", &next)
        .await;
    let resp = rie.invoke(&ev).await;
    let r = result0(&resp);
    assert_eq!(r["status"], "applied", "{resp}");
    assert_eq!(r["counts"]["removed"], 9);
    let msgs = stack.drain(&stack.queue_url).await;
    assert_eq!(msgs.len(), 10, "only the new and changed rows");
    check_envelopes(&msgs, &next, &exp);
    let rep = &stack.reports(FEED).await[1];
    let key = rep["removed_key"]
        .as_str()
        .expect("the report names the list");
    assert!(
        key.starts_with("removed/lab_results/") && key.ends_with(".jsonl"),
        "{key}"
    );
    assert_eq!(rep["counts"]["removed_unnamed"], 0);
    let body = String::from_utf8(stack.get(key).await.expect("removed list")).unwrap();
    let mut listed = Vec::new();
    for l in body.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            v.as_object().unwrap().len(),
            2,
            "record_key and version only: {l}"
        );
        assert!(v["version"].as_u64().unwrap() >= 2, "{l}");
        listed.push(v["record_key"].as_str().unwrap().to_string());
    }
    listed.sort();
    let mut want = exp.removed.clone();
    want.sort();
    assert_eq!(listed, want);
}
