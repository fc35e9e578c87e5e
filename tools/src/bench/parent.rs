//! The parent: starting the children, collecting their results and writing the report.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::local::{self, Moto};

use super::child::ChildResult;
use super::cli::{BenchArgs, Tool};
use super::data::{ensure_pair, warm, Pair};
use super::errors::{failed, io_ctx, BenchError};
use super::helpers::{human_rows, median, pass, render_table, thousands, TableRow};
use super::RESULT_MARK;

#[derive(Debug, Clone)]
struct Measured {
    tool: Tool,
    cores: String,
    pinned: bool,
    walls: Vec<f64>,
    hwm_kb: u64,
    /// Rows and bytes of the next file, when it is not the size's main pair.
    other_data: Option<(f64, f64)>,
}

struct Run<'a> {
    args: &'a BenchArgs,
    exe: PathBuf,
    scratch: PathBuf,
}

impl Run<'_> {
    /// The untimed baseline run on `pair`'s previous file: the snapshot every timed casefeed
    /// run on that pair starts from.
    fn baseline(&self, pair: &Pair, base: &[String], size: &str) -> Result<String, BenchError> {
        eprintln!("bench: {size} casefeed baseline run (untimed)");
        let mut b = base.to_vec();
        if let Some(w) = b.iter().position(|a| a == "--work") {
            b[w + 1] = pair.dir.join("work-baseline").display().to_string();
        }
        b.extend(["--tool".into(), "casefeed".into(), "--baseline".into()]);
        self.child(&b, &format!("{size} casefeed baseline run"))?
            .made
            .ok_or_else(|| failed("the baseline run named no snapshot"))
    }

    /// Start one child and wait for its result.
    fn child(&self, extra: &[String], what: &str) -> Result<ChildResult, BenchError> {
        std::fs::create_dir_all(&self.scratch)
            .map_err(io_ctx(format!("creating {}", self.scratch.display())))?;
        let out_path = self.scratch.join("child.stdout");
        let err_path = self.scratch.join("child.stderr");
        let out = File::create(&out_path).map_err(io_ctx("creating the child's stdout file"))?;
        let err = File::create(&err_path).map_err(io_ctx("creating the child's stderr file"))?;
        let mut ch = Command::new(&self.exe)
            .arg("bench-child")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_ctx(format!("starting {}", self.exe.display())))?;
        let limit = Duration::from_secs(self.args.child_timeout);
        let started = Instant::now();
        let status = loop {
            if let Some(s) = ch.try_wait().map_err(io_ctx("waiting for a child"))? {
                break s;
            }
            if started.elapsed() > limit {
                let _ = ch.kill();
                let _ = ch.wait();
                return Err(failed(format!(
                    "{what}: no result within {limit:?}; killed"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        if !status.success() {
            let msg = stderr.trim();
            let msg = msg.strip_prefix("Error: ").unwrap_or(msg);
            return Err(if let Some(m) = msg.strip_prefix("wrong answer: ") {
                BenchError::Check(format!("{what}: {m}"))
            } else {
                failed(format!("{what}: child failed ({status}): {msg}"))
            });
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(RESULT_MARK))
            .ok_or_else(|| failed(format!("{what}: the child printed no result")))?;
        serde_json::from_str(line).map_err(|e| failed(format!("{what}: bad result line: {e}")))
    }

    fn measure(
        &self,
        tool: Tool,
        pinned: bool,
        runs: usize,
        base: &[String],
        size: &str,
    ) -> Result<Measured, BenchError> {
        let cores = if pinned {
            "1".to_string()
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get().to_string())
                .unwrap_or_else(|_| "all".into())
        };
        let mut m = Measured {
            tool,
            cores: if tool == Tool::CasefeedS3 {
                format!("{cores} (+moto)")
            } else {
                cores
            },
            pinned,
            walls: Vec::new(),
            hwm_kb: 0,
            other_data: None,
        };
        for i in 0..runs {
            let mut extra = base.to_vec();
            extra.push("--tool".into());
            extra.push(
                tool.to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default(),
            );
            if pinned {
                extra.push("--cpu".into());
                extra.push(self.args.cpu.to_string());
            }
            let what = format!(
                "{size} {} ({} core{}, run {}/{runs})",
                tool.label(),
                m.cores,
                if pinned { "" } else { "s" },
                i + 1
            );
            let r = self.child(&extra, &what)?;
            eprintln!(
                "bench: {what}: {:.3} s, peak RSS {:.0} MB{}",
                r.wall_s,
                r.hwm_kb as f64 / 1024.0,
                r.phases
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            );
            m.walls.push(r.wall_s);
            m.hwm_kb = m.hwm_kb.max(r.hwm_kb);
        }
        Ok(m)
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let ram_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpu}, {cores} cores, {ram_gib:.1} GiB RAM, Linux {kernel}")
}

fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(local::root())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} (+ uncommitted changes)")
            } else {
                c
            }
        }
        None => "unknown".into(),
    }
}

struct SizeResult {
    rows: u64,
    markdown: String,
    target_lines: Vec<String>,
}

fn run_size(run: &Run<'_>, root: &Path, rows: u64) -> Result<SizeResult, BenchError> {
    let args = run.args;
    let size = human_rows(rows);
    let pair = ensure_pair(root, args, rows, false)?;
    let runs = args
        .runs
        .unwrap_or(if rows > 1_000_000 { 3 } else { 5 })
        .max(1);
    warm(&pair.prev)?;
    warm(&pair.next)?;
    let base = pair.child_args();
    let mut measured: Vec<Measured> = Vec::new();
    let tools: BTreeSet<Tool> = args.tools.iter().copied().collect();
    // the snapshot of `prev` every casefeed run on the main pair starts from
    let mut baseline: Option<String> = None;
    let mut ts_note: Option<String> = None;

    for &tool in &tools {
        match tool {
            Tool::Floor | Tool::CsvDiff => {
                for pinned in [true, false] {
                    measured.push(run.measure(tool, pinned, runs, &base, &size)?);
                }
            }
            Tool::Casefeed | Tool::CasefeedFull => {
                let snap = match &baseline {
                    Some(s) => s.clone(),
                    None => {
                        let s = run.baseline(&pair, &base, &size)?;
                        baseline = Some(s.clone());
                        s
                    }
                };
                let mut b = base.clone();
                b.push("--snapshot".into());
                b.push(snap);
                for pinned in [true, false] {
                    measured.push(run.measure(tool, pinned, runs, &b, &size)?);
                }
            }
            Tool::CasefeedTs => {
                let ts = ensure_pair(root, args, rows, true)?;
                warm(&ts.prev)?;
                warm(&ts.next)?;
                let base = ts.child_args();
                let snap = run.baseline(&ts, &base, &size)?;
                let mut b = base.clone();
                b.push("--snapshot".into());
                b.push(snap);
                for pinned in [true, false] {
                    let mut m = run.measure(tool, pinned, runs, &b, &size)?;
                    m.other_data = Some((ts.expected.rows as f64, ts.next_bytes as f64 / 1e6));
                    measured.push(m);
                }
                let _ = std::fs::remove_dir_all(ts.dir.join("work-baseline"));
                ts_note = Some(format!(
                    "\n`{}` runs on a pair of its own, generated with the export_timestamp column kept (next file {:.0} MB): the next file refreshes it in every row, and the feed ignores it. × floor and the speed-up vs csv-diff are left out for that row (another file).\n",
                    Tool::CasefeedTs.label(),
                    ts.next_bytes as f64 / 1e6
                ));
            }
            Tool::CasefeedS3 => {
                if !args.s3_sizes.contains(&rows) {
                    continue;
                }
                eprintln!("bench: {size} starting moto, uploading, baseline run (untimed)");
                let moto = Moto::start()?;
                let mut b = base.clone();
                b.extend([
                    "--endpoint".to_string(),
                    moto.endpoint.clone(),
                    "--tool".into(),
                    "casefeed-s3".into(),
                    "--baseline".into(),
                ]);
                let etag = run
                    .child(&b, &format!("{size} moto upload and baseline run"))?
                    .made
                    .ok_or_else(|| failed("the moto baseline run gave no ETag"))?;
                let mut b = base.clone();
                b.extend([
                    "--endpoint".to_string(),
                    moto.endpoint.clone(),
                    "--etag".into(),
                    etag,
                ]);
                // one GET stream, then the production default: 4 ranged GETs of 4 MiB
                for conc in [1usize, 4] {
                    let mut b = b.clone();
                    b.extend(["--s3-read-concurrency".to_string(), conc.to_string()]);
                    let mut m = run.measure(tool, true, runs, &b, &size)?;
                    m.cores = if conc == 1 {
                        format!("{}, one GET stream", m.cores)
                    } else {
                        format!("{}, {conc} ranged GETs of 4 MiB", m.cores)
                    };
                    measured.push(m);
                }
                drop(moto);
            }
        }
    }
    let _ = std::fs::remove_dir_all(pair.dir.join("work-baseline"));

    let find = |tool: Tool, pinned: bool| {
        measured
            .iter()
            .find(|m| m.tool == tool && m.pinned == pinned)
            .and_then(|m| median(&m.walls))
    };
    let rows_next = pair.expected.rows as f64;
    let mb = pair.next_bytes as f64 / 1e6;
    let mut table = Vec::new();
    for m in &measured {
        let Some(wall) = median(&m.walls) else {
            continue;
        };
        let (rows_m, mb_m) = m.other_data.unwrap_or((rows_next, mb));
        let same_file = m.other_data.is_none();
        table.push(TableRow {
            tool: m.tool.label().to_string(),
            cores: m.cores.clone(),
            wall_s: wall,
            rows_per_s: rows_m / wall,
            mb_per_s: mb_m / wall,
            rss_mb: m.hwm_kb as f64 / 1024.0,
            vs_floor: find(Tool::Floor, m.pinned)
                .filter(|_| same_file)
                .map(|f| wall / f),
            speedup_vs_csv_diff: find(Tool::CsvDiff, m.pinned)
                .filter(|_| same_file)
                .map(|c| c / wall),
        });
    }

    let e = &pair.expected;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### {size} rows\n\nprevious file {} rows ({:.0} MB), next file {} rows ({:.0} MB, shuffled): {} new, {} changed, {} removed; median of {runs} runs.\n",
        thousands(rows as f64),
        pair.prev_bytes as f64 / 1e6,
        thousands(rows_next),
        mb,
        thousands(e.new.len() as f64),
        thousands(e.changed.len() as f64),
        thousands(e.removed.len() as f64),
    );
    md.push_str(&render_table(&table));
    if let Some(n) = ts_note {
        md.push_str(&n);
    }

    let mut targets = Vec::new();
    let cf1 = find(Tool::Casefeed, true);
    let cf2 = find(Tool::Casefeed, false);
    if let (Some(cf), Some(cd)) = (cf1, find(Tool::CsvDiff, false)) {
        let x = cd / cf;
        targets.push(format!(
            "{}: {size}: casefeed (1 core) is {x:.2}x faster than csv-diff (all cores); target ≥ 3x",
            pass(x >= 3.0)
        ));
    }
    for (pinned, cf) in [(true, cf1), (false, cf2)] {
        if let (Some(cf), Some(fl)) = (cf, find(Tool::Floor, pinned)) {
            let x = cf / fl;
            targets.push(format!(
                "{}: {size}: casefeed ({}) takes {x:.2}x the floor's time; target ≤ 2x",
                pass(x <= 2.0),
                if pinned { "1 core" } else { "all cores" }
            ));
        }
    }
    let rss = measured
        .iter()
        .filter(|m| m.tool == Tool::Casefeed)
        .map(|m| m.hwm_kb)
        .max();
    if let Some(kb) = rss {
        let limit = if rows <= 500_000 {
            Some(100.0)
        } else if rows <= 5_000_000 {
            Some(500.0)
        } else {
            None
        };
        if let Some(limit) = limit {
            let mb = kb as f64 / 1024.0;
            targets.push(format!(
                "{}: {size}: casefeed peak RSS {mb:.0} MB; target < {limit:.0} MB",
                pass(mb < limit)
            ));
        }
    }
    Ok(SizeResult {
        rows,
        markdown: md,
        target_lines: targets,
    })
}

/// `casefeed bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode, BenchError> {
    if args.sizes.is_empty() {
        return Err(failed("--sizes: give at least one size"));
    }
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| local::root().join("bench-data"));
    std::fs::create_dir_all(&root).map_err(io_ctx(format!("creating {}", root.display())))?;
    let exe = std::env::current_exe().map_err(io_ctx("locating the casefeed binary"))?;
    let run = Run {
        args: &args,
        exe,
        scratch: root.join("child-logs"),
    };
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut results = Vec::new();
    for &rows in &sizes {
        results.push(run_size(&run, &root, rows)?);
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "## casefeed diff benchmark\n\n- machine: {}\n- commit: {}\n- date: {}\n- command: `casefeed bench {}`\n",
        machine(),
        commit(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::env::args().skip(2).collect::<Vec<_>>().join(" "),
    );
    md.push_str(
        "Wall time is the median of the runs; each run is a fresh child process (1 core = pinned \
         to one CPU, otherwise unpinned), peak RSS is the highest VmHWM of those children. \
         rows/s and MB/s are over the next file. × floor = tool time / floor time and speed-up \
         vs csv-diff = csv-diff time / tool time, both at the same core count.\n\n",
    );
    for r in &results {
        md.push_str(&r.markdown);
        md.push('\n');
    }
    md.push_str("### Targets\n\n");
    for r in &results {
        for t in &r.target_lines {
            let _ = writeln!(md, "- {t}");
        }
        if r.target_lines.is_empty() {
            let _ = writeln!(md, "- {}: not measured", human_rows(r.rows));
        }
    }
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).map_err(io_ctx(format!("writing {}", out.display())))?;
        eprintln!("bench: wrote {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&run.scratch);
    Ok(ExitCode::SUCCESS)
}
