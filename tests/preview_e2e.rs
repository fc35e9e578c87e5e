//! `casefeed diff` and `casefeed feeds check` as an operator runs them: the release binary on
//! local files the project's generator wrote, no AWS. What the dry run says would be sent,
//! removed, held or rejected must be exactly what the generator put in the files; the exit
//! status tells a script whether the file would go through; no row value is printed.

use casefeed_e2e::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = "events/feeds.toml";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output does not parse: {e}\n{}", self.stdout))
    }
}

fn casefeed(args: &[&str]) -> Out {
    let out = Command::new(release_bin("casefeed"))
        .args(args)
        .current_dir(workspace())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run casefeed");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("casefeed-e2e-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `base` followed by `more`.
fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn keys_of(v: &Value, change: &str) -> BTreeSet<String> {
    v["changes"]["sent"]
        .as_array()
        .expect("changes.sent")
        .iter()
        .filter(|m| m["change"] == change)
        .map(|m| m["record_key"].as_str().expect("record_key").to_string())
        .collect()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// No personal value of the files (names, phones, streets, dates of birth) was printed.
fn assert_no_row_values(files: &[&Path], printed: &str) {
    let values: BTreeSet<String> = files.iter().flat_map(|f| personal_values(f, 6)).collect();
    assert!(!values.is_empty(), "the files hold row values to look for");
    for v in &values {
        assert!(!printed.contains(v.as_str()), "row value {v:?} printed");
    }
}

#[test]
fn diff_names_exactly_the_rows_a_next_export_would_send_and_the_lines_it_would_reject() {
    let dir = scratch("diff-send");
    let prev = dir.join("prev.csv");
    let next = dir.join("next.csv");
    gen(&["baseline", "--rows", "2000", "--seed", "41"], &prev);
    let exp = gen(
        &[
            "next",
            "--prev",
            &s(&prev),
            "--new",
            "30",
            "--changed",
            "20",
            "--removed",
            "10",
            "--malformed",
            "4",
            "--seed",
            "42",
        ],
        &next,
    );
    let (p, n) = (s(&prev), s(&next));
    let feed = ["diff", "--feed", "lab_results", "--config", CONFIG];
    let args = with(&feed, &[&p, &n, "--json"]);
    let out = casefeed(&args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let v = out.json();
    assert_eq!(v["verdict"], "send", "{v}");
    assert_eq!(v["messages"], 50);
    assert_eq!(v["previous"]["status"], "baseline");
    assert_eq!(v["next"]["status"], "applied");
    assert_eq!(keys_of(&v, "new"), set(&exp.new));
    assert_eq!(keys_of(&v, "changed"), set(&exp.changed));
    let removed: BTreeSet<String> = v["changes"]["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|k| k.as_str().expect("a key").to_string())
        .collect();
    assert_eq!(removed, set(&exp.removed), "removed records are listed");
    assert!(
        keys_of(&v, "removed").is_empty(),
        "and not sent by this feed"
    );
    let lines: Vec<u64> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, exp.malformed_lines, "{v}");
    assert!(v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .all(|r| r["reason"].as_str().is_some_and(|x| !x.is_empty())));

    // the readable answer: the headline, the counts, the keys and the rejected lines
    let args = with(&feed, &[&p, &n, "--limit", "100"]);
    let text = casefeed(&args);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .starts_with("feed lab_results: would send 50 message(s) (new 30, changed 20)"),
        "{}",
        text.stdout
    );
    for k in exp.new.iter().chain(&exp.changed).chain(&exp.removed) {
        assert!(text.stdout.contains(k.as_str()), "{k}: {}", text.stdout);
    }
    for l in &exp.malformed_lines {
        assert!(
            text.stdout.contains(&format!("line {l}: ")),
            "{l}: {}",
            text.stdout
        );
    }
    assert!(text.stdout.contains("removed (listed, not sent) (10)"));
    // nothing printed a metrics line or a row value
    assert!(!text.stdout.contains("_aws"), "{}", text.stdout);
    assert_no_row_values(
        &[&prev, &next],
        &format!("{}{}{}{}", out.stdout, out.stderr, text.stdout, text.stderr),
    );

    // the same file again changes nothing
    let args = with(&feed, &[&n, &n, "--json"]);
    let same = casefeed(&args).json();
    assert_eq!(same["verdict"], "nothing_to_send", "{same}");
    assert_eq!(same["next"]["counts"]["sent"], 0);

    // one file only: the feed's first file, a baseline by its configuration
    let args = with(&feed, &[&p, "--json"]);
    let first = casefeed(&args);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first = first.json();
    assert_eq!(first["verdict"], "nothing_to_send");
    assert_eq!(first["status"], "baseline");
}

#[test]
fn diff_says_which_guard_would_hold_a_file_and_what_approving_it_would_send() {
    let dir = scratch("diff-held");
    let prev = dir.join("prev.csv");
    let next = dir.join("next.csv");
    gen(&["baseline", "--rows", "1000", "--seed", "43"], &prev);
    // 15% of the records gone: over the shrink guard's 10%
    let exp = gen(
        &[
            "next",
            "--prev",
            &s(&prev),
            "--new",
            "3",
            "--changed",
            "4",
            "--removed",
            "150",
            "--seed",
            "44",
        ],
        &next,
    );
    let (p, n) = (s(&prev), s(&next));
    let base = ["diff", "--feed", "lab_results", "--config", CONFIG];
    let args = with(&base, &[&p, &n, "--json"]);
    let out = casefeed(&args);
    assert_eq!(
        out.code, 2,
        "a held file exits 2: {}{}",
        out.stdout, out.stderr
    );
    let v = out.json();
    assert_eq!(v["verdict"], "held", "{v}");
    assert_eq!(v["guards"], serde_json::json!(["shrink"]), "{v}");
    assert!(keys_of(&v, "new").is_empty() && keys_of(&v, "changed").is_empty());
    let approved = &v["if_approved"];
    assert_eq!(keys_of(approved, "new"), set(&exp.new), "{approved}");
    assert_eq!(keys_of(approved, "changed"), set(&exp.changed));
    assert_eq!(
        approved["changes"]["removed"].as_array().map(Vec::len),
        Some(150)
    );
    let args = with(&base, &[&p, &n]);
    let text = casefeed(&args);
    assert_eq!(text.code, 2);
    assert!(
        text.stdout.contains("would be HELD by the shrink guard"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("shrink  TRIPPED"), "{}", text.stdout);
    assert!(
        text.stdout
            .contains("if approved (`casefeed approve`), it would send 7 message(s)"),
        "{}",
        text.stdout
    );

    // an unknown feed, a missing file: exit 1 with a clear message
    let args = ["diff", "--feed", "no_such_feed", "--config", CONFIG, &n];
    let unknown = casefeed(&args);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .contains("no feed `no_such_feed` is configured (the configuration has: lab_results, case_reports)"),
        "{}",
        unknown.stderr
    );
    let missing = casefeed(&[
        "diff",
        "--feed",
        "lab_results",
        "--config",
        CONFIG,
        "/nonexistent/next.csv",
    ]);
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("cannot read the next export /nonexistent/next.csv"),
        "{}",
        missing.stderr
    );
}

#[test]
fn feeds_check_prints_each_feed_and_refuses_a_broken_configuration() {
    let ok = casefeed(&["feeds", "check", CONFIG, "--json"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let v = ok.json();
    assert_eq!(v["valid"], true);
    let names: Vec<&str> = v["feeds"]
        .as_array()
        .expect("feeds")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["lab_results", "case_reports"]);
    assert_eq!(
        v["feeds"][1]["key_columns"],
        serde_json::json!(["jurisdiction", "case_id"])
    );
    assert_eq!(v["feeds"][0]["incoming_prefix"], "incoming/lab_results/");
    let text = casefeed(&["feeds", "check", CONFIG]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.contains("valid, 2 feed(s)") && text.stdout.contains("jurisdiction, case_id"),
        "{}",
        text.stdout
    );

    let dir = scratch("feeds-check");
    let bad = dir.join("feeds.toml");
    // a feed without key columns, and a share above 1
    std::fs::write(
        &bad,
        "[[feed]]\nname = \"labs\"\nkey_columns = []\nmax_change_share = 1.5\n",
    )
    .expect("write");
    let refused = casefeed(&["feeds", "check", &s(&bad)]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains(&s(&bad)) && refused.stderr.contains("labs"),
        "the error names the file and the feed: {}",
        refused.stderr
    );
    std::fs::write(&bad, "[[feed]\nname = ").expect("write");
    let unparsable = casefeed(&["feeds", "check", &s(&bad)]);
    assert_eq!(unparsable.code, 1);
    assert!(
        unparsable.stderr.starts_with("Error: "),
        "{}",
        unparsable.stderr
    );
}
