//! The splitter's guards end to end: the release `splitter` binary under AWS's Runtime
//! Interface Emulator against moto, and the operator's `casefeed held|approve|discard`
//! commands as a user runs them.

use casefeed::contract::envelope::{Change, Envelope};
use casefeed_e2e::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const FEED: &str = "lab_results";
const STATE: &str = "state/lab_results/snapshot";

/// Guards tight enough for small files: at most 100 changes, shares of 10% above 50 rows.
fn feeds(extra: &str) -> String {
    format!(
        r#"
[defaults]
first_file = "baseline"
max_changes = 100
guard_floor = 50
{extra}

[[feed]]
name = "lab_results"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
required_columns = ["record_id", "patient_id", "test_code", "result"]
"#
    )
}

async fn setup(test: &str, feeds_toml: &str) -> (Stack, Rie) {
    let stack = Stack::new(test, feeds_toml).await;
    let rie = Rie::start(
        &release_bin("splitter"),
        &stack.lambda_env(),
        &format!("splitter-{test}"),
    );
    (stack, rie)
}

fn result0(resp: &Value) -> Value {
    resp.get("results")
        .and_then(|r| r.get(0))
        .cloned()
        .unwrap_or_else(|| panic!("unexpected invoke answer: {resp}"))
}

async fn invoke(rie: &Rie, ev: &Value) -> Value {
    result0(&rie.invoke(ev).await)
}

async fn baseline(stack: &Stack, rie: &Rie, rows: &str) -> PathBuf {
    let base = stack.path("base.csv");
    gen(&["baseline", "--rows", rows, "--seed", "11"], &base);
    let ev = stack
        .upload("incoming/lab_results/export-0001.csv", &base)
        .await;
    let r = invoke(rie, &ev).await;
    assert_eq!(r["status"], "baseline", "{r}");
    base
}

fn tripped(r: &Value) -> Vec<String> {
    r["guards"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|g| g["tripped"] == true)
                .map(|g| g["guard"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Run the `casefeed` CLI with the splitter's environment; (success, stdout + stderr).
fn cli(stack: &Stack, args: &[&str]) -> (bool, String) {
    let out = Command::new(release_bin("casefeed"))
        .args(args)
        .envs(stack.lambda_env())
        .env("DATA_BUCKET", BUCKET)
        .env("CASEFEED_NO_METRICS", "1")
        .output()
        .expect("run casefeed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Rewrite one column of every data row.
fn rewrite_column(from: &Path, to: &Path, col: &str, f: impl Fn(&str) -> String) -> usize {
    let mut rdr = csv::Reader::from_path(from).expect("open");
    let header = rdr.headers().expect("header").clone();
    let i = header.iter().position(|h| h == col).expect("column");
    let mut w = csv::Writer::from_path(to).expect("create");
    w.write_record(&header).expect("write");
    let mut n = 0;
    for r in rdr.records() {
        let r = r.expect("record");
        let mut row: Vec<String> = r.iter().map(str::to_string).collect();
        row[i] = f(&row[i]);
        w.write_record(&row).expect("write");
        n += 1;
    }
    w.flush().expect("flush");
    n
}

fn keys_of(msgs: &[Received]) -> (BTreeSet<String>, Vec<Envelope>) {
    let envs: Vec<Envelope> = msgs
        .iter()
        .map(|m| Envelope::decode(&m.body).expect("envelope"))
        .collect();
    let keys: BTreeSet<String> = envs.iter().map(|e| e.record_key.clone()).collect();
    assert_eq!(keys.len(), envs.len(), "a record was sent twice");
    (keys, envs)
}

/// An exporter that reformats a date column in every row trips the flood guard; nothing is
/// sent until `casefeed approve`, which sends each row exactly once and commits the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reformatted_dates_are_held_and_approve_sends_each_row_once() {
    let (stack, rie) = setup("flood", &feeds("")).await;
    let base = baseline(&stack, &rie, "600").await;
    let state = stack.get(STATE).await.expect("state");
    let next = stack.path("reformatted.csv");
    // 2020-03-02 07:20 -> 03/02/2020 07:20
    let rows = rewrite_column(&base, &next, "specimen_collected", |v| {
        let (d, t) = v.split_once(' ').unwrap_or((v, ""));
        let p: Vec<&str> = d.split('-').collect();
        format!("{}/{}/{} {t}", p[1], p[2], p[0])
    });
    let key = "incoming/lab_results/export-0002.csv";
    let ev = stack.upload(key, &next).await;
    let r = invoke(&rie, &ev).await;
    assert_eq!(r["status"], "held", "{r}");
    assert_eq!(tripped(&r), vec!["flood"]);
    assert_eq!(r["counts"]["changed"], rows as u64);
    assert_eq!(r["counts"]["sent"], 0);
    assert!(r["reason"].as_str().unwrap().contains("casefeed approve"));
    assert!(
        stack.drain(&stack.queue_url).await.is_empty(),
        "nothing sent"
    );
    assert_eq!(stack.get(STATE).await.unwrap(), state, "state unchanged");
    let id = r["held"]["id"].as_str().expect("held id").to_string();
    assert_eq!(
        stack.list("held/lab_results/").await,
        vec![
            format!("held/lab_results/{id}.json"),
            format!("held/lab_results/{id}.source")
        ]
    );
    // the operator lists and approves it
    let (ok, out) = cli(&stack, &["held", "--feed", FEED]);
    assert!(ok, "{out}");
    assert!(out.contains(&id) && out.contains("1 held file"), "{out}");
    let (ok, out) = cli(
        &stack,
        &["approve", "--feed", FEED, &id, "--reason", "e2e: checked"],
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("applied"), "{out}");
    let msgs = stack.drain(&stack.queue_url).await;
    let (keys, envs) = keys_of(&msgs);
    let want: BTreeSet<String> = read_rows(&next).into_keys().collect();
    assert_eq!(keys, want, "each row exactly once");
    assert!(envs
        .iter()
        .all(|e| e.change == Change::Changed && e.source.key == key));
    let snap =
        casefeed::splitter::state::Snapshot::decode(&stack.get(STATE).await.unwrap(), Some(FEED))
            .expect("snapshot");
    assert_eq!(snap.header.source.key, key);
    assert!(stack.list("held/").await.is_empty());
    // approving again fails cleanly; the original event again changes nothing
    let (ok, out) = cli(
        &stack,
        &["approve", "--feed", FEED, &id, "--reason", "e2e: checked"],
    );
    assert!(!ok && out.contains("nothing is held"), "{out}");
    let r = invoke(&rie, &ev).await;
    assert_eq!(r["status"], "noop", "{r}");
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    let reports = stack.reports(FEED).await;
    let statuses: Vec<&str> = reports
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    for s in ["baseline", "held", "applied", "noop"] {
        assert!(statuses.contains(&s), "{statuses:?}");
    }
}

/// A truncated upload is held by the shrink guard, the state is unchanged; discard drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_is_held_and_discarded() {
    let (stack, rie) = setup("shrink", &feeds("")).await;
    let base = baseline(&stack, &rie, "1000").await;
    let state = stack.get(STATE).await.expect("state");
    // cut the upload in the middle of a row, as a broken transfer would
    let bytes = std::fs::read(&base).unwrap();
    let cut = stack.path("cut.csv");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let ev = stack
        .upload("incoming/lab_results/export-0002.csv", &cut)
        .await;
    let r = invoke(&rie, &ev).await;
    assert_eq!(r["status"], "held", "{r}");
    assert_eq!(tripped(&r), vec!["shrink"]);
    assert!(r["counts"]["removed"].as_u64().unwrap() > 600, "{r}");
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    assert_eq!(stack.get(STATE).await.unwrap(), state);
    let id = r["held"]["id"].as_str().unwrap().to_string();
    // --json: one document listing it, with its counts
    let (ok, out) = cli(&stack, &["held", "--feed", FEED, "--json"]);
    assert!(ok, "{out}");
    let listed: Value = serde_json::from_str(&out).expect("held --json parses");
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["held"][0]["id"], id.as_str(), "{listed}");
    let (ok, out) = cli(
        &stack,
        &[
            "discard",
            "--feed",
            FEED,
            &id,
            "--reason",
            "e2e: truncated upload",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    let discarded: Value = serde_json::from_str(&out).expect("discard --json parses");
    assert_eq!(discarded["command"], "discard", "{discarded}");
    assert_eq!(discarded["report"]["status"], "discarded", "{discarded}");
    assert!(discarded["audit_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("audit/")));
    assert!(stack.list("held/").await.is_empty());
    assert_eq!(stack.get(STATE).await.unwrap(), state);
    // the complete file afterwards is simply unchanged
    let ev = stack
        .upload("incoming/lab_results/export-0003.csv", &base)
        .await;
    let r = invoke(&rie, &ev).await;
    assert_eq!(r["status"], "applied", "{r}");
    assert_eq!(r["counts"]["unchanged"], 1000);
    assert_eq!(r["counts"]["sent"], 0);
}

/// Header changes: an added column and reordered columns send only the real changes; a
/// renamed compared column is held (existing rows cannot be compared) until approved, and
/// the new column set is compared from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_changes_added_reordered_and_renamed_columns() {
    let (stack, rie) = setup("header", &feeds("")).await;
    let base = baseline(&stack, &rie, "800").await;
    let next = stack.path("added.csv");
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
            "--seed",
            "5",
            "--reorder-columns",
            "--add-column",
            "lab_comment",
        ],
        &next,
    );
    let r = invoke(
        &rie,
        &stack
            .upload("incoming/lab_results/export-0002.csv", &next)
            .await,
    )
    .await;
    assert_eq!(r["status"], "applied", "{r}");
    assert_eq!(r["schema"]["added"], serde_json::json!(["lab_comment"]));
    assert_eq!(r["counts"]["new"], 7);
    assert_eq!(r["counts"]["changed"], 9, "the added column changes no row");
    let (keys, _) = keys_of(&stack.drain(&stack.queue_url).await);
    let want: BTreeSet<String> = exp.new.iter().chain(&exp.changed).cloned().collect();
    assert_eq!(keys, want);

    // rename `result_date` to `resulted_on`
    let text = std::fs::read_to_string(&next).unwrap();
    let (header, body) = text.split_once('\n').unwrap();
    assert!(header.contains("result_date"));
    let renamed = stack.path("renamed.csv");
    std::fs::write(
        &renamed,
        format!("{}\n{body}", header.replace("result_date", "resulted_on")),
    )
    .unwrap();
    let state = stack.get(STATE).await.unwrap();
    let r = invoke(
        &rie,
        &stack
            .upload("incoming/lab_results/export-0003.csv", &renamed)
            .await,
    )
    .await;
    assert_eq!(r["status"], "held", "{r}");
    assert_eq!(tripped(&r), vec!["schema"]);
    assert_eq!(r["schema"]["removed"], serde_json::json!(["result_date"]));
    assert_eq!(r["schema"]["added"], serde_json::json!(["resulted_on"]));
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    assert_eq!(stack.get(STATE).await.unwrap(), state);
    let id = r["held"]["id"].as_str().unwrap().to_string();
    let (ok, out) = cli(
        &stack,
        &["approve", "--feed", FEED, &id, "--reason", "e2e: checked"],
    );
    assert!(ok, "{out}");
    assert!(
        stack.drain(&stack.queue_url).await.is_empty(),
        "no new rows"
    );
    // a real change under the new name is found again
    let changed = stack.path("renamed-changed.csv");
    let target = exp.new[0].clone();
    let mut rdr = csv::Reader::from_path(&renamed).unwrap();
    let hdr = rdr.headers().unwrap().clone();
    let i = hdr.iter().position(|h| h == "resulted_on").unwrap();
    let k = hdr.iter().position(|h| h == "record_id").unwrap();
    let mut w = csv::Writer::from_path(&changed).unwrap();
    w.write_record(&hdr).unwrap();
    for rec in rdr.records() {
        let mut row: Vec<String> = rec.unwrap().iter().map(str::to_string).collect();
        if row[k] == target {
            row[i] = "2030-01-01".into();
        }
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
    let r = invoke(
        &rie,
        &stack
            .upload("incoming/lab_results/export-0004.csv", &changed)
            .await,
    )
    .await;
    assert_eq!(r["status"], "applied", "{r}");
    assert_eq!(r["counts"]["changed"], 1);
    let (keys, _) = keys_of(&stack.drain(&stack.queue_url).await);
    assert_eq!(keys, BTreeSet::from([target]));
}

/// An older file arriving after a newer one changes nothing: by the S3 sequencer for the
/// same key, by last-modified for another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_file_after_newer_changes_nothing() {
    let (stack, rie) = setup("stale", &feeds("")).await;
    let base = baseline(&stack, &rie, "500").await;
    let older = stack.path("older.csv");
    gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "3",
            "--changed",
            "2",
            "--removed",
            "0",
            "--seed",
            "21",
        ],
        &older,
    );
    let newer = stack.path("newer.csv");
    gen(
        &[
            "next",
            "--prev",
            older.to_str().unwrap(),
            "--new",
            "4",
            "--changed",
            "1",
            "--removed",
            "0",
            "--seed",
            "22",
        ],
        &newer,
    );
    // same key, uploaded twice; the events arrive newest first
    let key = "incoming/lab_results/latest.csv";
    let ev_old = stack.upload(key, &older).await;
    let ev_new = stack.upload(key, &newer).await;
    let r = invoke(&rie, &ev_new).await;
    assert_eq!(r["status"], "applied", "{r}");
    let sent_new = stack.drain(&stack.queue_url).await.len();
    assert_eq!(sent_new as u64, r["counts"]["sent"].as_u64().unwrap());
    let state = stack.get(STATE).await.unwrap();
    let r = invoke(&rie, &ev_old).await;
    assert_eq!(r["status"], "stale", "{r}");
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    assert_eq!(stack.get(STATE).await.unwrap(), state);

    // another key whose object is older than the state's source (S3 times are in seconds)
    let ev_a = stack
        .upload("incoming/lab_results/a-older.csv", &older)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ev_b = stack
        .upload("incoming/lab_results/b-newer.csv", &newer)
        .await;
    let r = invoke(&rie, &ev_b).await;
    assert_eq!(r["status"], "applied", "{r}");
    let state = stack.get(STATE).await.unwrap();
    let r = invoke(&rie, &ev_a).await;
    assert_eq!(r["status"], "stale", "{r}");
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    assert_eq!(stack.get(STATE).await.unwrap(), state);
}

/// `max_object_bytes`: a file of exactly the limit is processed, one byte more is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_at_the_size_limit_and_just_over() {
    let dir = std::env::temp_dir().join(format!("casefeed-e2e-sizes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let at = dir.join("at.csv");
    gen(&["baseline", "--rows", "300", "--seed", "3"], &at);
    let limit = std::fs::metadata(&at).unwrap().len();
    let (stack, rie) = setup("size", &feeds(&format!("max_object_bytes = {limit}"))).await;
    let r = invoke(
        &rie,
        &stack.upload("incoming/lab_results/at.csv", &at).await,
    )
    .await;
    assert_eq!(r["status"], "baseline", "{r}");
    let state = stack.get(STATE).await.unwrap();
    let over = dir.join("over.csv");
    let mut bytes = std::fs::read(&at).unwrap();
    bytes.push(b'\n');
    std::fs::write(&over, &bytes).unwrap();
    let r = invoke(
        &rie,
        &stack.upload("incoming/lab_results/over.csv", &over).await,
    )
    .await;
    assert_eq!(r["status"], "rejected", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(&(limit + 1).to_string()) && reason.contains("max_object_bytes"),
        "{reason}"
    );
    assert_eq!(stack.get(STATE).await.unwrap(), state);
    assert!(stack.drain(&stack.queue_url).await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
