//! `casefeed demo`: the pipeline on this machine, on generated sample data.
//! Starts moto and the stand-in contact-tracing API, recreates the template's bucket,
//! queues and ledger table in moto, generates a baseline and a next export, uploads both, runs the release
//! splitter binary under the Runtime Interface Emulator for each upload, drains the work
//! queue into release consumer binaries through the local event source mapping, and prints
//! what happened. Stops everything it started.

use crate::api::{ApiConfig, ApiServer, Faults};
use crate::local::{release_bin, root, LocalError, Rie, Stack};
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Rows in the baseline export.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// New rows in the next export.
    #[arg(long, default_value_t = 120)]
    pub new: u64,
    /// Changed rows in the next export.
    #[arg(long, default_value_t = 180)]
    pub changed: u64,
    /// Share of API calls answered 503 (transient: retried with backoff).
    #[arg(long, default_value_t = 0.1)]
    pub fail_5xx: f64,
    /// Share of API calls answered 429 with Retry-After: 1.
    #[arg(long, default_value_t = 0.05)]
    pub rate_limit_429: f64,
    /// Consumer instances (the event source's maximum concurrency).
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Removed rows in the next export.
    #[arg(long, default_value_t = 40)]
    pub removed: u64,
    /// Where the generated files go.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn gen(args: &[&str], out: &Path) -> Result<(), LocalError> {
    let exe = std::env::current_exe().map_err(|e| LocalError::Setup {
        what: "locating the casefeed binary".into(),
        detail: e.to_string(),
    })?;
    let status = Command::new(exe)
        .arg("gen")
        .args(args)
        .arg("--out")
        .arg(out)
        .status()
        .map_err(|e| LocalError::Setup {
            what: "running casefeed gen".into(),
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(LocalError::Setup {
            what: "casefeed gen".into(),
            detail: format!("exited with {status}"),
        });
    }
    Ok(())
}

/// The ledger table's items of each kind (`rec#…` records, `key#…` fates), counted by Scans
/// with `Select=COUNT` (nothing of an item is read back).
async fn ledger_counts(stack: &Stack) -> Result<(u64, u64), LocalError> {
    let mut counts = [0u64; 2];
    for (count, prefix) in counts.iter_mut().zip(["rec#", "key#"]) {
        let mut start = None;
        loop {
            let out = stack
                .dynamodb
                .scan()
                .table_name(&stack.ledger_table)
                .select(Select::Count)
                .filter_expression("begins_with(pk, :p)")
                .expression_attribute_values(":p", AttributeValue::S(prefix.into()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| LocalError::Aws(format!("Scan {}: {e:?}", stack.ledger_table)))?;
            *count += u64::try_from(out.count).unwrap_or(0);
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
    }
    Ok((counts[0], counts[1]))
}

/// The operator's CLI (this very binary) against the local stack, as a user runs it: the
/// command line is printed, then its output, indented.
struct Operator {
    exe: PathBuf,
    env: Vec<(String, String)>,
    /// Whether any command failed (the demo then fails).
    failed: std::cell::Cell<bool>,
}

impl Operator {
    /// `casefeed <args>` in the stack's environment, its output captured.
    fn exec(&self, args: &[&str]) -> Result<std::process::Output, LocalError> {
        Command::new(&self.exe)
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .map_err(|e| LocalError::Setup {
                what: "running casefeed".into(),
                detail: e.to_string(),
            })
    }

    /// `casefeed <args>` as the user would type it: the command line, then its output.
    fn run(&self, args: &[&str]) -> Result<(bool, String), LocalError> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("{a:?}")
                } else {
                    a.to_string()
                }
            })
            .collect();
        println!("   $ casefeed {}", shown.join(" "));
        let out = self.exec(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        for l in stdout
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("     {l}");
        }
        if !out.status.success() {
            println!("     (exit status {})", out.status);
            self.failed.set(true);
        }
        Ok((out.status.success(), stdout))
    }

    /// Run a command that must succeed, with `--json`; its document.
    fn json(&self, args: &[&str]) -> Result<Value, LocalError> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.exec(&a)?;
        if !out.status.success() {
            return Err(LocalError::Aws(format!(
                "casefeed {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| LocalError::Aws(format!("casefeed {} --json: {e}", args.join(" "))))
    }
}

impl Operator {
    /// The newest run of the demo's feed that sent something (a repeated event's `noop`
    /// run comes later and sends nothing): the one worth reconciling.
    fn newest_sending_run(&self) -> Result<String, LocalError> {
        let runs = self.json(&["runs", "--feed", "lab_results", "--limit", "20"])?;
        runs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["report"]["counts"]["sent"].as_u64().unwrap_or(0) > 0)
            .and_then(|r| r["report"]["run"].as_str())
            .map(str::to_string)
            .ok_or_else(|| LocalError::Aws("no run of lab_results sent anything".into()))
    }
}

async fn drain_into(stack: &Stack, consumers: &[Rie]) -> Result<crate::esm::EsmStats, LocalError> {
    crate::esm::drain(
        &stack.sqs,
        consumers,
        &crate::esm::EsmConfig {
            queue_url: stack.queue_url.clone(),
            batch_size: 10,
            wait_secs: 1,
            max_duration: std::time::Duration::from_secs(300),
        },
    )
    .await
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn describe(resp: &Value) -> String {
    let Some(r) = resp.get("results").and_then(|r| r.get(0)) else {
        return format!("unexpected answer: {resp}");
    };
    let c = &r["counts"];
    format!(
        "{:<9} read {:>7}  new {:>5}  changed {:>5}  removed {:>4}  unchanged {:>7}  rejected {:>3}  sent {:>5}",
        r["status"].as_str().unwrap_or("?"),
        n(&c["read"]), n(&c["new"]), n(&c["changed"]), n(&c["removed"]), n(&c["unchanged"]), n(&c["rejected"]), n(&c["sent"])
    )
}

pub async fn run(args: DemoArgs) -> Result<(), LocalError> {
    let dir = args.dir.unwrap_or_else(|| root().join(".local/demo"));
    std::fs::create_dir_all(&dir).map_err(|e| LocalError::Setup {
        what: format!("creating {}", dir.display()),
        detail: e.to_string(),
    })?;
    let feeds_path = root().join("events/feeds.toml");
    let feeds = std::fs::read_to_string(&feeds_path).map_err(|e| LocalError::Setup {
        what: format!("reading {}", feeds_path.display()),
        detail: e.to_string(),
    })?;
    let splitter = release_bin("splitter")?;

    println!("casefeed demo — everything runs on 127.0.0.1 and stops at the end\n");
    println!(
        "1. starting moto (S3, SQS, DynamoDB) and creating the bucket, work queue, dead-letter queue and ledger table"
    );
    let stack = Stack::start("casefeed-demo", &feeds, 10).await?;
    println!("   moto at {}", stack.moto.endpoint);
    let rie = Rie::start(&splitter, &stack.splitter_env(), "demo-splitter")?;
    println!("   splitter (release binary) under the Runtime Interface Emulator\n");

    let base = dir.join("export-0001.csv");
    let next = dir.join("export-0002.csv");
    println!(
        "2. generating a baseline export ({} rows) and the next one",
        args.rows
    );
    gen(
        &["baseline", "--rows", &args.rows.to_string(), "--seed", "1"],
        &base,
    )?;
    gen(
        &[
            "next",
            "--prev",
            &base.to_string_lossy(),
            "--new",
            &args.new.to_string(),
            "--changed",
            &args.changed.to_string(),
            "--removed",
            &args.removed.to_string(),
            "--seed",
            "2",
            "--shuffle",
            "--reorder-columns",
        ],
        &next,
    )?;

    println!("\n3. uploading and running the splitter on each upload");
    let mut last_event = Value::Null;
    for (n, file) in [&base, &next].iter().enumerate() {
        let key = format!("incoming/lab_results/export-000{}.csv", n + 1);
        let ev = stack.upload(&key, file).await?;
        let t = std::time::Instant::now();
        let resp = rie.invoke(&ev).await?;
        println!(
            "   {key:<40} {}  ({} ms)",
            describe(&resp),
            t.elapsed().as_millis()
        );
        if resp.get("errorMessage").is_some() {
            return Err(LocalError::Aws(format!("the splitter failed: {resp}")));
        }
        last_event = ev;
    }
    // the very event again (same object version): a re-upload would be a new version of the
    // object in the versioned bucket, and a full run that finds nothing to send
    println!("   the same event again (S3 delivers at least once):");
    let resp = rie.invoke(&last_event).await?;
    println!(
        "   {:<40} {}",
        "incoming/lab_results/export-0002.csv",
        describe(&resp)
    );

    let depth = stack.depth(&stack.queue_url).await?;
    println!("\n4. the work queue holds {depth} message(s): one per new or changed row");

    let token = "demo-token";
    let mut api_cfg = ApiConfig::new(token);
    api_cfg.ledger = Some(dir.join("api-ledger.jsonl"));
    let _ = std::fs::remove_file(dir.join("api-ledger.jsonl"));
    api_cfg.faults = Faults {
        fail_5xx: args.fail_5xx,
        rate_limit_429: args.rate_limit_429,
        retry_after_secs: 1,
        latency_ms: 20,
        seed: 5,
        ..Faults::default()
    };
    // one record the API refuses for good: it ends in the dead-letter queue with its reason
    let expected: Value = std::fs::read(format!("{}.expected.json", next.display()))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if let Some(id) = expected["changed"].get(0).and_then(Value::as_str) {
        api_cfg.faults.reject_record_keys = vec![id.to_string()];
    }
    let api = ApiServer::start(api_cfg)
        .await
        .map_err(|e| LocalError::Setup {
            what: "starting the stand-in API".into(),
            detail: e.to_string(),
        })?;
    println!(
        "\n5. stand-in contact-tracing API at {} ({}% 503s, {}% 429s, one record refused with 422)",
        api.url(),
        (args.fail_5xx * 100.0).round(),
        (args.rate_limit_429 * 100.0).round()
    );
    let consumer = release_bin("consumer")?;
    let mut env = stack.consumer_env(&api.url(), token);
    env.retain(|(k, _)| k != "BACKOFF_CAP_SECS");
    env.push(("BACKOFF_CAP_SECS".into(), "2".into()));
    let consumers = (0..args.consumers.max(1))
        .map(|i| Rie::start(&consumer, &env, &format!("demo-consumer-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "   {} consumer(s) (release binary) under the emulator, fed by the local event source mapping",
        consumers.len()
    );
    println!("   draining the work queue (retries wait out their backoff)...");
    let st = drain_into(&stack, &consumers).await?;
    let s = api.stats();
    // read, not consumed: the operator replays it below
    let dlq = crate::dlq::list_letters(
        &stack.sqs,
        &stack.dlq_url,
        &crate::ops::letters::Filter::default(),
        usize::MAX,
    )
    .await
    .map_err(|e| LocalError::Aws(e.to_string()))?;
    println!("\n6. summary");
    println!(
        "   rows diffed            {}",
        expected["rows"].as_u64().unwrap_or(0)
    );
    println!("   messages sent          {depth}");
    println!(
        "   applied at the API     {} (each idempotency key once; replays answered 409: {})",
        s.applied, s.replays
    );
    println!(
        "   retried                {} (503: {}, 429: {})",
        st.reported_failures, s.server_errors_5xx, s.rate_limited_429
    );
    println!("   dead-lettered          {}", dlq.len());
    for m in &dlq {
        println!(
            "     error_class={} http_status={} reason={:?} attempts={}",
            m.attributes
                .get("error_class")
                .map(String::as_str)
                .unwrap_or(""),
            m.attributes
                .get("http_status")
                .map(String::as_str)
                .unwrap_or(""),
            m.attributes.get("reason").map(String::as_str).unwrap_or(""),
            m.attributes
                .get("attempts")
                .map(String::as_str)
                .unwrap_or("")
        );
    }
    println!(
        "   consumer invocations   {} (peak {} at once, peak API calls in flight {})",
        st.invocations, st.peak_concurrency, s.peak_in_flight
    );
    println!(
        "   queue drained          {} in {:.1} s",
        st.drained,
        st.elapsed_ms as f64 / 1000.0
    );
    let mut ok = st.drained && s.applied + dlq.len() as u64 == depth;
    println!(
        "   applied + dead-lettered = sent: {}",
        if ok { "yes" } else { "NO" }
    );

    // the operator's side, with the very commands of the runbook
    let mut op_env = stack.splitter_env();
    op_env.extend(
        [
            ("DATA_BUCKET", stack.bucket.as_str()),
            ("DLQ_URL", stack.dlq_url.as_str()),
            ("LEDGER_TABLE", stack.ledger_table.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let op = Operator {
        exe: std::env::current_exe().map_err(|e| LocalError::Setup {
            what: "finding the casefeed binary".into(),
            detail: e.to_string(),
        })?,
        env: op_env,
        failed: std::cell::Cell::new(false),
    };
    let run = op.newest_sending_run()?;
    println!("\n7. the operator: one screen, then the dead letter");
    op.run(&["status"])?;
    op.run(&["dlq", "list"])?;
    let refused = api.faults().reject_record_keys.first().cloned();
    if let Some(key) = &refused {
        op.run(&["explain", "lab_results", key])?;
        println!("   the API's owners correct the record; the operator replays its dead letter:");
        let mut f = api.faults();
        f.reject_record_keys.clear();
        api.set_faults(f);
        op.run(&[
            "dlq",
            "replay",
            "--reason",
            "the API's owners corrected the record",
        ])?;
        let st = drain_into(&stack, &consumers).await?;
        ok &= st.drained;
        op.run(&["explain", "lab_results", key])?;
    }
    println!("\n8. was every row of export-0002.csv applied?");
    let (reconciled, _) = op.run(&["reconcile", "lab_results", &run])?;
    ok &= reconciled;

    println!(
        "\n9. an export that removes 15% of the records (and adds 4, changes 6): the shrink guard holds it"
    );
    let third = dir.join("export-0003.csv");
    let removed = (args.rows * 15 / 100).to_string();
    gen(
        &[
            "next",
            "--prev",
            &next.to_string_lossy(),
            "--new",
            "4",
            "--changed",
            "6",
            "--removed",
            &removed,
            "--seed",
            "3",
        ],
        &third,
    )?;
    let ev = stack
        .upload("incoming/lab_results/export-0003.csv", &third)
        .await?;
    let resp = rie.invoke(&ev).await?;
    println!(
        "   {:<40} {}",
        "incoming/lab_results/export-0003.csv",
        describe(&resp)
    );
    let held = op.json(&["held"])?;
    op.run(&["held"])?;
    let held_id = held["held"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if held_id.is_empty() {
        println!("   (nothing was held)");
        ok = false;
    } else {
        println!("   the exporter confirms the purge was intended; the operator approves it (its 10 new and changed rows go out):");
        let (approved, _) = op.run(&[
            "approve",
            "--feed",
            "lab_results",
            &held_id,
            "--reason",
            "the agency confirmed the purge",
        ])?;
        ok &= approved;
        let st = drain_into(&stack, &consumers).await?;
        ok &= st.drained;
        let run = op.newest_sending_run()?;
        let (reconciled, _) = op.run(&["reconcile", "lab_results", &run])?;
        ok &= reconciled;
    }
    println!("\n10. who did what, and why:");
    op.run(&["audit"])?;
    api.shutdown().await;
    println!("\n11. in the bucket (s3://{}):", stack.bucket);
    for prefix in ["state/", "runs/", "rejects/", "sent/", "audit/"] {
        for k in stack.list(prefix).await? {
            println!("   {k}");
        }
    }
    let (records, fates) = ledger_counts(&stack).await?;
    println!(
        "\n   in the ledger table {}: {records} record item(s) (acknowledged version, lease), \
         {fates} fate item(s) (one per idempotency key)",
        stack.ledger_table
    );
    println!(
        "\n   generated files and the API's ledger of applied effects: {}",
        dir.display()
    );
    println!("done: moto, the API and the emulators are stopped.");
    if op.failed.get() {
        return Err(LocalError::Aws(
            "an operator command failed (see above)".into(),
        ));
    }
    if !ok {
        return Err(LocalError::Aws(
            "the demo's counts do not add up (see above)".into(),
        ));
    }
    Ok(())
}
