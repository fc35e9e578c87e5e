//! The child: one measurement in a process of its own.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use casefeed::adapters::s3::S3Store;
use casefeed::contract::layout::snapshot_key;
use casefeed::ports::store::{ObjectStore, OpenSpec};
use serde::{Deserialize, Serialize};

use crate::local;

use super::baseline::child_baseline;
use super::cli::{ChildArgs, Tool};
use super::errors::{failed, io_ctx, BenchError};
use super::expected::Expected;
use super::helpers::check_keys;
use super::splitter::{check_casefeed, event, link_or_copy, report_of, splitter};
use super::store::{etag_of, FileStore, NullQueue};
use super::{BUCKET, FEED, FLOOR_BUF, KEY_COLUMN, NEXT_KEY, RESULT_MARK, S3_BASE_SNAPSHOT};

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ChildResult {
    pub(super) wall_s: f64,
    /// Peak resident set (VmHWM) in KiB.
    pub(super) hwm_kb: u64,
    /// Baseline set-up: the snapshot file (casefeed) or the next object's ETag (casefeed-s3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) made: Option<String>,
    /// casefeed: the run report's own timings (read state / diff and send / commit, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) phases: Option<String>,
}

fn pin_to_cpu(cpu: usize) -> Result<(), BenchError> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(failed(format!("cpu {cpu} is out of range")));
    }
    // SAFETY: `set` is a plain bit set owned by this frame; CPU_ZERO/CPU_SET only write
    // inside it and sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(failed(format!(
            "pinning to cpu {cpu}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// This process's peak resident set in KiB (`VmHWM`).
pub(super) fn vm_hwm_kb() -> Result<u64, BenchError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(io_ctx("reading /proc/self/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| failed("no VmHWM in /proc/self/status"))
}

fn find_newline(hay: &[u8]) -> Option<usize> {
    // SAFETY: the pointer and length come from a live slice; memchr reads at most `len`
    // bytes from it and returns null or a pointer into it.
    let p = unsafe { libc::memchr(hay.as_ptr().cast(), b'\n' as libc::c_int, hay.len()) };
    if p.is_null() {
        None
    } else {
        Some(p as usize - hay.as_ptr() as usize)
    }
}

/// Read a file in large chunks and xxh3 every line; returns (lines, combined hash).
pub fn floor_hash(path: &Path) -> io::Result<(u64, u64)> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; FLOOR_BUF];
    let mut have = 0usize;
    let mut lines = 0u64;
    let mut acc = 0u64;
    loop {
        if have == buf.len() {
            // one line longer than the buffer
            buf.resize(buf.len() * 2, 0);
        }
        let n = f.read(&mut buf[have..])?;
        if n == 0 {
            if have > 0 {
                acc = acc.wrapping_add(xxhash_rust::xxh3::xxh3_64(&buf[..have]));
                lines += 1;
            }
            return Ok((lines, acc));
        }
        let end = have + n;
        let mut pos = 0usize;
        while let Some(i) = find_newline(&buf[pos..end]) {
            acc = acc.wrapping_add(xxhash_rust::xxh3::xxh3_64(&buf[pos..pos + i]));
            lines += 1;
            pos += i + 1;
        }
        buf.copy_within(pos..end, 0);
        have = end - pos;
    }
}

fn key_index(path: &Path) -> Result<usize, BenchError> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| failed(format!("opening {}: {e}", path.display())))?;
    let h = r
        .byte_headers()
        .map_err(|e| failed(format!("reading the header of {}: {e}", path.display())))?;
    h.iter()
        .position(|c| c == KEY_COLUMN.as_bytes())
        .ok_or_else(|| failed(format!("{} has no {KEY_COLUMN} column", path.display())))
}

/// Run one measurement; prints `CASEFEED-BENCH-RESULT {json}` on success.
pub fn child(args: ChildArgs) -> Result<ExitCode, BenchError> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let wall = match args.tool {
        Tool::Floor => child_floor(&args)?,
        Tool::CsvDiff => child_csv_diff(&args)?,
        Tool::Casefeed | Tool::CasefeedS3 | Tool::CasefeedFull | Tool::CasefeedTs => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(io_ctx("starting the tokio runtime"))?;
            if args.baseline {
                rt.block_on(child_baseline(&args))?
            } else {
                let r = rt.block_on(child_casefeed(&args));
                let _ = std::fs::remove_dir_all(&args.work);
                r?
            }
        }
    };
    let res = serde_json::to_string(&wall).map_err(|e| failed(format!("encoding: {e}")))?;
    println!("{RESULT_MARK}{res}");
    Ok(ExitCode::SUCCESS)
}

fn child_floor(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    let t = Instant::now();
    let (lines, acc) =
        floor_hash(&args.next).map_err(io_ctx(format!("reading {}", args.next.display())))?;
    let wall_s = t.elapsed().as_secs_f64();
    let hwm_kb = vm_hwm_kb()?;
    std::hint::black_box(acc);
    let exp = Expected::load(&args.next)?;
    // quoted fields may hold line breaks: a file has at least a line per row and the header
    let want = exp.rows + exp.malformed + 1;
    if lines < want {
        return Err(BenchError::Check(format!(
            "floor: {lines} lines, expected at least {want} (header + rows)"
        )));
    }
    Ok(ChildResult {
        wall_s,
        hwm_kb,
        ..ChildResult::default()
    })
}

fn child_csv_diff(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    use csv_diff::csv::Csv;
    use csv_diff::csv_diff::CsvByteDiffLocalBuilder;
    use csv_diff::diff_row::DiffByteRecord;

    let ki = key_index(&args.prev)?;
    if key_index(&args.next)? != ki {
        return Err(failed(format!(
            "{KEY_COLUMN} is not at the same position in both files"
        )));
    }
    let open = |p: &Path| File::open(p).map_err(io_ctx(format!("opening {}", p.display())));
    let t = Instant::now();
    let differ = CsvByteDiffLocalBuilder::new()
        .primary_key_columns([ki])
        .build()
        .map_err(|e| failed(format!("csv-diff: {e}")))?;
    let left = open(&args.prev)?;
    let right = open(&args.next)?;
    let result = differ
        .diff(
            Csv::<File>::with_reader_seek(left),
            Csv::<File>::with_reader_seek(right),
        )
        .map_err(|e| failed(format!("csv-diff: {e}")))?;
    let wall_s = t.elapsed().as_secs_f64();
    let hwm_kb = vm_hwm_kb()?;

    let key =
        |r: &csv::ByteRecord| String::from_utf8_lossy(r.get(ki).unwrap_or_default()).into_owned();
    let (mut added, mut modified, mut deleted) = (HashSet::new(), HashSet::new(), HashSet::new());
    for d in result.iter() {
        match d {
            DiffByteRecord::Add(i) => added.insert(key(i.byte_record())),
            DiffByteRecord::Modify { add, .. } => modified.insert(key(add.byte_record())),
            DiffByteRecord::Delete(i) => deleted.insert(key(i.byte_record())),
        };
    }
    let exp = Expected::load(&args.next)?;
    check_keys("csv-diff added", &added, &exp.new).map_err(BenchError::Check)?;
    check_keys("csv-diff modified", &modified, &exp.changed).map_err(BenchError::Check)?;
    check_keys("csv-diff deleted", &deleted, &exp.removed).map_err(BenchError::Check)?;
    Ok(ChildResult {
        wall_s,
        hwm_kb,
        ..ChildResult::default()
    })
}

async fn child_casefeed(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    let queue = NullQueue::default();
    let (wall_s, report) = if args.tool == Tool::CasefeedS3 {
        let endpoint = args
            .endpoint
            .as_deref()
            .ok_or_else(|| failed("casefeed-s3 needs --endpoint"))?;
        let conf = local::sdk_config(endpoint).await;
        let store =
            S3Store::from_conf(&conf).with_ranged_reads(casefeed::adapters::s3::RangedReads {
                concurrency: args.s3_read_concurrency,
                ..casefeed::adapters::s3::RangedReads::default()
            });
        // every timed run starts from the same previous snapshot
        store
            .copy(
                BUCKET,
                S3_BASE_SNAPSHOT,
                &OpenSpec::default(),
                &snapshot_key(FEED),
            )
            .await
            .map_err(|e| failed(format!("restoring the baseline snapshot in moto: {e}")))?;
        let size = std::fs::metadata(&args.next).map(|m| m.len()).ok();
        let ev = event(NEXT_KEY, args.etag.clone(), size);
        let sp = splitter(store, queue.clone(), args.tool);
        let t = Instant::now();
        let out = sp
            .process(&ev)
            .await
            .map_err(|e| failed(format!("Splitter::process (S3): {e}")))?;
        (t.elapsed().as_secs_f64(), report_of(out)?)
    } else {
        let snapshot = args
            .snapshot
            .as_deref()
            .ok_or_else(|| failed("casefeed needs --snapshot"))?;
        let store = FileStore::new(&args.work);
        let to = |k: &str| store.path(BUCKET, k).map_err(|e| failed(e.to_string()));
        link_or_copy(snapshot, &to(&snapshot_key(FEED))?)?;
        let next_path = to(NEXT_KEY)?;
        link_or_copy(&args.next, &next_path)?;
        let meta = std::fs::metadata(&next_path)
            .map_err(io_ctx(format!("reading {}", next_path.display())))?;
        let ev = event(NEXT_KEY, Some(etag_of(&meta)), Some(meta.len()));
        let sp = splitter(store, queue.clone(), args.tool);
        let t = Instant::now();
        let out = sp
            .process(&ev)
            .await
            .map_err(|e| failed(format!("Splitter::process: {e}")))?;
        (t.elapsed().as_secs_f64(), report_of(out)?)
    };
    let hwm_kb = vm_hwm_kb()?;
    let exp = Expected::load(&args.next)?;
    check_casefeed(&report, queue.keys(), &exp)?;
    let t = &report.timings;
    Ok(ChildResult {
        wall_s,
        hwm_kb,
        made: None,
        phases: Some(format!(
            "read state {} ms, diff+send {} ms, commit {} ms; {} of {} rows known by their line",
            t.read_state_ms,
            t.diff_and_send_ms,
            t.commit_ms,
            report.counts.known,
            report.counts.read
        )),
    })
}
