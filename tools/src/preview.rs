//! `casefeed diff` and `casefeed feeds check`: dry-run a new or changed feed on local files,
//! without AWS.
//!
//! * `diff --feed F --config FEEDS.toml [PREVIOUS.csv] NEXT.csv` — the real splitter in
//!   memory ([`casefeed::splitter::preview`]): the previous export becomes the feed's state
//!   (a baseline: nothing sent), then the next one is processed. It prints what would be
//!   sent (record keys by change), held (which guard, why) or rejected (which lines, why),
//!   with the counts and the guards' verdicts. Exit 0 when the file would be sent or has
//!   nothing to send, 2 when it would not go through (held by a guard, or refused as a
//!   whole), 1 on an error (unreadable file, bad configuration).
//! * `feeds check FEEDS.toml` — the configuration parsed and validated by the code the
//!   splitter runs at start-up ([`Config::from_toml`]), each feed's settings printed.
//!
//! Never a row value: record keys (identifiers), counts, column names and reasons only.

use crate::ops::{print_json, OutputError};
use casefeed::config::{Config, ConfigError, FeedConfig, FirstFile, Removals};
use casefeed::contract::report::{Counts, RunReport};
use casefeed::contract::source::ExportOrder;
use casefeed::splitter::preview::{preview, Changes, Preview, PreviewError, Verdict};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The feed (its `name` in the configuration).
    #[arg(long)]
    pub feed: String,
    /// The feed configuration (`feeds.toml`).
    #[arg(long, value_name = "FEEDS.toml")]
    pub config: PathBuf,
    /// `[PREVIOUS.csv] NEXT.csv`: the export the feed's state comes from (optional: without
    /// it the next file is the feed's first) and the next export. Plain or gzip.
    #[arg(value_name = "FILE", num_args = 1..=2, required = true)]
    pub files: Vec<PathBuf>,
    /// At most this many record keys per change in the readable output (JSON has all).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// One JSON document on stdout, with every record key.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct FeedsArgs {
    #[command(subcommand)]
    pub command: FeedsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum FeedsCommand {
    /// Parse and validate a feed configuration as the splitter does at start-up; print each
    /// feed's settings (exit 1 with the error otherwise).
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The feed configuration (`feeds.toml`).
    #[arg(value_name = "FEEDS.toml")]
    pub config: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewCliError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Preview(#[from] PreviewError),
    #[error("name the next export (and, before it, the previous one)")]
    NoFile,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, PreviewCliError> {
    std::fs::read(path).map_err(|source| PreviewCliError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The configuration at `path`, validated as the splitter validates it.
pub fn load_config(path: &Path) -> Result<Config, PreviewCliError> {
    let bytes = read("the feed configuration", path)?;
    let text = String::from_utf8(bytes).map_err(|e| PreviewCliError::Config {
        path: path.to_path_buf(),
        source: ConfigError::Toml(format!("not UTF-8: {e}")),
    })?;
    Config::from_toml(&text).map_err(|source| PreviewCliError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// The exit status of a preview: 0 sent or nothing to send, 2 would not go through.
pub fn exit_code(p: &Preview) -> ExitCode {
    match p.verdict {
        Verdict::Send { .. } | Verdict::NothingToSend { .. } => ExitCode::SUCCESS,
        Verdict::Held { .. } | Verdict::NotApplied { .. } | Verdict::PreviousNotUsable { .. } => {
            ExitCode::from(2)
        }
    }
}

/// `casefeed diff`. Synchronous: it starts its own runtime. The splitter's metric lines are
/// off in the CLI (`main` silences them).
pub fn run_diff(args: DiffArgs) -> Result<ExitCode, PreviewCliError> {
    let config = load_config(&args.config)?;
    // clap gives one or two files: `[PREVIOUS] NEXT`
    let (next, previous) = args.files.split_last().ok_or(PreviewCliError::NoFile)?;
    let previous = match previous.first() {
        Some(p) => Some(read("the previous export", p)?),
        None => None,
    };
    let next = read("the next export", next)?;
    let rt = tokio::runtime::Runtime::new().map_err(PreviewCliError::Runtime)?;
    let p = rt.block_on(preview(&config, &args.feed, previous, next))?;
    if args.json {
        print_json(&p)?;
    } else {
        print!("{}", render(&p, args.limit));
    }
    Ok(exit_code(&p))
}

fn sent_counts(c: &Changes) -> String {
    let (n, ch, r) = (
        c.sent_keys("new").len(),
        c.sent_keys("changed").len(),
        c.sent_keys("removed").len(),
    );
    let mut s = format!("new {n}, changed {ch}");
    if r > 0 {
        s.push_str(&format!(", removed {r}"));
    }
    s
}

fn counts_line(c: &Counts) -> String {
    format!(
        "rows {}  new {}  changed {}  removed {}  unchanged {}  duplicate {}  rejected {}",
        c.read, c.new, c.changed, c.removed, c.unchanged, c.duplicate, c.rejected
    )
}

fn keys_block(out: &mut String, title: &str, keys: &[&str], limit: usize) {
    if keys.is_empty() {
        return;
    }
    out.push_str(&format!("{title} ({}):\n", keys.len()));
    for k in keys.iter().take(limit) {
        out.push_str(&format!("  {k}\n"));
    }
    if keys.len() > limit {
        out.push_str(&format!("  … and {} more\n", keys.len() - limit));
    }
}

fn changes_block(out: &mut String, c: &Changes, sends_removals: bool, limit: usize) {
    keys_block(out, "new", &c.sent_keys("new"), limit);
    keys_block(out, "changed", &c.sent_keys("changed"), limit);
    let removed: Vec<&str> = c.removed.iter().map(String::as_str).collect();
    let title = if sends_removals {
        "removed (sent as tombstones)"
    } else {
        "removed (listed, not sent)"
    };
    keys_block(out, title, &removed, limit);
}

fn report_block(out: &mut String, label: &str, r: &RunReport) {
    out.push_str(&format!(
        "{label}: {}  ({})\n",
        counts_line(&r.counts),
        r.status.as_str()
    ));
    if !r.schema.added.is_empty() {
        out.push_str(&format!("  columns added: {}\n", r.schema.added.join(", ")));
    }
    if !r.schema.removed.is_empty() {
        out.push_str(&format!(
            "  compared columns missing: {}\n",
            r.schema.removed.join(", ")
        ));
    }
}

/// The readable answer of `casefeed diff` (at most `limit` record keys per change).
pub fn render(p: &Preview, limit: usize) -> String {
    let mut out = String::new();
    let headline = match &p.verdict {
        Verdict::Send { messages } => {
            format!("would send {messages} message(s) ({})", sent_counts(&p.changes))
        }
        Verdict::NothingToSend { status } => match status.as_str() {
            "baseline" => "nothing to send: the feed's first file only sets the state (first_file = \"baseline\")".to_string(),
            s => format!("nothing to send ({s}): no new or changed rows"),
        },
        Verdict::Held { guards, reason } => {
            let names: Vec<&str> = guards.iter().map(|g| g.as_str()).collect();
            format!(
                "would be HELD by the {} guard: {reason}",
                names.join(" and ")
            )
        }
        Verdict::NotApplied { status, reason } => {
            format!("would NOT be applied ({}): {reason}", status.as_str())
        }
        Verdict::PreviousNotUsable { status, reason } => format!(
            "the previous file would not become the feed's state ({}): {reason}; the next file was not run",
            status.as_str()
        ),
    };
    out.push_str(&format!("feed {}: {headline}\n", p.feed));
    if let Some(r) = &p.previous {
        report_block(&mut out, "previous", r);
        for x in &p.previous_rejected {
            out.push_str(&format!("  rejected line {}: {}\n", x.line, x.reason));
        }
    }
    let Some(next) = &p.next else {
        return out;
    };
    report_block(&mut out, "next", next);
    if !next.guards.is_empty() {
        out.push_str("guards:\n");
        for g in &next.guards {
            let verdict = if g.tripped { "TRIPPED" } else { "ok" };
            out.push_str(&format!(
                "  {:<7} {:<8} {}\n",
                g.guard.as_str(),
                verdict,
                g.detail
            ));
        }
    }
    let sends_removals = p.sends_removals;
    changes_block(&mut out, &p.changes, sends_removals, limit);
    if !p.rejected.is_empty() {
        out.push_str(&format!("rejected lines ({}):\n", p.rejected.len()));
        for x in p.rejected.iter().take(limit) {
            out.push_str(&format!("  line {}: {}\n", x.line, x.reason));
        }
        if p.rejected.len() > limit {
            out.push_str(&format!("  … and {} more\n", p.rejected.len() - limit));
        }
    }
    if let Some(a) = &p.if_approved {
        out.push_str(&format!(
            "if approved (`casefeed approve`), it would send {} message(s) ({}):\n",
            a.report.counts.sent,
            sent_counts(&a.changes)
        ));
        let mut inner = String::new();
        changes_block(&mut inner, &a.changes, sends_removals, limit);
        for line in inner.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// One feed as `feeds check` shows it.
#[derive(Debug, Serialize)]
pub struct FeedSummary {
    pub name: String,
    pub incoming_prefix: String,
    pub key_columns: Vec<String>,
    pub ignore_columns: Vec<String>,
    pub required_columns: Vec<String>,
    pub first_file: FirstFile,
    pub removed: Removals,
    pub order: String,
    pub trim_keys: bool,
    pub max_row_bytes: usize,
    pub max_columns: usize,
    pub max_inflated_bytes: u64,
    pub retry_window_secs: u64,
    pub guards: casefeed::config::Guards,
}

/// `feeds check`'s JSON document.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub config: String,
    pub valid: bool,
    pub feeds: Vec<FeedSummary>,
}

fn order_str(o: &ExportOrder) -> String {
    match o {
        ExportOrder::Upload => "upload".into(),
        ExportOrder::Key => "key".into(),
        ExportOrder::Metadata(name) => format!("metadata (x-amz-meta-{name})"),
    }
}

pub fn summary(f: &FeedConfig) -> FeedSummary {
    FeedSummary {
        name: f.name.clone(),
        incoming_prefix: format!(
            "{}{}/",
            casefeed::contract::layout::INCOMING_PREFIX,
            f.prefix
        ),
        key_columns: f.key_columns.clone(),
        ignore_columns: f.ignore_columns.clone(),
        required_columns: f.required_columns.clone(),
        first_file: f.first_file,
        removed: f.removed,
        order: order_str(&f.order),
        trim_keys: f.trim_keys,
        max_row_bytes: f.max_row_bytes,
        max_columns: f.max_columns,
        max_inflated_bytes: f.max_inflated_bytes,
        retry_window_secs: f.retry_window_secs,
        guards: f.guards,
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// The readable answer of `casefeed feeds check`.
pub fn render_check(c: &CheckReport) -> String {
    let mut out = format!("{}: valid, {} feed(s)\n", c.config, c.feeds.len());
    for f in &c.feeds {
        let g = &f.guards;
        let first = match f.first_file {
            FirstFile::Baseline => "baseline (only sets the state)",
            FirstFile::Send => "send (every row as new)",
        };
        let removed = match f.removed {
            Removals::Count => "count (listed, not sent)",
            Removals::Send => "send (a tombstone per removed record)",
        };
        out.push_str(&format!(
            "\n{}\n  incoming:         {}\n  key columns:      {}\n  ignored columns:  {}\n  required columns: {}\n  first file:       {first}\n  removals:         {removed}\n  order:            {}\n  trim keys:        {}\n  guards:           flood > {} new+changed rows, or > {:.2}% of the previous rows; shrink > {:.2}% of the previous rows missing; share guards only above {} rows; objects over {} bytes rejected\n  limits:           rows up to {} bytes, {} columns, gzip up to {} bytes inflated; retry window {} s\n",
            f.name,
            f.incoming_prefix,
            list(&f.key_columns),
            list(&f.ignore_columns),
            list(&f.required_columns),
            f.order,
            f.trim_keys,
            g.max_changes,
            g.max_change_share * 100.0,
            g.max_removed_share * 100.0,
            g.guard_floor,
            g.max_object_bytes,
            f.max_row_bytes,
            f.max_columns,
            f.max_inflated_bytes,
            f.retry_window_secs,
        ));
    }
    out
}

/// `casefeed feeds check`.
pub fn run_feeds(args: FeedsArgs) -> Result<(), PreviewCliError> {
    match args.command {
        FeedsCommand::Check(a) => {
            let config = load_config(&a.config)?;
            let report = CheckReport {
                config: a.config.display().to_string(),
                valid: true,
                feeds: config.feeds.iter().map(summary).collect(),
            };
            if a.json {
                print_json(&report)?;
            } else {
                print!("{}", render_check(&report));
            }
            Ok(())
        }
    }
}
