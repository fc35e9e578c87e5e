//! The operator's commands end to end, run as a user runs them: the release `casefeed`
//! binary as a subprocess against the local stack (moto, the release splitter and consumers
//! under the Runtime Interface Emulator, the stand-in API with its faults).
//!
//! * the DLQ: filled by permanent rejections, listed and grouped, shown, replayed (a dry run
//!   changes nothing; the replay applies each row once; a second replay is a no-op), purged
//!   (not without `--yes`) — every replay and purge leaves an audit record naming the
//!   message ids, and `casefeed audit` lists them newest first;
//! * the splitter-failures queue: a failed invocation's record is listed and retried (the
//!   splitter re-invoked with the original S3 event through Lambda's Invoke API, which the
//!   emulator serves), and the file it held is approved with an audit record that names the
//!   held objects' versions.
//!
//! Every `--json` output must parse, and no output may hold a row value.

use casefeed_e2e::*;
use casefeed_tools::api::{ApiConfig, ApiServer, Faults};
use casefeed_tools::esm::{self, EsmConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "ops-e2e-token";
const FEED: &str = "lab_results";
/// A row value planted in a hand-made dead letter: it must never be printed.
const MARKER: &str = "Zebulon Quixote-Marker";

/// What one CLI run gave.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout as one JSON document (the command must have succeeded).
    fn json(&self) -> Value {
        assert!(self.ok, "{}{}", self.stdout, self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output does not parse: {e}\n{}", self.stdout))
    }
}

/// The local stack, the release functions and the stand-in API.
struct Ops {
    stack: Stack,
    splitter: Rie,
    consumers: Vec<casefeed_tools::local::Rie>,
    api: ApiServer,
    ledger: PathBuf,
    env: Vec<(String, String)>,
    /// Row values of the exports (names, phones, streets, dates of birth).
    secrets: BTreeSet<String>,
    /// Everything the CLI printed.
    printed: std::sync::Mutex<String>,
}

async fn ops(test: &str, feeds: &str, consumers: usize) -> Ops {
    ops_with(test, feeds, consumers, &[]).await
}

/// [`ops`], with more settings for the consumers.
async fn ops_with(test: &str, feeds: &str, consumers: usize, consumer_env: &[(&str, &str)]) -> Ops {
    let stack = Stack::with_receives(test, feeds, 10).await;
    let ledger = stack.path("api-ledger.jsonl");
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.ledger = Some(ledger.clone());
    let api = ApiServer::start(cfg).await.expect("stand-in API");
    let splitter = Rie::start(
        &release_bin("splitter"),
        &stack.lambda_env(),
        &format!("splitter-{test}"),
    );
    let consumers = (0..consumers)
        .map(|i| {
            casefeed_tools::local::Rie::start(
                &release_bin("consumer"),
                &stack
                    .inner
                    .consumer_env(&api.url(), TOKEN)
                    .into_iter()
                    .chain(
                        consumer_env
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string())),
                    )
                    .collect::<Vec<_>>(),
                &format!("consumer-{test}-{i}"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let failures_url = stack
        .inner
        .sqs
        .create_queue()
        .queue_name("casefeed-splitter-failures")
        .send()
        .await
        .expect("CreateQueue splitter-failures")
        .queue_url
        .expect("a queue URL");
    // the splitter's emulator serves Lambda's Invoke API for the function named `function`
    let lambda_endpoint = splitter
        .0
        .url
        .split("/2015-03-31")
        .next()
        .expect("an emulator URL")
        .to_string();
    let mut env = stack.lambda_env();
    env.extend(
        [
            ("DLQ_URL", stack.dlq_url.as_str()),
            ("DATA_BUCKET", BUCKET),
            ("SPLITTER_FAILURES_QUEUE_URL", failures_url.as_str()),
            ("AWS_ENDPOINT_URL_LAMBDA", lambda_endpoint.as_str()),
            ("SPLITTER_FUNCTION_NAME", "function"),
            ("CASEFEED_NO_METRICS", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Ops {
        stack,
        splitter,
        consumers,
        api,
        ledger,
        env,
        secrets: BTreeSet::new(),
        printed: Default::default(),
    }
}

impl Ops {
    fn failures_url(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "SPLITTER_FAILURES_QUEUE_URL")
            .map(|(_, v)| v.clone())
            .expect("the failures queue")
    }

    /// Run `casefeed <args>`.
    fn cli(&self, args: &[&str]) -> Run {
        let out = Command::new(release_bin("casefeed"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
            .output()
            .expect("run casefeed");
        let run = Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if let Ok(mut p) = self.printed.lock() {
            p.push_str(&run.stdout);
            p.push_str(&run.stderr);
        }
        run
    }

    /// Upload the scratch file `name` under the feed's incoming prefix and run the splitter
    /// on its event: the run's result.
    async fn split(&self, name: &str) -> Value {
        let key = format!("incoming/lab_results/{name}");
        let ev = self.stack.upload(&key, &self.stack.path(name)).await;
        self.splitter.invoke(&ev).await["results"][0].clone()
    }

    /// Run `casefeed <args>` in a real terminal: a detached tmux session on a server of its
    /// own, everything written to the pane logged raw by `pipe-pane` (a progress bar is
    /// drawn, then cleared: the log keeps what was drawn). The raw log and the exit status.
    fn cli_in_tmux(&self, args: &[&str]) -> (String, String) {
        let dir = self.stack.path("tmux");
        std::fs::create_dir_all(&dir).expect("tmux dir");
        let (go, log, script) = (dir.join("go"), dir.join("pane.log"), dir.join("run.sh"));
        let q = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
        let mut s = format!(
            "while [ ! -e {} ]; do sleep 0.05; done\n",
            q(&go.to_string_lossy())
        );
        for (k, v) in &self.env {
            s.push_str(&format!("export {k}={}\n", q(v)));
        }
        let argv: Vec<String> = args.iter().map(|a| q(a)).collect();
        s.push_str(&format!(
            "{} {}\necho \"casefeed-exit=$?\"\nsleep 120\n",
            q(&release_bin("casefeed").to_string_lossy()),
            argv.join(" ")
        ));
        std::fs::write(&script, s).expect("tmux script");
        let socket = format!("casefeed-e2e-{}", std::process::id());
        let tmux = |a: &[&str]| {
            let out = Command::new("tmux")
                .args(["-L", &socket, "-f", "/dev/null"])
                .args(a)
                .output()
                .expect("tmux is installed (make test installs it)");
            assert!(
                out.status.success(),
                "tmux {a:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let script_s = script.to_string_lossy().into_owned();
        tmux(&[
            "new-session",
            "-d",
            "-s",
            "cli",
            "-x",
            "160",
            "-y",
            "40",
            "sh",
            &script_s,
        ]);
        let pipe = format!("cat >> {}", q(&log.to_string_lossy()));
        tmux(&["pipe-pane", "-t", "cli", "-o", &pipe]);
        std::fs::write(&go, "").expect("go");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut raw = String::new();
        while std::time::Instant::now() < deadline {
            raw = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            if raw.contains("casefeed-exit=") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tmux(&["kill-server"]);
        let status = raw
            .split("casefeed-exit=")
            .nth(1)
            .map(|r| r.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_else(|| panic!("the command did not finish in tmux within 60 s: {raw}"));
        if let Ok(mut p) = self.printed.lock() {
            p.push_str(&raw);
        }
        (raw, status)
    }

    /// Baseline `rows`, then a next export with `new` and `changed` rows; the next file's
    /// expectation and its S3 event (the next file is invoked only when `invoke_next`).
    async fn exports(
        &mut self,
        rows: &str,
        new: &str,
        changed: &str,
        invoke_next: bool,
    ) -> (Expected, Value) {
        let base = self.stack.path("base.csv");
        gen(&["baseline", "--rows", rows, "--seed", "21"], &base);
        let ev = self
            .stack
            .upload("incoming/lab_results/export-0001.csv", &base)
            .await;
        let r = self.splitter.invoke(&ev).await;
        assert_eq!(r["results"][0]["status"], "baseline", "{r}");
        let next = self.stack.path("next.csv");
        let base_s = base.to_string_lossy().into_owned();
        let exp = gen(
            &[
                "next",
                "--prev",
                &base_s,
                "--new",
                new,
                "--changed",
                changed,
                "--removed",
                "2",
                "--seed",
                "22",
            ],
            &next,
        );
        for file in [&base, &next] {
            self.secrets.extend(personal_values(file, 6));
        }
        let ev = self
            .stack
            .upload("incoming/lab_results/export-0002.csv", &next)
            .await;
        if invoke_next {
            let r = self.splitter.invoke(&ev).await;
            assert_eq!(r["results"][0]["status"], "applied", "{r}");
        }
        (exp, ev)
    }

    async fn drain(&self) {
        let cfg = EsmConfig {
            queue_url: self.stack.queue_url.clone(),
            batch_size: 10,
            wait_secs: 1,
            max_duration: Duration::from_secs(120),
        };
        let st = esm::drain(&self.stack.inner.sqs, &self.consumers, &cfg)
            .await
            .expect("event source emulation");
        assert!(st.drained, "{st:?}");
    }

    /// Applied effects at the API, from its ledger file: record key → count.
    fn applied(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).expect("ledger line");
            let k = v["record_key"].as_str().expect("record_key").to_string();
            *out.entry(k).or_default() += 1;
        }
        out
    }

    async fn depth(&self, url: &str) -> u64 {
        esm::depth(&self.stack.inner.sqs, url).await.expect("depth")
    }

    /// The audit records in the bucket, by key.
    async fn audit_records(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for k in self.stack.list("audit/").await {
            let b = self.stack.get(&k).await.expect("the audit object");
            let v: Value = serde_json::from_slice(&b).expect("an audit record parses");
            out.insert(k, v);
        }
        out
    }

    /// No row value in anything the CLI printed or the audit records hold.
    async fn assert_no_row_values(&self) {
        let printed = self.printed.lock().map(|p| p.clone()).unwrap_or_default();
        let audit: String = self
            .audit_records()
            .await
            .values()
            .map(Value::to_string)
            .collect();
        assert!(!self.secrets.is_empty());
        for text in [&printed, &audit] {
            assert!(!text.contains(MARKER), "a planted row value was printed");
            assert!(
                !text.contains("\"fields\""),
                "an envelope's fields were printed"
            );
            for s in &self.secrets {
                assert!(!text.contains(s.as_str()), "row value {s:?} printed");
            }
        }
    }
}

fn keys(exp: &Expected) -> BTreeSet<String> {
    exp.new.iter().chain(exp.changed.iter()).cloned().collect()
}

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["message_id"].as_str().expect("message_id").to_string())
        .collect()
}

/// Dead letters from permanent rejections: listed by class, status, feed and run; a dry run
/// changes nothing; the replay applies each row once after the cause is fixed and a second
/// one finds nothing; purge needs --yes; every replay and purge is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_grouped_replayed_once_purged_and_audited() {
    let mut o = ops("ops-dlq", FEEDS, 2).await;
    let (exp, _) = o.exports("400", "8", "8", true).await;
    let want = keys(&exp);
    let rejected: BTreeSet<String> = want.iter().take(5).cloned().collect();
    o.api.set_faults(Faults {
        reject_record_keys: rejected.iter().cloned().collect(),
        ..Faults::default()
    });
    o.drain().await;
    assert_eq!(o.applied().len(), want.len() - 5);
    let run = o.stack.reports(FEED).await.last().expect("a report")["run"]
        .as_str()
        .expect("a run id")
        .to_string();
    // a message SQS moved by redrive: no error_class; its row value must never show
    let planted = json!({
        "v": 2, "feed": FEED, "run": "manual-run",
        "source": {"bucket": BUCKET, "key": "incoming/lab_results/x.csv", "etag": "e"},
        "change": "new", "record_key": "PLANTED-1", "version": 9,
        "idempotency_key": "planted-key", "fields": {"first_name": MARKER}
    });
    let a = |v: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("an attribute")
    };
    let planted_id = o
        .stack
        .inner
        .sqs
        .send_message()
        .queue_url(&o.stack.dlq_url)
        .message_body(planted.to_string())
        .message_attributes("feed", a(FEED))
        .message_attributes("change", a("new"))
        .message_attributes("idempotency_key", a("planted-key"))
        .send()
        .await
        .expect("SendMessage")
        .message_id
        .expect("a message id");

    // list: grouped, counted, nothing consumed
    let list = o.cli(&["dlq", "list", "--json"]).json();
    assert_eq!(list["total"], 6, "{list}");
    assert_eq!(list["by_class"], json!({"permanent": 5, "redrive": 1}));
    let groups = list["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{list}");
    assert_eq!(
        groups[0],
        json!({"error_class": "permanent", "http_status": "422", "feed": FEED, "run": run, "count": 5})
    );
    assert_eq!(
        groups[1],
        json!({"error_class": "redrive", "http_status": null, "feed": FEED, "run": "manual-run", "count": 1})
    );
    let permanent: BTreeSet<String> = list["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["attributes"]["error_class"] == "permanent")
        .map(|m| m["message_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(permanent.len(), 5);
    // status: the feed's last run, the queues' depths, the breaker; runs: newest first
    let table = o.stack.inner.ledger_table.clone();
    let st = o.cli(&["status", "--table", &table, "--json"]).json();
    let feed = st["feeds"]
        .as_array()
        .expect("feeds")
        .iter()
        .find(|f| f["feed"] == FEED)
        .expect("the feed's status")
        .clone();
    assert_eq!(feed["last_run"]["report"]["run"], run.as_str(), "{st}");
    assert_eq!(feed["last_run"]["report"]["status"], "applied", "{st}");
    assert_eq!(feed["last_run"]["report"]["counts"]["sent"], 16, "{st}");
    assert_eq!(
        (feed["runs"].as_u64(), feed["held"].as_u64()),
        (Some(2), Some(0))
    );
    let dlq = &st["dead_letter_queue"];
    assert_eq!(
        dlq["visible"].as_u64().unwrap_or(0) + dlq["in_flight"].as_u64().unwrap_or(0),
        6,
        "{st}"
    );
    assert_eq!(st["work_queue"]["visible"], 0, "{st}");
    assert_ne!(st["breaker"]["state"], "open", "{st}");
    let text = o.cli(&["status", "--table", &table]);
    assert!(text.ok && text.stdout.contains(&run), "{}", text.stdout);
    let runs = o.cli(&["runs", "--feed", FEED, "--json"]).json();
    assert_eq!(runs["count"], 2, "{runs}");
    assert_eq!(runs["runs"][0]["report"]["run"], run.as_str());
    assert_eq!(runs["runs"][1]["report"]["status"], "baseline");
    let one = o.cli(&["runs", "--limit", "1"]);
    assert!(
        one.ok && one.stdout.lines().count() == 1 && one.stdout.contains(&run),
        "{}",
        one.stdout
    );
    let text = o.cli(&["dlq", "list", "--messages"]);
    assert!(
        text.ok && text.stdout.contains("total 6 message(s)"),
        "{}",
        text.stdout
    );
    let inspect = o.cli(&["dlq", "inspect", "--max", "100"]);
    assert!(
        inspect.ok && inspect.stdout.contains("permanent"),
        "the old name still works"
    );
    assert_eq!(
        o.depth(&o.stack.dlq_url).await,
        6,
        "listing consumed nothing"
    );

    // show: attributes and envelope metadata, no fields
    let one = permanent.iter().next().expect("a message").clone();
    let shown = o.cli(&["dlq", "show", &one, "--json"]).json();
    assert_eq!(shown["message_id"], one.as_str());
    assert_eq!(shown["attributes"]["http_status"], "422");
    assert!(rejected.contains(
        shown["envelope"]["record_key"]
            .as_str()
            .expect("record_key")
    ));
    assert_eq!(shown["envelope"]["run"], run.as_str());
    assert!(shown.get("fields").is_none() && shown["envelope"].get("fields").is_none());
    let text = o.cli(&["dlq", "show", &planted_id]);
    assert!(
        text.ok && text.stdout.contains("redrive"),
        "{}",
        text.stdout
    );
    let missing = o.cli(&["dlq", "show", "no-such-message"]);
    assert!(!missing.ok && missing.stderr.contains("no message no-such-message"));

    // a dry run changes nothing and writes no audit record
    let dry = o
        .cli(&[
            "dlq",
            "replay",
            "--class",
            "permanent",
            "--dry-run",
            "--reason",
            "check",
            "--json",
        ])
        .json();
    assert_eq!(
        (dry["dry_run"].clone(), dry["matched"].clone()),
        (json!(true), json!(5))
    );
    assert_eq!(ids(&dry["messages"]), permanent);
    assert!(dry.get("audit_key").is_none());
    assert_eq!(
        o.depth(&o.stack.dlq_url).await,
        6,
        "a dry run moves nothing"
    );
    assert_eq!(o.depth(&o.stack.queue_url).await, 0);
    assert!(
        o.stack.list("audit/").await.is_empty(),
        "a dry run is not audited"
    );
    let no_reason = o.cli(&["dlq", "replay", "--class", "permanent", "--reason", " "]);
    assert!(!no_reason.ok && no_reason.stderr.contains("--reason"));

    // the cause is fixed: replay sends each once, then deletes it from the DLQ
    o.api.set_faults(Faults::default());
    let replay = o
        .cli(&[
            "dlq",
            "replay",
            "--class",
            "permanent",
            "--feed",
            FEED,
            "--run",
            &run,
            "--reason",
            "API mapping fixed",
            "--json",
        ])
        .json();
    assert_eq!(
        (replay["done"].clone(), replay["failed"].clone()),
        (json!(5), json!(0))
    );
    assert_eq!(ids(&replay["messages"]), permanent);
    let replay_key = replay["audit_key"]
        .as_str()
        .expect("an audit key")
        .to_string();
    assert_eq!(
        o.depth(&o.stack.dlq_url).await,
        1,
        "only the redrive message is left"
    );
    o.drain().await;
    let applied = o.applied();
    assert_eq!(applied.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(
        applied.values().all(|&n| n == 1),
        "each row applied once: {applied:?}"
    );

    // a second replay finds nothing to do
    let again = o
        .cli(&[
            "dlq",
            "replay",
            "--class",
            "permanent",
            "--reason",
            "again",
            "--json",
        ])
        .json();
    assert_eq!(
        (again["matched"].clone(), again["done"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(o.depth(&o.stack.queue_url).await, 0);
    assert_eq!(o.applied(), applied);

    // purge: refused without --yes, then only the matching class
    let refused = o.cli(&["dlq", "purge", "--class", "redrive", "--reason", "junk"]);
    assert!(
        !refused.ok && refused.stderr.contains("--yes"),
        "{}",
        refused.stderr
    );
    assert_eq!(o.depth(&o.stack.dlq_url).await, 1);
    let purge = o
        .cli(&[
            "dlq",
            "purge",
            "--class",
            "redrive",
            "--reason",
            "hand-made test message",
            "--yes",
            "--json",
        ])
        .json();
    assert_eq!(purge["done"], 1);
    assert_eq!(
        ids(&purge["messages"]),
        BTreeSet::from([planted_id.clone()])
    );
    assert_eq!(o.depth(&o.stack.dlq_url).await, 0);

    // the audit records: one per replay and purge, naming the message ids
    let recs = o.audit_records().await;
    assert_eq!(recs.len(), 3, "{recs:?}");
    let replayed = &recs[&replay_key];
    assert_eq!(replayed["command"], "dlq replay");
    assert_eq!(replayed["reason"], "API mapping fixed");
    assert_eq!(replayed["result"]["status"], "ok");
    assert_eq!(replayed["counts"]["done"], 5);
    assert_eq!(replayed["filters"]["class"], "permanent");
    assert_eq!(replayed["who"]["source"], "sts:GetCallerIdentity");
    assert!(replayed["who"]["identity"]
        .as_str()
        .is_some_and(|s| s.starts_with("arn:")));
    assert_eq!(ids(&replayed["messages"]), permanent);
    assert!(replayed["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .all(|m| m["idempotency_key"].is_string() && m["new_message_id"].is_string()));
    assert!(replay_key.starts_with("audit/") && replay_key.ends_with(".json"));
    let listed = o.cli(&["audit", "--json"]).json();
    assert_eq!(listed["count"], 3);
    let order: Vec<&str> = listed["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["command"].as_str().expect("command"))
        .collect();
    assert_eq!(
        order,
        ["dlq purge", "dlq replay", "dlq replay"],
        "newest first"
    );
    assert_eq!(
        ids(&listed["records"][0]["messages"]),
        BTreeSet::from([planted_id])
    );
    assert_eq!(
        listed["records"][1]["counts"]["matched"], 0,
        "the no-op replay"
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let since = o.cli(&["audit", "--since", &today, "--json"]).json();
    assert_eq!(since["count"], 3);
    let future = o.cli(&["audit", "--since", "2999-01-01", "--json"]).json();
    assert_eq!(future["count"], 0);
    let text = o.cli(&["audit"]);
    assert!(
        text.ok && text.stdout.contains("3 audit record(s)"),
        "{}",
        text.stdout
    );
    // not a terminal: no progress bar on stderr
    assert!(
        !text.stderr.contains("reading audit records"),
        "a progress bar was drawn into a pipe: {}",
        text.stderr
    );
    // a real terminal (tmux): the bar is drawn on the way, then the listing
    let (raw, status) = o.cli_in_tmux(&["audit"]);
    assert_eq!(status, "0", "{raw}");
    assert!(
        raw.contains("reading audit records [") && raw.contains("/3 ("),
        "no progress bar in the terminal: {raw:?}"
    );
    assert!(raw.contains("3 audit record(s)"), "{raw:?}");
    o.assert_no_row_values().await;
}

/// A failed splitter invocation (Lambda's on-failure record with the original S3 event) is
/// listed, a dry run changes nothing, the retry re-invokes the splitter with that event; the
/// file it holds is approved, audited with the held objects' keys and version ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_splitter_invocation_is_retried_and_its_held_file_approved_with_audit() {
    let guarded = FEEDS.replace(
        "[defaults]\n",
        "[defaults]\nmax_changes = 5\nguard_floor = 50\n",
    );
    let mut o = ops("ops-failures", &guarded, 0).await;
    let (exp, ev) = o.exports("400", "6", "6", false).await;
    let failures = o.failures_url();
    let record = json!({
        "version": "1.0", "timestamp": "2026-12-01T10:05:00.000Z",
        "requestContext": {"requestId": "req-1", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:splitter:$LATEST",
                           "condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": ev,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorType": "SplitError", "errorMessage": "S3 GetObject: timed out"}
    });
    let sqs = &o.stack.inner.sqs;
    let record_id = sqs
        .send_message()
        .queue_url(&failures)
        .message_body(record.to_string())
        .send()
        .await
        .expect("SendMessage")
        .message_id
        .expect("an id");
    sqs.send_message()
        .queue_url(&failures)
        .message_body("not an invocation record")
        .send()
        .await
        .expect("SendMessage");

    let list = o.cli(&["failures", "list", "--json"]).json();
    assert_eq!(list["total"], 2, "{list}");
    let rec = list["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["message_id"] == record_id.as_str())
        .expect("the record is listed")
        .clone();
    assert_eq!(rec["kind"], "invocation_record");
    assert_eq!(rec["condition"], "RetriesExhausted");
    assert_eq!(
        rec["objects"][0]["key"],
        "incoming/lab_results/export-0002.csv"
    );
    let text = o.cli(&["failures", "list"]);
    assert!(
        text.ok && text.stdout.contains("RetriesExhausted"),
        "{}",
        text.stdout
    );

    let dry = o
        .cli(&[
            "failures",
            "retry",
            "--dry-run",
            "--reason",
            "check",
            "--json",
        ])
        .json();
    assert_eq!(
        (dry["matched"].clone(), dry["skipped"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(o.depth(&failures).await, 2, "a dry run changes nothing");
    assert!(o.stack.reports(FEED).await.len() == 1, "nothing re-invoked");
    assert!(o.stack.list("audit/").await.is_empty());

    let retry = o
        .cli(&["failures", "retry", "--reason", "S3 is back", "--json"])
        .json();
    assert_eq!(
        (
            retry["done"].clone(),
            retry["failed"].clone(),
            retry["skipped"].clone()
        ),
        (json!(1), json!(0), json!(1)),
        "{retry}"
    );
    assert_eq!(
        o.depth(&failures).await,
        1,
        "only what cannot be retried is left"
    );
    let reports = o.stack.reports(FEED).await;
    let held = reports.last().expect("the retried run's report");
    assert_eq!(held["status"], "held", "{held}");
    assert_eq!(
        held["source"]["key"],
        "incoming/lab_results/export-0002.csv"
    );
    let held_id = held["held"]["id"].as_str().expect("a held id").to_string();

    let approve = o
        .cli(&[
            "approve",
            "--feed",
            FEED,
            &held_id,
            "--reason",
            "a reissue, checked",
            "--json",
        ])
        .json();
    assert_eq!(approve["report"]["status"], "applied", "{approve}");
    let sent = o.stack.drain(&o.stack.queue_url).await;
    assert_eq!(sent.len(), exp.new.len() + exp.changed.len());
    let again = o.cli(&["approve", "--feed", FEED, &held_id, "--reason", "twice"]);
    assert!(
        !again.ok && again.stderr.contains("nothing is held"),
        "{}",
        again.stderr
    );

    let recs = o.audit_records().await;
    let by_command =
        |c: &str| -> Vec<&Value> { recs.values().filter(|r| r["command"] == c).collect() };
    let retried = by_command("failures retry");
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["result"]["status"], "ok");
    assert_eq!(retried[0]["messages"].as_array().map(Vec::len), Some(2));
    assert!(retried[0]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .any(|m| m["message_id"] == record_id.as_str() && m["outcome"] == "retried"));
    let approvals = by_command("approve");
    assert_eq!(
        approvals.len(),
        2,
        "the refused second approval is audited too"
    );
    let ok = approvals
        .iter()
        .find(|r| r["result"]["status"] == "ok")
        .expect("the approval");
    let h = &ok["held"];
    assert_eq!(h["manifest_key"], format!("held/{FEED}/{held_id}.json"));
    assert_eq!(h["copy_key"], format!("held/{FEED}/{held_id}.source"));
    assert!(
        h["manifest_version_id"].is_string() && h["copy_version_id"].is_string(),
        "{h}"
    );
    assert_eq!(h["source_key"], "incoming/lab_results/export-0002.csv");
    assert!(h["source_version_id"].is_string(), "{h}");
    assert_eq!(ok["counts"]["sent"], sent.len());
    assert!(approvals.iter().any(|r| r["result"]["status"] == "failed"));
    o.assert_no_row_values().await;
}

/// `reconcile` accounts for every row a run sent — applied, dead-lettered with its class —
/// lists its rejected rows by line, and fails when a message was deleted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_accounts_for_every_row_and_fails_on_a_message_deleted_by_hand() {
    let mut o = ops("ops-rec", FEEDS, 2).await;
    let (exp, _) = o.exports("300", "6", "6", true).await;
    let want = keys(&exp);
    let rejected: Vec<String> = want.iter().take(2).cloned().collect();
    o.api.set_faults(Faults {
        reject_record_keys: rejected.clone(),
        ..Faults::default()
    });
    let run = o.stack.reports(FEED).await.last().expect("a report")["run"]
        .as_str()
        .expect("a run id")
        .to_string();
    let table = o.stack.inner.ledger_table.clone();
    let reconcile = |o: &Ops| o.cli(&["reconcile", FEED, &run, "--table", &table, "--json"]);
    // before the consumers ran: every row pending, nothing unaccounted
    let before = reconcile(&o);
    assert!(before.ok, "{}{}", before.stdout, before.stderr);
    let before: Value = serde_json::from_str(&before.stdout).expect("--json parses");
    let sent = before["sent"].as_u64().expect("sent");
    assert!(sent >= 12, "{before}");
    assert_eq!(before["listed"], sent);
    assert_eq!(before["counts"]["pending"], sent, "{before}");
    // an operator deletes one work message by hand
    let sqs = &o.stack.inner.sqs;
    let got = sqs
        .receive_message()
        .queue_url(&o.stack.queue_url)
        .max_number_of_messages(1)
        .send()
        .await
        .expect("ReceiveMessage");
    let m = got.messages().first().expect("a work message").clone();
    let body: Value = serde_json::from_str(m.body().expect("a body")).expect("an envelope");
    let deleted = body["record_key"].as_str().expect("record_key").to_string();
    sqs.delete_message()
        .queue_url(&o.stack.queue_url)
        .receipt_handle(m.receipt_handle().expect("a receipt"))
        .send()
        .await
        .expect("DeleteMessage");
    o.drain().await;
    let after = reconcile(&o);
    assert!(
        !after.ok,
        "a deleted message must fail reconcile: {}",
        after.stdout
    );
    assert!(after.stderr.contains("unaccounted"), "{}", after.stderr);
    let rec: Value = serde_json::from_str(&after.stdout).expect("--json parses");
    let dead = rejected.iter().filter(|k| **k != deleted).count() as u64;
    assert_eq!(rec["counts"]["unaccounted"], 1, "{rec}");
    assert_eq!(rec["counts"]["dead_lettered"], dead, "{rec}");
    assert_eq!(rec["counts"]["applied"], sent - 1 - dead, "{rec}");
    assert_eq!(rec["by_class"]["permanent"], dead, "{rec}");
    let unaccounted: Vec<&Value> = rec["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["outcome"] == "unaccounted")
        .collect();
    assert_eq!(unaccounted.len(), 1);
    assert_eq!(unaccounted[0]["record_key"], deleted.as_str());
    // the readable form says the same, and no row value shows anywhere
    let text = o.cli(&["reconcile", FEED, &run, "--table", &table]);
    assert!(
        !text.ok && text.stdout.contains("unaccounted"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(&deleted), "{}", text.stdout);
    o.assert_no_row_values().await;
}

/// `explain` tells a superseded record's story: version 2 of X kept failing until file 3's
/// version 3 was applied, so version 2 ended superseded; the ledger acknowledged 3; the
/// state holds X; and `state show` gives the snapshot's header. A key nobody sent is
/// reported as such, and no row value is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_tells_a_superseded_records_story_and_state_show_the_snapshot() {
    let mut o = ops_with("ops-explain", FEEDS, 2, &[("BREAKER_THRESHOLD", "1000")]).await;
    let base = o.stack.path("e1.csv");
    gen(&["baseline", "--rows", "200", "--seed", "31"], &base);
    let rows = read_rows(&base);
    o.secrets.extend(personal_values(&base, 6));
    let x = rows.keys().next().expect("a record").clone();
    assert_eq!(o.split("e1.csv").await["status"], "baseline");
    // X's versions below 3 keep failing with 503
    o.api.set_faults(Faults {
        fail_records: [(x.clone(), 3u64)].into_iter().collect(),
        ..Faults::default()
    });
    let revise = |name: &str, rev: &str| {
        rewrite_csv(&base, &o.stack.path(name), |id, row| {
            if id == x {
                row.insert("notes".into(), rev.to_string());
            }
        });
    };
    revise("e2.csv", "rev2");
    let r2 = o.split("e2.csv").await;
    assert_eq!(r2["counts"]["sent"], 1, "{r2}");
    let run2 = r2["run"].as_str().expect("run").to_string();
    let cfg = |secs: u64| EsmConfig {
        queue_url: o.stack.queue_url.clone(),
        batch_size: 10,
        wait_secs: 1,
        max_duration: Duration::from_secs(secs),
    };
    let st = esm::drain(&o.stack.inner.sqs, &o.consumers, &cfg(6))
        .await
        .expect("event source emulation");
    assert!(!st.drained, "version 2 of X keeps failing: {st:?}");
    // while it fails, explain says it is pending
    let table = o.stack.inner.ledger_table.clone();
    let explain = |o: &Ops, key: &str| o.cli(&["explain", FEED, key, "--table", &table, "--json"]);
    let pending = explain(&o, &x).json();
    assert!(
        pending["verdict"]
            .as_str()
            .expect("verdict")
            .starts_with("pending"),
        "{pending}"
    );
    revise("e3.csv", "rev3");
    let r3 = o.split("e3.csv").await;
    assert_eq!(r3["counts"]["sent"], 1, "{r3}");
    let run3 = r3["run"].as_str().expect("run").to_string();
    let st = esm::drain(&o.stack.inner.sqs, &o.consumers, &cfg(120))
        .await
        .expect("event source emulation");
    assert!(st.drained, "{st:?}");
    assert_eq!(
        o.stack.ledger_fates(&x).await,
        [(2, "superseded".to_string()), (3, "applied".to_string())]
    );

    let story = explain(&o, &x).json();
    assert_eq!(story["record_key"], x.as_str());
    assert_eq!(story["state"]["present"], true, "{story}");
    assert_eq!(story["state"]["generation"], 3, "{story}");
    assert_eq!(story["state"]["run"], run3.as_str(), "{story}");
    let t = story["transitions"].as_array().expect("transitions");
    let told: Vec<(&str, &str, &str, u64)> = t
        .iter()
        .map(|t| {
            (
                t["run"].as_str().unwrap_or(""),
                t["change"].as_str().unwrap_or(""),
                t["fate"]["fate"].as_str().unwrap_or(""),
                t["fate"]["version"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        told,
        [
            (run2.as_str(), "changed", "superseded", 2),
            (run3.as_str(), "changed", "applied", 3)
        ],
        "{story}"
    );
    assert_eq!(story["ledger"]["acknowledged_version"], 3, "{story}");
    assert_eq!(
        story["ledger"]["acknowledged_run"],
        run3.as_str(),
        "{story}"
    );
    assert_eq!(story["dead_letters"], json!([]), "{story}");
    let verdict = story["verdict"].as_str().expect("verdict");
    assert!(verdict.starts_with("up to date"), "{verdict}");
    // the readable story names both runs and the superseded version
    let text = o.cli(&["explain", FEED, &x, "--table", &table]);
    assert!(text.ok, "{}{}", text.stdout, text.stderr);
    for want in [run2.as_str(), run3.as_str(), "superseded v2", "applied v3"] {
        assert!(text.stdout.contains(want), "{want}: {}", text.stdout);
    }
    // a record nobody sent
    let nobody = explain(&o, "NO-SUCH-RECORD").json();
    assert_eq!(nobody["state"]["present"], false, "{nobody}");
    assert_eq!(nobody["transitions"], json!([]));
    assert!(
        nobody["verdict"]
            .as_str()
            .expect("verdict")
            .contains("not in the feed's state"),
        "{nobody}"
    );

    // state show: the snapshot's header
    let state = o.cli(&["state", "show", FEED, "--json"]).json();
    assert_eq!(state["header"]["generation"], 3, "{state}");
    assert_eq!(state["header"]["row_count"], 200, "{state}");
    assert_eq!(state["header"]["run"], run3.as_str(), "{state}");
    assert_eq!(
        state["header"]["source"]["key"],
        "incoming/lab_results/e3.csv"
    );
    assert_eq!(state["named"], true);
    let text = o.cli(&["state", "show", FEED]);
    assert!(
        text.ok && text.stdout.contains("generation     3"),
        "{}",
        text.stdout
    );
    let none = o.cli(&["state", "show", "no_such_feed"]);
    assert!(
        !none.ok && none.stderr.contains("has no state yet"),
        "{}",
        none.stderr
    );
    o.assert_no_row_values().await;
}
