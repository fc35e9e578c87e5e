//! `casefeed drill`: the backpressure drill. The whole pipeline runs locally (moto, the
//! release splitter and N release consumers under the Runtime Interface Emulator, the
//! SQS → Lambda event source emulation, the stand-in API) while a new export is uploaded
//! every few seconds and the API goes through phases: normal → slow (latency × a factor) →
//! down (an outage: every call 503) → back (normal) → drain (no more exports; the backlog
//! empties). Every second it samples the API's calls/s and calls in flight, the work queue's
//! depth, the oldest backlog's age, the fleet breaker's state, the dead letters and the
//! applies; at the end it writes `drill.csv` and `drill.png`, prints a table per phase and
//! checks the invariants (non-zero exit with the list of those that failed).
//!
//! The oldest backlog age is computed from effects, not from the queue: every export's
//! upload time is known, and so is every row it sent (the generator's expectation, checked
//! against the splitter's `sent`). A row is outstanding until the API's record for its key
//! holds a write from that export or a later one (`GET /records`' `source.key`): applied,
//! or superseded by a newer version of the record (which the consumer then skips). The age
//! is now − the upload time of the oldest export with an outstanding row: how far the
//! contact-tracing system lags behind the exports, end to end (it includes the splitter's
//! own run, a fraction of a second).
//!
//! Time is compressed: the consumers back off 1 s → 8 s (production: 5 s → 900 s) and the
//! breaker probes every 5 s (production: 30 s), so the work queue's receive budget is
//! raised to match (`--max-receives`, default 100; production: 10 receives spread over an
//! hour of back-off).

mod chart;
pub mod report;
#[cfg(test)]
mod tests;

use crate::api::{ApiConfig, ApiServer, Faults, FaultsPatch};
use crate::local::{release_bin, root, LocalError, Rie, Stack};
use report::{Backlog, EndState, HeldRecord, Phase, Sample, Schedule};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "drill-token";
const FEED: &str = "lab_results";

#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// Consumer instances (the event source's maximum concurrency).
    #[arg(long, default_value_t = 3)]
    pub consumers: usize,
    /// Messages one consumer invocation processes at once (RECORD_CONCURRENCY).
    #[arg(long, default_value_t = 2)]
    pub record_concurrency: u64,
    /// The API's rate limit the consumers are given (API_RATE_PER_SEC), calls per second.
    #[arg(long, default_value_t = 15)]
    pub rate: u64,
    /// API_RATE_HORIZON_MS given to the consumers.
    #[arg(long, default_value_t = 200)]
    pub rate_horizon_ms: u64,
    /// The API's latency in the normal, back and drain phases (ms).
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// The slow phase's latency: the normal latency times this.
    #[arg(long, default_value_t = 20)]
    pub slow_factor: u64,
    /// Length of the normal phase (s) [default: 45; --quick: 15].
    #[arg(long)]
    pub normal_secs: Option<u64>,
    /// Length of the slow phase (s) [default: 45; --quick: 15].
    #[arg(long)]
    pub slow_secs: Option<u64>,
    /// Length of the outage (s) [default: 45; --quick: 15].
    #[arg(long)]
    pub down_secs: Option<u64>,
    /// Length of the back phase (s), exports still arriving [default: 60; --quick: 25].
    #[arg(long)]
    pub back_secs: Option<u64>,
    /// Longest drain (s): it ends as soon as every row is in effect and the queue is empty
    /// [default: 90; --quick: 30].
    #[arg(long)]
    pub drain_secs: Option<u64>,
    /// The ~90 s smoke preset (shorter phases).
    #[arg(long)]
    pub quick: bool,
    /// Seconds between two exports.
    #[arg(long, default_value_t = 4)]
    pub interval_secs: u64,
    /// Rows of the baseline export (sends nothing: it only sets the state).
    #[arg(long, default_value_t = 5_000)]
    pub rows: u64,
    /// New rows in each next export.
    #[arg(long, default_value_t = 14)]
    pub new: u64,
    /// Changed rows in each next export.
    #[arg(long, default_value_t = 10)]
    pub changed: u64,
    /// Removed rows in each next export (counted by the splitter, not sent).
    #[arg(long, default_value_t = 2)]
    pub removed: u64,
    /// BREAKER_THRESHOLD (consecutive transient failures that open the fleet breaker).
    #[arg(long, default_value_t = 3)]
    pub breaker_threshold: u64,
    /// BREAKER_PROBE_SECS (one probe per interval across the fleet while open).
    #[arg(long, default_value_t = 5)]
    pub breaker_probe_secs: u64,
    /// BREAKER_RAMP_SECS (the rate ramps back up over this long after closing).
    #[arg(long, default_value_t = 15)]
    pub breaker_ramp_secs: u64,
    /// RETRY_WINDOW_SECS given to the consumers.
    #[arg(long, default_value_t = 86_400)]
    pub retry_window_secs: u64,
    /// BACKOFF_BASE_SECS given to the consumers.
    #[arg(long, default_value_t = 1)]
    pub backoff_base_secs: u64,
    /// BACKOFF_CAP_SECS given to the consumers.
    #[arg(long, default_value_t = 8)]
    pub backoff_cap_secs: u64,
    /// The work queue's maxReceiveCount (receives before SQS moves a message to the DLQ).
    #[arg(long, default_value_t = 100)]
    pub max_receives: u32,
    /// Where drill.csv, drill.png, summary.md and the generated exports go.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("stand-in API: {0}")]
    Api(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("casefeed gen: {0}")]
    Gen(String),
    #[error("export {export}: {detail}")]
    Splitter { export: usize, detail: String },
    #[error("writing {path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("reading {path}: {source}")]
    CsvRead {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    #[error("bad options: {0}")]
    Options(String),
    #[error("{} invariant(s) failed:\n  - {}", .0.len(), .0.join("\n  - "))]
    Invariants(Vec<String>),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DrillError {
    let path = path.to_path_buf();
    move |source| DrillError::Io { what, path, source }
}

impl DrillArgs {
    /// The phases with their lengths: the options given, else the preset's.
    pub fn schedule(&self) -> Schedule {
        let (n, s, d, b, r) = if self.quick {
            (15, 15, 15, 25, 30)
        } else {
            (45, 45, 45, 60, 90)
        };
        let secs = |o: Option<u64>, dflt: u64| Duration::from_secs(o.unwrap_or(dflt));
        Schedule {
            phases: vec![
                (Phase::Normal, secs(self.normal_secs, n)),
                (Phase::Slow, secs(self.slow_secs, s)),
                (Phase::Down, secs(self.down_secs, d)),
                (Phase::Back, secs(self.back_secs, b)),
                (Phase::Drain, secs(self.drain_secs, r)),
            ],
        }
    }

    fn ceiling(&self) -> u64 {
        self.consumers as u64 * self.record_concurrency
    }

    /// The consumers' environment: the local stack's, with the drill's settings.
    fn consumer_env(&self, stack: &Stack, api_url: &str) -> Vec<(String, String)> {
        let slow_ms = self.latency_ms.saturating_mul(self.slow_factor);
        // a slow call must not time out; a lease outlives twice the longest call
        let timeout_ms = (slow_ms * 2).max(3_000);
        let lease_secs = (2 * (timeout_ms + 1_000)).div_ceil(1_000) + 1;
        let mut env = stack.consumer_env(api_url, TOKEN);
        let set: Vec<(&str, String)> = vec![
            ("RECORD_CONCURRENCY", self.record_concurrency.to_string()),
            ("BACKOFF_BASE_SECS", self.backoff_base_secs.to_string()),
            ("BACKOFF_CAP_SECS", self.backoff_cap_secs.to_string()),
            ("API_TIMEOUT_MS", timeout_ms.to_string()),
            ("LEDGER_LEASE_SECS", lease_secs.to_string()),
            ("API_RATE_PER_SEC", self.rate.to_string()),
            ("API_RATE_HORIZON_MS", self.rate_horizon_ms.to_string()),
            ("BREAKER_THRESHOLD", self.breaker_threshold.to_string()),
            ("BREAKER_PROBE_SECS", self.breaker_probe_secs.to_string()),
            ("BREAKER_RAMP_SECS", self.breaker_ramp_secs.to_string()),
            ("RETRY_WINDOW_SECS", self.retry_window_secs.to_string()),
        ];
        for (k, v) in set {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v));
        }
        env
    }
}

/// What the generator expects a next export to send.
#[derive(Debug, serde::Deserialize)]
struct ExpectedFile {
    new: Vec<String>,
    changed: Vec<String>,
}

/// Run `casefeed gen` (this very binary) with `args`, writing `out`.
pub(crate) fn gen(args: &[&str], out: &Path) -> Result<(), DrillError> {
    let exe = std::env::current_exe().map_err(|e| DrillError::Gen(e.to_string()))?;
    // its summary line (counts and paths) is not repeated per export; its error is kept
    let done = Command::new(exe)
        .arg("gen")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DrillError::Gen(e.to_string()))?;
    if !done.status.success() {
        return Err(DrillError::Gen(format!(
            "{} exited with {}: {}",
            out.display(),
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        )));
    }
    Ok(())
}

fn export_key(n: usize) -> String {
    format!("incoming/{FEED}/export-{n:04}.csv")
}

/// One export: its file and the record keys it sends.
struct Export {
    path: PathBuf,
    rows: Vec<String>,
}

/// Generate the baseline (number 0) and `count` next exports, each from the previous one.
fn generate(args: &DrillArgs, dir: &Path, count: usize) -> Result<Vec<Export>, DrillError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let base = dir.join("export-0000.csv");
    gen(
        &["baseline", "--rows", &args.rows.to_string(), "--seed", "11"],
        &base,
    )?;
    let mut out = vec![Export {
        path: base,
        rows: Vec::new(),
    }];
    for n in 1..=count {
        let path = dir.join(format!("export-{n:04}.csv"));
        let prev = out[n - 1].path.to_string_lossy().into_owned();
        gen(
            &[
                "next",
                "--prev",
                &prev,
                "--new",
                &args.new.to_string(),
                "--changed",
                &args.changed.to_string(),
                "--removed",
                &args.removed.to_string(),
                "--seed",
                &(100 + n).to_string(),
                "--shuffle",
            ],
            &path,
        )?;
        let exp_path = PathBuf::from(format!("{}.expected.json", path.display()));
        let bytes = std::fs::read(&exp_path).map_err(io("reading", &exp_path))?;
        let exp: ExpectedFile = serde_json::from_slice(&bytes)
            .map_err(|e| DrillError::Gen(format!("{}: {e}", exp_path.display())))?;
        out.push(Export {
            path,
            rows: exp.new.into_iter().chain(exp.changed).collect(),
        });
    }
    Ok(out)
}

/// What the uploader has done so far, shared with the sampler.
#[derive(Default)]
struct Progress {
    backlog: Backlog,
    /// Record key → the exports that sent it, in order.
    sent: BTreeMap<String, Vec<usize>>,
    rows_sent: u64,
    exports: usize,
    split_ms: Vec<u64>,
    error: Option<DrillError>,
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Upload and split export `n` (uploaded `at_s` seconds after the start).
async fn upload_one(
    stack: &Stack,
    splitter: &Rie,
    export: &Export,
    n: usize,
    at_s: f64,
    progress: &Mutex<Progress>,
) -> Result<(), DrillError> {
    let ev = stack.upload(&export_key(n), &export.path).await?;
    let t = Instant::now();
    let resp = splitter.invoke(&ev).await?;
    let ms = t.elapsed().as_millis() as u64;
    let r = &resp["results"][0];
    let status = r["status"].as_str().unwrap_or("?");
    let sent = r["counts"]["sent"].as_u64().unwrap_or(0);
    if status != "applied" || sent != export.rows.len() as u64 {
        return Err(DrillError::Splitter {
            export: n,
            detail: format!(
                "status {status}, sent {sent} (the generator expects {}){}",
                export.rows.len(),
                resp.get("errorMessage")
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        });
    }
    let mut p = lock(progress);
    for k in &export.rows {
        p.backlog.push(k.clone(), n, at_s);
        p.sent.entry(k.clone()).or_default().push(n);
    }
    p.rows_sent += sent;
    p.exports = n;
    p.split_ms.push(ms);
    Ok(())
}

/// Each record's last applied export, from the API's records.
fn last_applied(api: &ApiServer, keys: &HashMap<String, usize>) -> HashMap<String, usize> {
    api.records()
        .into_iter()
        .filter(|r| r.feed == FEED)
        .filter_map(|r| {
            let n = r.source.as_ref().and_then(|s| keys.get(&s.key)).copied()?;
            Some((r.record_key, n))
        })
        .collect()
}

async fn breaker_state(stack: &Stack) -> Result<String, LocalError> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = stack
        .dynamodb
        .get_item()
        .table_name(&stack.ledger_table)
        .key("pk", AttributeValue::S("gate#api".into()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| LocalError::Aws(format!("GetItem gate#api: {e:?}")))?;
    Ok(out
        .item
        .and_then(|i| i.get("state").and_then(|s| s.as_s().ok()).cloned())
        .unwrap_or_else(|| "closed".into()))
}

fn stat(v: &Value, name: &str) -> u64 {
    v.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// The API's counters by name (fields a newer server adds, like `peak_per_second`, too).
fn api_stats(api: &ApiServer) -> Value {
    serde_json::to_value(api.stats()).unwrap_or(Value::Null)
}

/// The rows the API must hold at the end: for each record, the row of the last export that
/// sent it, read from that export's file (by header name).
fn final_rows(
    exports: &[Export],
    sent: &BTreeMap<String, Vec<usize>>,
) -> Result<HashMap<String, BTreeMap<String, String>>, DrillError> {
    let mut wanted: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for (k, ns) in sent {
        if let Some(n) = ns.last() {
            wanted.entry(*n).or_default().insert(k);
        }
    }
    let mut out = HashMap::new();
    for (n, keys) in wanted {
        let path = &exports[n].path;
        let err = |source| DrillError::CsvRead {
            path: path.clone(),
            source,
        };
        let mut rdr = csv::Reader::from_path(path).map_err(err)?;
        let header: Vec<String> = rdr
            .headers()
            .map_err(err)?
            .iter()
            .map(str::to_string)
            .collect();
        let Some(id_col) = header.iter().position(|h| h == "record_id") else {
            return Err(DrillError::Gen(format!(
                "{}: no record_id column",
                path.display()
            )));
        };
        for rec in rdr.records() {
            let rec = rec.map_err(err)?;
            let Some(id) = rec.get(id_col) else { continue };
            if keys.contains(id) {
                let row = header
                    .iter()
                    .cloned()
                    .zip(rec.iter().map(str::to_string))
                    .collect();
                out.insert(id.to_string(), row);
            }
        }
    }
    Ok(out)
}

pub async fn run(args: DrillArgs) -> Result<(), DrillError> {
    if args.consumers == 0 || args.record_concurrency == 0 || args.rate == 0 {
        return Err(DrillError::Options(
            "--consumers, --record-concurrency and --rate must be at least 1".into(),
        ));
    }
    if args.interval_secs == 0 {
        return Err(DrillError::Options(
            "--interval-secs must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let schedule = args.schedule();
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| root().join(".local/drill"));
    std::fs::create_dir_all(&out_dir).map_err(io("creating", &out_dir))?;
    let uploads_until = schedule.uploads_until();
    let count = uploads_until.as_secs().div_ceil(args.interval_secs).max(1) as usize;
    println!(
        "casefeed drill: {} consumer(s) × RECORD_CONCURRENCY {} (ceiling {}), rate limit {}/s, \
         latency {} ms (slow ×{}), an export every {} s",
        args.consumers,
        args.record_concurrency,
        args.ceiling(),
        args.rate,
        args.latency_ms,
        args.slow_factor,
        args.interval_secs
    );
    let phases: Vec<String> = schedule
        .phases
        .iter()
        .map(|(p, d)| format!("{p} {} s", d.as_secs()))
        .collect();
    println!(
        "phases: {} (the drain ends early once everything is in effect)",
        phases.join(" → ")
    );
    println!(
        "generating a {}-row baseline and {count} next exports ({} new, {} changed, {} removed each)",
        args.rows, args.new, args.changed, args.removed
    );
    let exports = generate(&args, &out_dir.join("exports"), count)?;
    let keys: HashMap<String, usize> = (0..exports.len()).map(|n| (export_key(n), n)).collect();

    let feeds_path = root().join("events/feeds.toml");
    let feeds = std::fs::read_to_string(&feeds_path).map_err(io("reading", &feeds_path))?;
    let stack = Stack::start("casefeed-drill", &feeds, args.max_receives).await?;
    let splitter = Rie::start(
        &release_bin("splitter")?,
        &stack.splitter_env(),
        "drill-splitter",
    )?;
    let ledger = out_dir.join("api-ledger.jsonl");
    let _ = std::fs::remove_file(&ledger);
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.ledger = Some(ledger);
    // the API enforces the rate the consumers are given, as the real one does: a call over
    // it is answered 429 (and counted in its peak_per_second all the same)
    cfg.faults = Faults {
        latency_ms: args.latency_ms,
        limit_per_second: Some(args.rate),
        ..Faults::default()
    };
    let api = ApiServer::start(cfg)
        .await
        .map_err(|e| DrillError::Api(e.to_string()))?;
    let consumer = release_bin("consumer")?;
    let env = args.consumer_env(&stack, &api.url());
    let consumers = (0..args.consumers)
        .map(|i| Rie::start(&consumer, &env, &format!("drill-consumer-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "moto at {}, the API at {}, the splitter and {} consumer(s) under the emulator",
        stack.moto.endpoint,
        api.url(),
        consumers.len()
    );
    // the baseline sets the state and sends nothing
    let ev = stack.upload(&export_key(0), &exports[0].path).await?;
    let resp = splitter.invoke(&ev).await?;
    if resp["results"][0]["status"] != "baseline" {
        return Err(DrillError::Splitter {
            export: 0,
            detail: format!(
                "status {} (expected baseline)",
                resp["results"][0]["status"]
            ),
        });
    }

    let progress = Arc::new(Mutex::new(Progress::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let esm_cfg = crate::esm::EsmConfig {
        queue_url: stack.queue_url.clone(),
        batch_size: 10,
        wait_secs: 1,
        max_duration: schedule.total() + Duration::from_secs(60),
    };
    let samples = {
        let esm = crate::esm::pump(&stack.sqs, &consumers, &esm_cfg, stop.clone());
        let uploader = async {
            for (n, export) in exports.iter().enumerate().skip(1) {
                let at = Duration::from_secs(args.interval_secs * (n as u64 - 1));
                if at >= uploads_until {
                    break;
                }
                tokio::time::sleep_until((t0 + at).into()).await;
                let at_s = t0.elapsed().as_secs_f64();
                if let Err(e) = upload_one(&stack, &splitter, export, n, at_s, &progress).await {
                    lock(&progress).error = Some(e);
                    return;
                }
            }
        };
        let phases = async {
            for (phase, _) in &schedule.phases {
                tokio::time::sleep_until((t0 + schedule.start_of(*phase)).into()).await;
                let patch = match phase {
                    Phase::Slow => FaultsPatch {
                        latency_ms: Some(args.latency_ms.saturating_mul(args.slow_factor)),
                        ..FaultsPatch::default()
                    },
                    Phase::Down => FaultsPatch {
                        latency_ms: Some(args.latency_ms),
                        outage_secs: Some(
                            schedule
                                .phases
                                .iter()
                                .find(|(p, _)| *p == Phase::Down)
                                .map_or(0.0, |(_, d)| d.as_secs_f64()),
                        ),
                        ..FaultsPatch::default()
                    },
                    _ => FaultsPatch {
                        latency_ms: Some(args.latency_ms),
                        outage_secs: Some(0.0),
                        ..FaultsPatch::default()
                    },
                };
                if let Err(e) = api.patch_faults(&patch) {
                    lock(&progress).error = Some(DrillError::Api(e));
                    return;
                }
                eprintln!("[{:>5.1} s] phase {phase}", t0.elapsed().as_secs_f64());
            }
        };
        let sampler = sample_loop(&stack, &api, &schedule, &keys, &progress, t0, &stop);
        let (esm_result, (), (), samples) = tokio::join!(esm, uploader, phases, sampler);
        esm_result?;
        samples?
    };
    let drill_secs = t0.elapsed().as_secs_f64();
    if let Some(e) = lock(&progress).error.take() {
        return Err(e);
    }

    // the end state
    let stats = api_stats(&api);
    let dlq = stack.depth(&stack.dlq_url).await?;
    let depth = crate::esm::depth(&stack.sqs, &stack.queue_url).await?;
    let (sent, backlog, rows_sent, split_ms) = {
        let p = lock(&progress);
        (
            p.sent.clone(),
            p.backlog.len(),
            p.rows_sent,
            p.split_ms.clone(),
        )
    };
    let rows = final_rows(&exports, &sent)?;
    let held: BTreeMap<String, HeldRecord> = api
        .records()
        .into_iter()
        .filter(|r| r.feed == FEED)
        .map(|r| {
            let last_export = r.source.as_ref().and_then(|s| keys.get(&s.key)).copied();
            let fields_match = match (&r.fields, rows.get(&r.record_key)) {
                (Some(f), Some(want)) => f == want,
                _ => false,
            };
            (
                r.record_key,
                HeldRecord {
                    versions: r.versions,
                    last_export,
                    fields_match,
                },
            )
        })
        .collect();
    let effects = report::compare_effects(&sent, &held);
    let end = EndState {
        rate_limit: args.rate,
        ceiling: args.ceiling(),
        api_peak_per_second: stats.get("peak_per_second").and_then(Value::as_u64),
        api_peak_in_flight: stat(&stats, "peak_in_flight"),
        api_applied: stat(&stats, "applied"),
        dead_lettered: dlq,
        queue_depth: depth,
        backlog,
        effects: effects.clone(),
    };
    let failed = report::check(&samples, &end);

    let csv_path = out_dir.join("drill.csv");
    let f = std::fs::File::create(&csv_path).map_err(io("creating", &csv_path))?;
    report::write_csv(std::io::BufWriter::new(f), &samples).map_err(|source| DrillError::Csv {
        path: csv_path.clone(),
        source,
    })?;
    let png = out_dir.join("drill.png");
    let title = format!(
        "casefeed drill: {} consumers × {} (ceiling {}), rate limit {}/s, latency {} ms → {} ms → outage → {} ms, an export every {} s",
        args.consumers,
        args.record_concurrency,
        args.ceiling(),
        args.rate,
        args.latency_ms,
        args.latency_ms * args.slow_factor,
        args.latency_ms,
        args.interval_secs
    );
    chart::draw(&png, &samples, &schedule, args.rate, args.ceiling(), &title)?;
    let table = report::summary_table(&report::summarize(&samples));
    let split_mean = split_ms.iter().sum::<u64>() as f64 / split_ms.len().max(1) as f64;
    let mut summary = format!(
        "{table}\n\
         - exports: {} (splitter run {:.0} ms on average), rows sent {rows_sent}, applied {} + superseded {}, dead-lettered {dlq}\n\
         - API: {} calls, peak in flight {} (ceiling {}), busiest second {} (limit {}/s), 503s {}, 429s {} (over the limit {}), replays {}, stale {}\n\
         - drill {:.0} s (whole command {:.0} s)\n",
        lock(&progress).exports,
        split_mean,
        effects.applied,
        effects.superseded,
        stat(&stats, "requests"),
        end.api_peak_in_flight,
        end.ceiling,
        end.api_peak_per_second.map_or_else(
            || {
                let m = samples.iter().map(|s| s.calls_per_s).fold(0.0, f64::max);
                format!("{m:.1} /s sampled")
            },
            |p| format!("{p} (API peak_per_second)")
        ),
        args.rate,
        stat(&stats, "server_errors_5xx"),
        stat(&stats, "rate_limited_429"),
        stat(&stats, "over_limit_429"),
        stat(&stats, "replays"),
        stat(&stats, "stale_409"),
        drill_secs,
        started.elapsed().as_secs_f64()
    );
    summary.push_str(&if failed.is_empty() {
        "- invariants: all hold\n".to_string()
    } else {
        format!("- invariants failed:\n  - {}\n", failed.join("\n  - "))
    });
    println!("\n{summary}");
    let md = out_dir.join("summary.md");
    std::fs::write(&md, &summary).map_err(io("writing", &md))?;
    println!(
        "wrote {}, {} and {}",
        csv_path.display(),
        png.display(),
        md.display()
    );
    api.shutdown().await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(DrillError::Invariants(failed))
    }
}

/// Sample every second until the drain is over (everything in effect and the queue empty,
/// or the drain's time is up); then stop the event source emulation.
async fn sample_loop(
    stack: &Stack,
    api: &ApiServer,
    schedule: &Schedule,
    keys: &HashMap<String, usize>,
    progress: &Mutex<Progress>,
    t0: Instant,
    stop: &AtomicBool,
) -> Result<Vec<Sample>, DrillError> {
    let result = sample_until_drained(stack, api, schedule, keys, progress, t0).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    result
}

async fn sample_until_drained(
    stack: &Stack,
    api: &ApiServer,
    schedule: &Schedule,
    keys: &HashMap<String, usize>,
    progress: &Mutex<Progress>,
    t0: Instant,
) -> Result<Vec<Sample>, DrillError> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev = (0.0f64, 0u64);
    let drain_at = schedule.start_of(Phase::Drain);
    let end = schedule.total();
    let mut quiet = 0;
    loop {
        tick.tick().await;
        let (depth, dlq, breaker) = tokio::join!(
            crate::esm::depth(&stack.sqs, &stack.queue_url),
            stack.depth(&stack.dlq_url),
            breaker_state(stack)
        );
        let stats = api_stats(api);
        let applied_at = last_applied(api, keys);
        let now = t0.elapsed();
        let t_s = now.as_secs_f64();
        let (oldest, outstanding, rows_sent, failed) = {
            let mut p = lock(progress);
            p.backlog.settle(&applied_at);
            (
                p.backlog.oldest_age_s(t_s),
                p.backlog.len(),
                p.rows_sent,
                p.error.is_some(),
            )
        };
        let requests = stat(&stats, "requests");
        let dt = (t_s - prev.0).max(1e-3);
        let s = Sample {
            t_s,
            phase: schedule.phase_at(now),
            calls_per_s: requests.saturating_sub(prev.1) as f64 / dt,
            requests,
            in_flight: stat(&stats, "in_flight"),
            queue_depth: depth?,
            oldest_age_s: oldest,
            breaker: breaker?,
            dead_lettered: dlq?,
            applied: stat(&stats, "applied"),
            rows_sent,
        };
        prev = (t_s, requests);
        if samples.len().is_multiple_of(10) || s.phase == Phase::Drain && outstanding == 0 {
            eprintln!(
                "[{:>5.1} s] {:<6} calls/s {:>5.1}  in flight {:>2}  depth {:>4}  oldest {:>5.1} s  breaker {:<6}  applied {:>5}/{:<5} dlq {}",
                s.t_s, s.phase, s.calls_per_s, s.in_flight, s.queue_depth, s.oldest_age_s, s.breaker, s.applied, s.rows_sent, s.dead_lettered
            );
        }
        let drained = s.queue_depth == 0 && outstanding == 0;
        samples.push(s);
        if failed || now >= end {
            break;
        }
        if now >= drain_at && drained {
            // a few more seconds of an idle pipeline, then stop
            quiet += 1;
            if quiet >= 3 {
                break;
            }
        } else {
            quiet = 0;
        }
    }
    Ok(samples)
}
