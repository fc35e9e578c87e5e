//! `casefeed-api`: the stand-in contact-tracing API as a process.
//!
//! Prints `listening on http://127.0.0.1:PORT` as its first stdout line once bound, serves until
//! Ctrl-C / SIGTERM or `--max-seconds`, then prints the final stats as JSON on stderr.
//! Logs (stderr) follow `RUST_LOG` (default `info`; `debug` logs every answer: method, status,
//! key prefix — never a field value).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use casefeed_tools::api::{ApiConfig, ApiServer, Faults, DEFAULT_MAX_BODY_BYTES};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "casefeed-api",
    version,
    about = "Stand-in contact-tracing API with fault injection (loopback only, or the docker0 bridge)"
)]
struct Args {
    /// Address to listen on; must be loopback (see --allow-docker-bridge). Port 0 picks a
    /// free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also accept the address of this machine's docker0 bridge as --listen (the gateway a
    /// container of your own dockerd reaches the host through: `sam local invoke`).
    #[arg(long)]
    allow_docker_bridge: bool,
    /// The admin Bearer token (/control, /records, /reset, /arrivals), also required on
    /// POST /cases until the case_tokens fault is set (POST /control).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    token: String,
    /// Append-only JSON-lines ledger of applied effects (a restart rebuilds the applied keys
    /// and the records from it).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Largest accepted POST /cases body; larger → 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Exit by itself after this many seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    max_seconds: u64,
    /// Share (0.0–1.0) of requests answered 503 before applying.
    #[arg(long, default_value_t = 0.0)]
    fail_5xx: f64,
    /// Share of requests answered 429.
    #[arg(long = "rate-limit-429", default_value_t = 0.0)]
    rate_limit_429: f64,
    /// Retry-After of a 429, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Server-side rate limit: a POST /cases arriving while the last 1000 ms already hold
    /// this many admitted calls is answered 429.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit_per_second: Option<u64>,
    /// Answer the first N POST /cases 429.
    #[arg(long, default_value_t = 0)]
    rate_limit_next: u64,
    /// Share of requests that sleep --timeout-ms and then answer 503.
    #[arg(long, default_value_t = 0.0)]
    timeout_share: f64,
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Latency added to every authorized, well-formed POST /cases.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Start with an outage of this many seconds (every POST /cases answers 503).
    #[arg(long)]
    outage_secs: Option<f64>,
    /// Outage until this Unix time in milliseconds.
    #[arg(long, conflicts_with = "outage_secs")]
    outage_until_ms: Option<u64>,
    /// Share of first-time applies whose connection is dropped after recording the effect.
    #[arg(long, default_value_t = 0.0)]
    apply_then_drop: f64,
    /// Idempotency-Key answered 422 permanently (repeatable).
    #[arg(long = "reject-key")]
    reject_keys: Vec<String>,
    /// record_key answered 422 permanently (repeatable).
    #[arg(long = "reject-record-key")]
    reject_record_keys: Vec<String>,
    /// RECORD_KEY=VERSION: calls for that record with a version below VERSION answer 503
    /// (repeatable).
    #[arg(long = "fail-record", value_parser = parse_fail_record)]
    fail_records: Vec<(String, u64)>,
    /// record_key whose calls get no answer for --hang-ms, then 503 (repeatable).
    #[arg(long = "hang-record")]
    hang_records: Vec<String>,
    #[arg(long, default_value_t = 600_000)]
    hang_ms: u64,
    /// Seed of the RNG deciding the shares.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl Args {
    fn faults(&self) -> Result<Faults, String> {
        let mut f = Faults {
            fail_5xx: self.fail_5xx,
            rate_limit_429: self.rate_limit_429,
            retry_after_secs: self.retry_after_secs,
            limit_per_second: self.limit_per_second,
            rate_limit_next: self.rate_limit_next,
            timeout_share: self.timeout_share,
            timeout_ms: self.timeout_ms,
            latency_ms: self.latency_ms,
            outage_until_ms: self.outage_until_ms.filter(|&t| t > 0),
            apply_then_drop: self.apply_then_drop,
            reject_keys: self.reject_keys.clone(),
            reject_record_keys: self.reject_record_keys.clone(),
            fail_records: self.fail_records.iter().cloned().collect(),
            hang_records: self.hang_records.clone(),
            hang_ms: self.hang_ms,
            // Rotated at run time through POST /control.
            case_tokens: Vec::new(),
            seed: self.seed,
        };
        if let Some(secs) = self.outage_secs {
            if !secs.is_finite() || secs < 0.0 {
                return Err("--outage-secs must be a non-negative number".into());
            }
            f.outage_for(Duration::from_secs_f64(secs.min(1e9)));
        }
        Ok(f)
    }
}

fn parse_fail_record(s: &str) -> Result<(String, u64), String> {
    let (key, version) = s
        .rsplit_once('=')
        .ok_or_else(|| "expected RECORD_KEY=VERSION".to_string())?;
    let version = version
        .trim()
        .parse()
        .map_err(|_| "VERSION must be a non-negative integer".to_string())?;
    Ok((key.to_string(), version))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let faults = match args.faults() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = ApiConfig {
        listen: args.listen,
        allow_docker_bridge: args.allow_docker_bridge,
        token: args.token.clone(),
        ledger: args.ledger.clone(),
        max_body_bytes: args.max_body_bytes,
        faults,
    };
    // Install the signal handlers before announcing the address, so a parent that reads the
    // line and signals at once never hits the default action.
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match ApiServer::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{}", server.addr);
        let _ = out.flush();
    }

    let reason = tokio::select! {
        r = signals.recv() => r,
        _ = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => "max-seconds reached",
    };
    tracing::info!(reason, "shutting down");
    let stats = server.stats();
    server.shutdown().await;
    eprintln!(
        "final stats: {}",
        serde_json::to_string(&stats).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupt",
            _ = self.terminate.recv() => "terminate",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn recv(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}
