//! `casefeed bench-ledger`: what the consumer's ledger costs per delivered message — calls to
//! the ledger's service and wall time — for one or more consumer binaries, measured the same
//! way in one sitting (so an old build and a new one can be compared).
//!
//! Each run starts a fresh moto (bucket and ledger table both created, so a consumer with an
//! S3 ledger and one with a DynamoDB ledger both find theirs) and the stand-in API (no
//! latency, no faults), and the binary under the Runtime Interface Emulator. It invokes the
//! consumer with `--messages` distinct records in SQS batches of 10, one batch at a time
//! (first deliveries), then the same batches again (redeliveries: every message already
//! applied). moto logs one line per request; during a pass the consumer calls nothing but
//! its ledger (no message is retried or dead-lettered, which the bench checks), so the lines
//! a pass adds are its ledger calls. The message bodies are envelope version 1, which every
//! build reads.

use crate::api::{ApiConfig, ApiServer};
use crate::local::{release_bin, LocalError, Rie, Stack};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `casefeed bench-ledger` options.
#[derive(Args, Debug)]
pub struct BenchLedgerArgs {
    /// Consumer binaries to measure, as `label=path` (default: `current=target/release/consumer`).
    #[arg(long = "consumer")]
    pub consumers: Vec<String>,
    /// Distinct records delivered per pass.
    #[arg(long, default_value_t = 300)]
    pub messages: usize,
    /// Runs per binary (interleaved: a, b, a, b, …); the table shows the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Why the bench could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchLedgerError {
    /// The local stack failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// A consumer argument is not `label=path`.
    #[error("--consumer {0}: expected label=path")]
    Arg(String),
    /// The stand-in API failed to start.
    #[error("stand-in API: {0}")]
    Api(String),
    /// The consumer did something the bench does not count (a retry, a dead letter, an error).
    #[error("{label}: {what}")]
    Unexpected {
        /// The binary's label.
        label: String,
        /// What happened.
        what: String,
    },
}

/// One pass's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Pass {
    calls: u64,
    millis: f64,
}

fn moto_requests(log: &std::path::Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        // failed requests (a 4xx, e.g. a failed condition) are logged in colour: match the
        // protocol, not the closing quote
        .filter(|l| l.contains("HTTP/1.1"))
        .count() as u64
}

fn body(i: usize) -> String {
    json!({
        "v": 1,
        "feed": "bench",
        "run": "bench-run",
        "source": {"bucket": "casefeed-bench", "key": "incoming/bench/x.csv", "etag": "e"},
        "change": "new",
        "record_key": format!("R{i:07}"),
        "idempotency_key": format!("{:032x}", 0xbe9c_0000_0000u64 + i as u64),
        "fields": {"record_id": format!("R{i:07}"), "result": "positive"},
    })
    .to_string()
}

fn batch_event(from: usize, to: usize, receive: u32) -> Value {
    let records: Vec<Value> = (from..to)
        .map(|i| {
            json!({
                "messageId": format!("m-{i}"),
                "receiptHandle": format!("rh-{i}"),
                "body": body(i),
                "attributes": {"ApproximateReceiveCount": receive.to_string(), "SentTimestamp": "0"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:casefeed-work",
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}

async fn one_run(
    label: &str,
    bin: &std::path::Path,
    n: usize,
) -> Result<[Pass; 2], BenchLedgerError> {
    let stack = Stack::start("casefeed-bench", "", 10).await?;
    let api = ApiServer::start(ApiConfig::new("bench-token"))
        .await
        .map_err(|e| BenchLedgerError::Api(e.to_string()))?;
    let mut env = stack.consumer_env(&api.url(), "bench-token");
    // an S3-ledger build reads LEDGER_BUCKET, a DynamoDB-ledger build LEDGER_TABLE
    env.push(("LEDGER_BUCKET".into(), stack.bucket.clone()));
    env.push(("RECORD_CONCURRENCY".into(), "2".into()));
    let rie = Rie::start(bin, &env, &format!("bench-ledger-{label}"))?;
    // warm the container (cold start, first connections) outside the measurement
    let warm = rie.invoke(&json!({"Records": []})).await?;
    let mut out = [Pass::default(); 2];
    for (pass, receive) in [(0usize, 1u32), (1, 2)] {
        let before = moto_requests(&stack.moto.log);
        let t = Instant::now();
        for from in (0..n).step_by(10) {
            let r = rie
                .invoke(&batch_event(from, (from + 10).min(n), receive))
                .await?;
            let failures = r["batchItemFailures"]
                .as_array()
                .map_or(usize::MAX, Vec::len);
            if failures != 0 {
                return Err(BenchLedgerError::Unexpected {
                    label: label.into(),
                    what: format!("a batch answered {r} (first answer: {warm})"),
                });
            }
        }
        let millis = t.elapsed().as_secs_f64() * 1000.0;
        // moto writes its request line after answering: let the last ones land
        tokio::time::sleep(Duration::from_millis(300)).await;
        out[pass] = Pass {
            calls: moto_requests(&stack.moto.log) - before,
            millis,
        };
    }
    let s = api.stats();
    if s.applied != n as u64 || s.requests != n as u64 {
        return Err(BenchLedgerError::Unexpected {
            label: label.into(),
            what: format!(
                "the API saw {} requests, {} applied, for {n} records",
                s.requests, s.applied
            ),
        });
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Run the bench and print its table.
pub async fn run(args: BenchLedgerArgs) -> Result<(), BenchLedgerError> {
    let mut bins: Vec<(String, PathBuf)> = Vec::new();
    for c in &args.consumers {
        let (label, path) = c
            .split_once('=')
            .ok_or_else(|| BenchLedgerError::Arg(c.clone()))?;
        bins.push((label.to_string(), PathBuf::from(path)));
    }
    if bins.is_empty() {
        bins.push(("current".into(), release_bin("consumer")?));
    }
    let n = args.messages.max(10);
    let mut results: Vec<Vec<[Pass; 2]>> = vec![Vec::new(); bins.len()];
    for run in 0..args.runs.max(1) {
        for (i, (label, bin)) in bins.iter().enumerate() {
            let r = one_run(label, bin, n).await?;
            eprintln!(
                "run {}: {label}: first {} calls {:.0} ms, again {} calls {:.0} ms",
                run + 1,
                r[0].calls,
                r[0].millis,
                r[1].calls,
                r[1].millis
            );
            results[i].push(r);
        }
    }
    println!("| consumer | ledger calls per first delivery | ms per first delivery | ledger calls per redelivery | ms per redelivery |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for ((label, _), rs) in bins.iter().zip(&results) {
        let per = |pass: usize, f: fn(&Pass) -> f64| {
            median(rs.iter().map(|r| f(&r[pass]) / n as f64).collect())
        };
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |",
            per(0, |p| p.calls as f64),
            per(0, |p| p.millis),
            per(1, |p| p.calls as f64),
            per(1, |p| p.millis),
        );
    }
    Ok(())
}
