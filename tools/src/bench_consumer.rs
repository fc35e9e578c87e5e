//! `casefeed bench-consumer`: how fast the consumers deliver a backlog, against the stand-in
//! API at a fixed latency (default 100 ms), under a rate limit and without an effective one.
//!
//! Each case starts a fresh moto (work queue, DLQ, ledger table) and the stand-in API, starts
//! N release consumers under the Runtime Interface Emulator (each warmed with an empty
//! batch), pre-loads the work queue with B distinct envelope-v2 messages (SendMessageBatch,
//! as the splitter sends them: body and the `feed`/`change`/`idempotency_key` attributes)
//! and only then lets the local event source mapping drain it. The API's ledger file stamps
//! every first-time apply (milliseconds); the throughput is the middle 80% of the applies
//! (from the 10th to the 90th percentile apply) divided by the time between them, which
//! leaves out the ramp-up and the tail. In the same window it reads moto's CPU time
//! (`/proc/<pid>/stat`) and request lines (its log), to say when moto is the bottleneck.
//!
//! Case `limited` gives the consumers `API_RATE_PER_SEC = --rate` and reports achieved ÷
//! rate (target ≥ 0.9; above 1.0 the limit was not kept). Case `unlimited` gives a rate far
//! above what the fleet can reach and reports achieved ÷ (consumers × RECORD_CONCURRENCY ÷
//! latency), the most calls a second the ceiling allows.

use crate::api::{ApiConfig, ApiServer, Faults};
use crate::local::{release_bin, root, LocalError, Rie, Stack};
use casefeed::contract::envelope::{idempotency_key, Change, ENVELOPE_VERSION};
use futures_util::stream::{self, TryStreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod in_process;

const TOKEN: &str = "bench-token";
const FEED: &str = "lab_results";
const BUCKET: &str = "casefeed-bench";

/// Which cases to run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `API_RATE_PER_SEC = --rate`.
    Limited,
    /// `API_RATE_PER_SEC = --unlimited-rate` (far above ceiling ÷ latency).
    Unlimited,
}

/// Where the consumers' tables and queue live.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// moto's SQS and DynamoDB, the release consumer binaries under the Runtime Interface
    /// Emulator: the whole local stack (moto's one Python server is the bottleneck).
    Moto,
    /// In this process: the same consumer code over in-memory tables (the gate's answering
    /// after `--table-ms`) and an in-memory queue, the stand-in API over HTTP: the
    /// consumer's own throughput.
    Memory,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchConsumerArgs {
    /// The consumers' tables and queue: `moto` (the local stack) or `memory` (in process).
    #[arg(long, value_enum, default_value = "moto")]
    pub tables: Tables,
    /// With `--tables memory`: the gate table's round trip (ms), a DynamoDB write's.
    #[arg(long, default_value_t = 5)]
    pub table_ms: u64,
    /// Messages pre-loaded in the work queue (the backlog).
    #[arg(long, default_value_t = 2_000)]
    pub messages: usize,
    /// Consumer instances (the event source's maximum concurrency).
    #[arg(long, default_value_t = 3)]
    pub consumers: usize,
    /// RECORD_CONCURRENCY.
    #[arg(long, default_value_t = 2)]
    pub record_concurrency: u64,
    /// The API's latency (ms).
    #[arg(long, default_value_t = 100)]
    pub latency_ms: u64,
    /// The rate limit of the `limited` case (calls per second).
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// The "rate limit" of the `unlimited` case: far above ceiling ÷ latency.
    #[arg(long, default_value_t = 10_000)]
    pub unlimited_rate: u64,
    /// API_RATE_HORIZON_MS given to the consumers.
    #[arg(long, default_value_t = 200)]
    pub rate_horizon_ms: u64,
    /// The cases to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "limited,unlimited"
    )]
    pub cases: Vec<Case>,
    /// Longest time one case may take to drain its backlog (s).
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
    /// Where the API's ledger files go.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the markdown table to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchConsumerError {
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
    #[error("bad options: {0}")]
    Options(String),
    #[error("{case:?}: {what}")]
    Unexpected { case: Case, what: String },
}

/// One case's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub case: Case,
    /// The rate the consumers were given.
    pub rate: u64,
    /// What the case is measured against: the rate, or ceiling ÷ latency.
    pub target_per_s: f64,
    /// First-time applies a second over the middle 80% of the applies.
    pub applies_per_s: f64,
    /// API calls a second in the same window.
    pub calls_per_s: f64,
    /// The busiest 1-second window of API calls (sampled every 100 ms), or the API's own
    /// `peak_per_second` when it counts one.
    pub busiest_second: f64,
    pub peak_in_flight: u64,
    /// Calls the API answered 429 for being over its limit (limited case only).
    pub over_limit_429: u64,
    /// moto's CPU time ÷ wall time in the window (1.0 = one core busy).
    pub moto_cpu: f64,
    /// moto's requests a second in the window.
    pub moto_requests_per_s: f64,
    /// From the first receive to the empty queue (s).
    pub drain_secs: f64,
}

impl CaseResult {
    pub fn ratio(&self) -> f64 {
        self.applies_per_s / self.target_per_s
    }
}

/// The applies per second between the `lo` and `hi` quantiles of `times_ms` (sorted in
/// place), and that window: `((hi_index − lo_index) ÷ elapsed, (from_ms, to_ms))`.
/// `None` with fewer than 10 applies or a window of no time.
pub fn steady_rate(times_ms: &mut [i64], lo: f64, hi: f64) -> Option<(f64, (i64, i64))> {
    if times_ms.len() < 10 || !(0.0..1.0).contains(&lo) || hi <= lo || hi > 1.0 {
        return None;
    }
    times_ms.sort_unstable();
    let n = times_ms.len();
    let a = ((n as f64 * lo).floor() as usize).min(n - 1);
    let b = ((n as f64 * hi).ceil() as usize).clamp(a + 1, n) - 1;
    let (ta, tb) = (times_ms[a], times_ms[b]);
    if tb <= ta {
        return None;
    }
    Some(((b - a) as f64 * 1000.0 / (tb - ta) as f64, (ta, tb)))
}

/// One reading during a case: wall time (Unix ms), API calls, moto request lines, moto's
/// CPU ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub at_ms: i64,
    pub calls: u64,
    pub moto_requests: u64,
    pub moto_ticks: u64,
}

/// The readings' rates over `[from, to]` (the readings closest inside it):
/// (calls/s, moto requests/s, moto CPU ticks/s).
pub fn window_rates(readings: &[Reading], from: i64, to: i64) -> Option<(f64, f64, f64)> {
    let first = readings.iter().find(|r| r.at_ms >= from)?;
    let last = readings.iter().rev().find(|r| r.at_ms <= to)?;
    let secs = (last.at_ms - first.at_ms) as f64 / 1000.0;
    if secs <= 0.0 {
        return None;
    }
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    Some((
        per(first.calls, last.calls),
        per(first.moto_requests, last.moto_requests),
        per(first.moto_ticks, last.moto_ticks),
    ))
}

/// The most calls in any window of one second between two readings (readings apart by at
/// least a second, the nearest ones).
pub fn busiest_second(readings: &[Reading]) -> f64 {
    let mut best: f64 = 0.0;
    let mut j = 0;
    for (i, r) in readings.iter().enumerate() {
        j = j.max(i);
        while j < readings.len() && readings[j].at_ms - r.at_ms < 1000 {
            j += 1;
        }
        let Some(end) = readings.get(j) else { break };
        let secs = (end.at_ms - r.at_ms) as f64 / 1000.0;
        best = best.max(end.calls.saturating_sub(r.calls) as f64 / secs);
    }
    best
}

/// The markdown table of the cases.
pub fn table(args: &BenchConsumerArgs, rows: &[CaseResult]) -> String {
    let mut s = String::from(
        "| case | API_RATE_PER_SEC | consumers × RECORD_CONCURRENCY | latency | target (/s) | applies/s (middle 80%) | achieved ÷ target | calls/s | busiest second | peak in flight | moto CPU | moto requests/s | drain (s) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let target = match r.case {
            Case::Limited => format!("{:.0} (the limit)", r.target_per_s),
            Case::Unlimited => format!("{:.0} (ceiling ÷ latency)", r.target_per_s),
        };
        // in process there is no moto
        let (moto_cpu, moto_rps) = if r.moto_cpu.is_nan() {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("{:.0}%", r.moto_cpu * 100.0),
                format!("{:.0}", r.moto_requests_per_s),
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} × {} | {} ms | {target} | {:.1} | {:.0}% | {:.1} | {:.0} | {} | {moto_cpu} | {moto_rps} | {:.0} |\n",
            match r.case {
                Case::Limited => "limited",
                Case::Unlimited => "unlimited",
            },
            r.rate,
            args.consumers,
            args.record_concurrency,
            args.latency_ms,
            r.applies_per_s,
            r.ratio() * 100.0,
            r.calls_per_s,
            r.busiest_second,
            r.peak_in_flight,
            r.drain_secs,
        ));
    }
    s
}

/// Counts moto's request lines as its log grows (failed requests are logged in colour:
/// match the protocol).
struct LogCounter {
    file: std::fs::File,
    pos: u64,
    carry: Vec<u8>,
    count: u64,
}

impl LogCounter {
    fn open(path: &Path) -> Result<LogCounter, BenchConsumerError> {
        let file = std::fs::File::open(path).map_err(|source| BenchConsumerError::Io {
            what: "opening",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(LogCounter {
            file,
            pos: 0,
            carry: Vec::new(),
            count: 0,
        })
    }

    fn read(&mut self) -> u64 {
        let mut buf = Vec::new();
        if self.file.seek(SeekFrom::Start(self.pos)).is_ok() {
            if let Ok(n) = self.file.read_to_end(&mut buf) {
                self.pos += n as u64;
            }
        }
        self.carry.extend_from_slice(&buf);
        if let Some(last_nl) = self.carry.iter().rposition(|&b| b == b'\n') {
            let done: Vec<u8> = self.carry.drain(..=last_nl).collect();
            self.count += done
                .split(|&b| b == b'\n')
                .filter(|l| l.windows(8).any(|w| w == b"HTTP/1.1"))
                .count() as u64;
        }
        self.count
    }
}

/// A process's user + system CPU time in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // the command name is in parentheses and may hold spaces: fields after the last ')'
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ')': state is field 3, utime 14, stime 15 (1-based) → indexes 11 and 12
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A message's body and its attributes.
type Message = (String, Vec<(&'static str, String)>);

fn message(i: usize) -> Result<Message, serde_json::Error> {
    let record_key = format!("B{i:07}");
    let fields = BTreeMap::from([
        ("record_id".to_string(), record_key.clone()),
        (
            "patient_id".to_string(),
            format!("P{:06}", i * 7 % 1_000_000),
        ),
        ("test_code".to_string(), "94500-6".to_string()),
        ("result".to_string(), "negative".to_string()),
    ]);
    let content = xxhash_rust::xxh3::xxh3_64(record_key.as_bytes());
    let ikey = idempotency_key(FEED, &[record_key.as_bytes()], None, Some(content), 1);
    // built as JSON, not as `Envelope`, so that fields a newer envelope adds (all optional)
    // need no change here; the test decodes it with the consumer's own `Envelope::decode`
    let env = json!({
        "v": ENVELOPE_VERSION,
        "feed": FEED,
        "run": "bench-consumer",
        "source": {"bucket": BUCKET, "key": format!("incoming/{FEED}/bench.csv"), "etag": "bench"},
        "change": Change::New,
        "record_key": record_key,
        "version": 1,
        "idempotency_key": ikey,
        "fields": fields,
    });
    Ok((
        serde_json::to_string(&env)?,
        vec![
            ("feed", FEED.to_string()),
            ("change", "new".to_string()),
            ("idempotency_key", ikey),
        ],
    ))
}

/// Send `n` messages in batches of 10, 8 calls at a time.
async fn preload(stack: &Stack, n: usize, case: Case) -> Result<(), BenchConsumerError> {
    use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
    let unexpected = |what: String| BenchConsumerError::Unexpected { case, what };
    let batches: Vec<Vec<SendMessageBatchRequestEntry>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(10)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| {
                    let (body, attrs) = message(i).map_err(|e| unexpected(e.to_string()))?;
                    let mut e = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body);
                    for (k, v) in attrs {
                        let a = MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(v)
                            .build()
                            .map_err(|e| unexpected(e.to_string()))?;
                        e = e.message_attributes(k, a);
                    }
                    e.build().map_err(|e| unexpected(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    stream::iter(batches.into_iter().map(Ok::<_, BenchConsumerError>))
        .try_for_each_concurrent(8, |entries| async {
            let out = stack
                .sqs
                .send_message_batch()
                .queue_url(&stack.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| LocalError::Aws(format!("SendMessageBatch: {e:?}")))?;
            if !out.failed.is_empty() {
                return Err(unexpected(format!(
                    "SendMessageBatch refused {} entries",
                    out.failed.len()
                )));
            }
            Ok(())
        })
        .await?;
    let depth = stack.depth(&stack.queue_url).await?;
    if depth != n as u64 {
        return Err(unexpected(format!(
            "the work queue holds {depth} of {n} messages"
        )));
    }
    Ok(())
}

/// The Unix-ms times of the API's first-time applies, from its ledger file.
fn apply_times(ledger: &Path) -> Result<Vec<i64>, BenchConsumerError> {
    let text = std::fs::read_to_string(ledger).map_err(|source| BenchConsumerError::Io {
        what: "reading",
        path: ledger.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("idempotency_key").is_some())
        .filter_map(|v| {
            v.get("at")
                .and_then(|a| a.as_str())
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                .map(|t| t.timestamp_millis())
        })
        .collect())
}

/// The case's rate and its target.
fn rate_and_target(args: &BenchConsumerArgs, case: Case) -> (u64, f64) {
    let ceiling = args.consumers as u64 * args.record_concurrency;
    match case {
        Case::Limited => (args.rate, args.rate as f64),
        Case::Unlimited => (
            args.unlimited_rate,
            ceiling as f64 * 1000.0 / args.latency_ms.max(1) as f64,
        ),
    }
}

/// The stand-in API of a case, writing its ledger to `ledger`.
async fn start_api(
    args: &BenchConsumerArgs,
    case: Case,
    ledger: &Path,
) -> Result<ApiServer, BenchConsumerError> {
    let _ = std::fs::remove_file(ledger);
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.ledger = Some(ledger.to_path_buf());
    // the limited case's API enforces the limit too, as the real one does (a call over it
    // is answered 429); the unlimited case's has none
    cfg.faults = Faults {
        latency_ms: args.latency_ms,
        limit_per_second: (case == Case::Limited).then_some(args.rate),
        ..Faults::default()
    };
    ApiServer::start(cfg)
        .await
        .map_err(|e| BenchConsumerError::Api(e.to_string()))
}

/// The figures of a drained case, from the API's ledger and the readings.
fn figures(
    case: Case,
    (rate, target_per_s): (u64, f64),
    ledger: &Path,
    readings: &[Reading],
    api: &ApiServer,
    drain_ms: i64,
) -> Result<CaseResult, BenchConsumerError> {
    let unexpected = |what: String| BenchConsumerError::Unexpected { case, what };
    let stats = api.stats();
    // the ledger file is written before the answer: every apply is in it now
    let mut times = apply_times(ledger)?;
    let (applies_per_s, (from, to)) = steady_rate(&mut times, 0.1, 0.9)
        .ok_or_else(|| unexpected("too few applies to measure".into()))?;
    let (calls_per_s, moto_rps, ticks_per_s) = window_rates(readings, from, to)
        .ok_or_else(|| unexpected("no readings inside the steady window".into()))?;
    let stats_json = serde_json::to_value(stats).unwrap_or_default();
    let busiest = stats_json
        .get("peak_per_second")
        .and_then(serde_json::Value::as_u64)
        .map_or_else(|| busiest_second(readings), |p| p as f64);
    Ok(CaseResult {
        case,
        rate,
        target_per_s,
        applies_per_s,
        calls_per_s,
        busiest_second: busiest,
        peak_in_flight: stats.peak_in_flight,
        over_limit_429: stats_json
            .get("over_limit_429")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        moto_cpu: ticks_per_s / clock_ticks_per_sec(),
        moto_requests_per_s: moto_rps,
        drain_secs: drain_ms as f64 / 1000.0,
    })
}

/// A case with the consumers in this process over in-memory tables ([`in_process`]).
async fn one_case_in_process(
    args: &BenchConsumerArgs,
    case: Case,
    dir: &Path,
) -> Result<CaseResult, BenchConsumerError> {
    let (rate, target) = rate_and_target(args, case);
    let ledger = dir.join(format!("api-ledger-{case:?}-memory.jsonl").to_lowercase());
    let api = start_api(args, case, &ledger).await?;
    eprintln!(
        "{case:?}: {} messages in an in-memory work queue; draining with {} in-process consumer(s) × {}, rate {rate}/s, gate table {} ms",
        args.messages, args.consumers, args.record_concurrency, args.table_ms
    );
    let run = in_process::drain(args, case, rate, &api).await?;
    let applied = api.stats().applied;
    if !run.drained || applied != args.messages as u64 || run.dead_lettered != 0 {
        return Err(BenchConsumerError::Unexpected {
            case,
            what: format!(
                "drained {}, applied {applied} of {}, dead-lettered {}",
                run.drained, args.messages, run.dead_lettered
            ),
        });
    }
    let mut r = figures(
        case,
        (rate, target),
        &ledger,
        &run.readings,
        &api,
        run.elapsed_ms,
    )?;
    r.moto_cpu = f64::NAN;
    r.moto_requests_per_s = f64::NAN;
    api.shutdown().await;
    Ok(r)
}

async fn one_case(
    args: &BenchConsumerArgs,
    case: Case,
    dir: &Path,
) -> Result<CaseResult, BenchConsumerError> {
    let unexpected = |what: String| BenchConsumerError::Unexpected { case, what };
    let (rate, target_per_s) = rate_and_target(args, case);
    let stack = Stack::start(BUCKET, "", 10).await?;
    let ledger = dir.join(format!("api-ledger-{case:?}.jsonl").to_lowercase());
    let api = start_api(args, case, &ledger).await?;
    let mut env = stack.consumer_env(&api.url(), TOKEN);
    for (k, v) in [
        ("RECORD_CONCURRENCY", args.record_concurrency.to_string()),
        ("API_RATE_PER_SEC", rate.to_string()),
        ("API_RATE_HORIZON_MS", args.rate_horizon_ms.to_string()),
    ] {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v));
    }
    let bin = release_bin("consumer")?;
    let consumers = (0..args.consumers)
        .map(|i| Rie::start(&bin, &env, &format!("bench-consumer-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    for c in &consumers {
        // the cold start and first connections, outside the measurement
        c.invoke(&json!({"Records": []})).await?;
    }
    let t = Instant::now();
    preload(&stack, args.messages, case).await?;
    eprintln!(
        "{case:?}: {} messages in the work queue ({:.1} s); draining with {} consumer(s) × {}, rate {rate}/s",
        args.messages,
        t.elapsed().as_secs_f64(),
        args.consumers,
        args.record_concurrency
    );

    let pid = stack.moto.pid();
    let mut log = LogCounter::open(&stack.moto.log)?;
    let done = AtomicBool::new(false);
    let esm_cfg = crate::esm::EsmConfig {
        queue_url: stack.queue_url.clone(),
        batch_size: 10,
        wait_secs: 1,
        max_duration: Duration::from_secs(args.max_secs),
    };
    let drain = async {
        let r = crate::esm::drain(&stack.sqs, &consumers, &esm_cfg).await;
        done.store(true, Ordering::SeqCst);
        r
    };
    let sample = async {
        let mut readings = Vec::new();
        loop {
            let last = done.load(Ordering::SeqCst);
            readings.push(Reading {
                at_ms: now_ms(),
                calls: api.stats().requests,
                moto_requests: log.read(),
                moto_ticks: cpu_ticks(pid),
            });
            if last {
                break readings;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (st, readings) = tokio::join!(drain, sample);
    let st = st?;
    let stats = api.stats();
    let dlq = stack.depth(&stack.dlq_url).await?;
    if !st.drained || stats.applied != args.messages as u64 || dlq != 0 {
        return Err(unexpected(format!(
            "drained {}, applied {} of {}, dead-lettered {dlq}",
            st.drained, stats.applied, args.messages
        )));
    }
    let r = figures(
        case,
        (rate, target_per_s),
        &ledger,
        &readings,
        &api,
        st.elapsed_ms as i64,
    )?;
    api.shutdown().await;
    Ok(r)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!("{cpus} CPU(s), {model}, load average {load} at the start")
}

pub async fn run(args: BenchConsumerArgs) -> Result<(), BenchConsumerError> {
    if args.consumers == 0 || args.record_concurrency == 0 || args.rate == 0 {
        return Err(BenchConsumerError::Options(
            "--consumers, --record-concurrency and --rate must be at least 1".into(),
        ));
    }
    if args.messages < 10 {
        return Err(BenchConsumerError::Options(
            "--messages must be at least 10".into(),
        ));
    }
    let started = Instant::now();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| root().join(".local/bench-consumer"));
    std::fs::create_dir_all(&dir).map_err(|source| BenchConsumerError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let machine = machine();
    eprintln!("casefeed bench-consumer on {machine}");
    let mut rows = Vec::new();
    for case in &args.cases {
        let t = Instant::now();
        let r = match args.tables {
            Tables::Moto => one_case(&args, *case, &dir).await?,
            Tables::Memory => one_case_in_process(&args, *case, &dir).await?,
        };
        eprintln!(
            "{case:?}: {:.1} applies/s = {:.0}% of {:.0}/s{} ({:.0} s)",
            r.applies_per_s,
            r.ratio() * 100.0,
            r.target_per_s,
            if r.moto_cpu.is_nan() {
                String::new()
            } else {
                format!(", moto CPU {:.0}%", r.moto_cpu * 100.0)
            },
            t.elapsed().as_secs_f64()
        );
        // the row as soon as it is measured: a later case that fails or is cut off keeps it
        eprint!("{}", table(&args, std::slice::from_ref(&r)));
        rows.push(r);
    }
    let mut out = table(&args, &rows);
    out.push_str(&format!(
        "\n{} messages a case, API latency {} ms, {}; {machine}; {:.0} s in all.\n",
        args.messages,
        args.latency_ms,
        match args.tables {
            Tables::Moto => "tables and queues in moto, consumers under the emulator".to_string(),
            Tables::Memory => format!(
                "in process: in-memory tables (the gate's round trip {} ms) and queue",
                args.table_ms
            ),
        },
        started.elapsed().as_secs_f64()
    ));
    for r in &rows {
        match r.case {
            Case::Limited if r.busiest_second > r.rate as f64 => out.push_str(&format!(
                "- limited: the busiest second had {:.0} calls, above the limit of {}/s: the rate limit was not kept\n",
                r.busiest_second, r.rate
            )),
            Case::Limited if r.over_limit_429 > 0 => out.push_str(&format!(
                "- limited: the API refused {} call(s) as over its limit of {}/s (429)\n",
                r.over_limit_429, r.rate
            )),
            Case::Limited if r.ratio() < 0.9 => out.push_str(&format!(
                "- limited: {:.0}% of the limit, below the 90% target\n",
                r.ratio() * 100.0
            )),
            _ => {}
        }
        if r.moto_cpu >= 0.85 {
            out.push_str(&format!(
                "- {}: moto used {:.0}% of a core (its Python server is single-threaded in effect): moto is the bottleneck\n",
                if r.case == Case::Limited { "limited" } else { "unlimited" },
                r.moto_cpu * 100.0
            ));
        }
    }
    println!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(path, &out).map_err(|source| BenchConsumerError::Io {
            what: "writing",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use casefeed::contract::envelope::Envelope;

    fn r(at_ms: i64, calls: u64) -> Reading {
        Reading {
            at_ms,
            calls,
            moto_requests: calls * 5,
            moto_ticks: at_ms as u64 / 20,
        }
    }

    #[test]
    fn the_steady_rate_leaves_out_the_ramp_up_and_the_tail() {
        // 100 applies: a slow start, 80 at 20/s, a slow tail
        let mut times: Vec<i64> = (0..10).map(|i| i * 1000).collect();
        times.extend((0..80).map(|i| 10_000 + i * 50));
        times.extend((0..10).map(|i| 14_000 + i * 1000));
        times.reverse();
        let (rate, (from, to)) = steady_rate(&mut times, 0.1, 0.9).expect("a rate");
        assert_eq!((from, to), (10_000, 13_950));
        assert!((rate - 79.0 * 1000.0 / 3950.0).abs() < 1e-9, "{rate}");
        assert!((rate - 20.0).abs() < 0.1, "{rate}");
    }

    #[test]
    fn the_steady_rate_needs_enough_applies_and_some_time() {
        assert_eq!(steady_rate(&mut [1, 2, 3], 0.1, 0.9), None);
        assert_eq!(steady_rate(&mut [5; 20], 0.1, 0.9), None);
        assert_eq!(
            steady_rate(&mut (0..20).collect::<Vec<_>>(), 0.9, 0.1),
            None
        );
    }

    #[test]
    fn window_rates_use_the_readings_inside_the_window() {
        let readings: Vec<Reading> = (0..=50).map(|i| r(i * 100, (i * 2) as u64)).collect();
        let (calls, moto, ticks) = window_rates(&readings, 1_000, 3_000).expect("rates");
        assert!((calls - 20.0).abs() < 1e-9, "{calls}");
        assert!((moto - 100.0).abs() < 1e-9, "{moto}");
        assert!((ticks - 50.0).abs() < 1e-9, "{ticks}");
        assert_eq!(window_rates(&readings, 6_000, 7_000), None);
    }

    #[test]
    fn the_busiest_second_finds_a_burst() {
        let mut readings: Vec<Reading> = (0..=30).map(|i| r(i * 100, i as u64)).collect();
        // 10 calls a second, then 25 calls between 2.0 s and 3.0 s
        for x in readings.iter_mut().skip(21) {
            x.calls += 25;
        }
        let b = busiest_second(&readings);
        assert!((b - 35.0).abs() < 1e-9, "{b}");
        assert_eq!(busiest_second(&readings[..5]), 0.0);
    }

    #[test]
    fn the_table_has_a_row_a_case_with_the_ratio_to_its_target() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            b: BenchConsumerArgs,
        }
        let args = Cli::parse_from(["x"]).b;
        let row = |case, target, achieved| CaseResult {
            case,
            rate: 20,
            target_per_s: target,
            applies_per_s: achieved,
            calls_per_s: achieved,
            busiest_second: 21.0,
            peak_in_flight: 6,
            over_limit_429: 0,
            moto_cpu: 0.93,
            moto_requests_per_s: 150.0,
            drain_secs: 101.0,
        };
        let t = table(
            &args,
            &[
                row(Case::Limited, 20.0, 18.4),
                row(Case::Unlimited, 60.0, 30.0),
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("| limited | 20 | 3 × 2 | 100 ms | 20 (the limit) | 18.4 | 92% |"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("| 60 (ceiling ÷ latency) | 30.0 | 50% |"),
            "{}",
            lines[3]
        );
        assert!(lines[3].ends_with("| 93% | 150 | 101 |"), "{}", lines[3]);
    }

    #[test]
    fn cpu_ticks_of_this_process_are_read() {
        let mine = cpu_ticks(std::process::id());
        // burn a little CPU so the count cannot be a stale zero
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_ticks(std::process::id()) >= mine);
        assert_eq!(cpu_ticks(u32::MAX), 0);
    }

    #[test]
    fn a_message_is_an_envelope_v2_the_consumer_decodes() {
        let (body, attrs) = message(42).expect("message");
        let env = Envelope::decode(&body).expect("decodes");
        assert_eq!((env.v, env.version, env.change), (2, 1, Change::New));
        assert_eq!(env.record_key, "B0000042");
        assert_eq!(attrs[2], ("idempotency_key", env.idempotency_key.clone()));
        assert_ne!(message(43).expect("m").1[2].1, env.idempotency_key);
    }
}
