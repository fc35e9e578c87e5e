//! `casefeed`: command-line tools for the casefeed pipeline.

use casefeed_tools::{
    audit, bench, bench_consumer, bench_ledger, demo, dlq, drill, explain, failures, gen, held,
    preview, reconcile, state, status,
};

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "casefeed", version, about = "casefeed command-line tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate synthetic lab-result CSV exports (deterministic, seeded).
    Gen(gen::GenArgs),
    /// Run the pipeline locally on sample data (moto + the release Lambda binaries).
    Demo(demo::DemoArgs),
    /// One screen: per feed the last run and held files; queue depths; the breaker.
    Status(status::StatusArgs),
    /// The newest run reports (of one feed or all), newest first.
    Runs(status::RunsArgs),
    /// Account for every row a run sent: applied, superseded, dead-lettered, pending or
    /// unaccounted (exit 1); and its rejected rows by line.
    Reconcile(reconcile::ReconcileArgs),
    /// One record's story: in the state or not, each run that changed it and the ledger's
    /// fate of each change, the version the API acknowledged, any dead letter.
    Explain(explain::ExplainArgs),
    /// Dry-run a feed on local files, without AWS: what the next export would send, hold
    /// (which guard) or reject (which lines), given the previous one as the feed's state.
    /// Exit 0: sent or nothing to send; 2: held or not applied; 1: an error.
    Diff(preview::DiffArgs),
    /// Check a feed configuration (feeds.toml) as the splitter validates it at start-up.
    Feeds(preview::FeedsArgs),
    /// The feed's state: the snapshot's header (source, rows, format, generation).
    State(state::StateArgs),
    /// List, show, replay or purge the dead-letter queue (AWS credentials and endpoint from
    /// the usual AWS environment; replay and purge write an audit record).
    Dlq(dlq::DlqArgs),
    /// List or retry the failed splitter invocations (the splitter-failures queue).
    Failures(failures::FailuresArgs),
    /// List the audit records of operator actions (replay, purge, approve, discard, retry),
    /// newest first.
    Audit(audit::AuditArgs),
    /// List the files a guard is holding (splitter environment: CASEFEED_CONFIG,
    /// WORK_QUEUE_URL, AWS credentials and endpoint).
    Held(held::HeldArgs),
    /// Release a held file: send exactly its new/changed rows (once in effect) and commit
    /// the feed's state (writes an audit record).
    Approve(held::DecideArgs),
    /// Drop a held file: nothing is sent, the state stays; a `discarded` run report remains
    /// (writes an audit record).
    Discard(held::DecideArgs),
    /// Benchmark the diff: casefeed vs csv-diff vs the read-and-hash floor (and via moto S3).
    Bench(bench::BenchArgs),
    /// What the consumer's ledger costs per message (calls, time) against moto, for one or
    /// more consumer binaries measured in one sitting.
    #[command(name = "bench-ledger")]
    BenchLedger(bench_ledger::BenchLedgerArgs),
    /// The backpressure drill: the local pipeline under a steady stream of exports while the
    /// API goes normal → slow → down → back → drain; samples every second into drill.csv and
    /// drill.png and checks the invariants (rate, in flight, no dead letters, each row once,
    /// drained).
    Drill(drill::DrillArgs),
    /// Consumer throughput against a backlog pre-loaded in the work queue, the API at 100 ms:
    /// under a rate limit (achieved ÷ limit) and without one (achieved ÷ ceiling/latency).
    #[command(name = "bench-consumer")]
    BenchConsumer(bench_consumer::BenchConsumerArgs),
    /// One benchmark measurement in a child process (started by `casefeed bench`).
    #[command(name = "bench-child", hide = true)]
    BenchChild(bench::ChildArgs),
}

/// An error for `main`: its `Debug` is the plain message, so the process prints
/// `Error: <message>` and exits with status 1.
struct CliError(Box<dyn std::error::Error + Send + Sync>);

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(Box::new(e))
    }
}

fn main() -> Result<ExitCode, CliError> {
    // `casefeed dlq list | head`: a closed stdout ends the process quietly, as for any Unix
    // tool, instead of a panic in `println!`
    // SAFETY: restores the default disposition of SIGPIPE before any thread is started
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // the splitter runs in process for `approve`, `discard` and `diff`: its EMF lines are
    // metrics only inside Lambda, here they would mix into the command's output
    casefeed::metrics::silence();
    let cli = Cli::parse();
    match cli.command {
        Command::Gen(args) => gen::run(args)?,
        Command::Demo(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(demo::run(args))?
        }
        Command::Dlq(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(dlq::run(args))?
        }
        Command::Status(args) => {
            tokio::runtime::Runtime::new()?.block_on(status::run_status(args))?
        }
        Command::Runs(args) => tokio::runtime::Runtime::new()?.block_on(status::run_runs(args))?,
        Command::Reconcile(args) => {
            tokio::runtime::Runtime::new()?.block_on(reconcile::run(args))?
        }
        Command::Diff(args) => return Ok(preview::run_diff(args)?),
        Command::Feeds(args) => preview::run_feeds(args)?,
        Command::Explain(args) => tokio::runtime::Runtime::new()?.block_on(explain::run(args))?,
        Command::State(args) => tokio::runtime::Runtime::new()?.block_on(state::run(args))?,
        Command::Failures(args) => tokio::runtime::Runtime::new()?.block_on(failures::run(args))?,
        Command::Audit(args) => tokio::runtime::Runtime::new()?.block_on(audit::run(args))?,
        Command::Held(args) => tokio::runtime::Runtime::new()?.block_on(held::list(args))?,
        Command::Approve(args) => tokio::runtime::Runtime::new()?.block_on(held::approve(args))?,
        Command::Discard(args) => tokio::runtime::Runtime::new()?.block_on(held::discard(args))?,
        Command::Bench(args) => return Ok(bench::run(args)?),
        Command::BenchLedger(args) => {
            tokio::runtime::Runtime::new()?.block_on(bench_ledger::run(args))?
        }
        Command::Drill(args) => tokio::runtime::Runtime::new()?.block_on(drill::run(args))?,
        Command::BenchConsumer(args) => {
            tokio::runtime::Runtime::new()?.block_on(bench_consumer::run(args))?
        }
        Command::BenchChild(args) => return Ok(bench::child(args)?),
    }
    Ok(ExitCode::SUCCESS)
}
