//! `casefeed demo`: the pipeline on this machine, on generated sample data.
//! Starts moto, recreates the template's bucket and queues in it, generates a baseline and a
//! next export, uploads both, runs the release splitter binary under the Runtime Interface
//! Emulator for each upload and prints what happened. Stops everything it started.

use crate::local::{release_bin, root, LocalError, Rie, Stack};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Rows in the baseline export.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// New rows in the next export.
    #[arg(long, default_value_t = 300)]
    pub new: u64,
    /// Changed rows in the next export.
    #[arg(long, default_value_t = 500)]
    pub changed: u64,
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

fn describe(resp: &Value) -> String {
    let Some(r) = resp.get("results").and_then(|r| r.get(0)) else {
        return format!("unexpected answer: {resp}");
    };
    let c = &r["counts"];
    format!(
        "{:<9} read {:>7}  new {:>5}  changed {:>5}  removed {:>4}  unchanged {:>7}  rejected {:>3}  sent {:>5}",
        r["status"].as_str().unwrap_or("?"),
        c["read"], c["new"], c["changed"], c["removed"], c["unchanged"], c["rejected"], c["sent"]
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
        "1. starting moto (S3, SQS) and creating the bucket, work queue and dead-letter queue"
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
    }
    println!("   the same event again (S3 delivers at least once):");
    let again = stack
        .upload("incoming/lab_results/export-0002.csv", &next)
        .await?;
    let resp = rie.invoke(&again).await?;
    println!(
        "   {:<40} {}",
        "incoming/lab_results/export-0002.csv",
        describe(&resp)
    );

    let depth = stack.depth(&stack.queue_url).await?;
    println!("\n4. the work queue holds {depth} message(s): one per new or changed row");
    let msgs = stack.drain(&stack.queue_url).await?;
    if let Some(m) = msgs.first() {
        let v: Value = serde_json::from_str(&m.body).unwrap_or(Value::Null);
        println!(
            "   e.g. change={} record_key={} idempotency_key={} ({} fields)",
            v["change"],
            v["record_key"],
            v["idempotency_key"],
            v["fields"].as_object().map(|o| o.len()).unwrap_or(0)
        );
    }
    println!("\n5. in the bucket:");
    for prefix in ["state/", "runs/", "rejects/"] {
        for k in stack.list(prefix).await? {
            println!("   s3://{}/{k}", stack.bucket);
        }
    }
    println!("\n   generated files: {}", dir.display());
    println!("done: moto and the emulator are stopped.");
    Ok(())
}
