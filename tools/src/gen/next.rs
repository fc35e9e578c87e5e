//! `gen next`: the next export, from nothing but the previous file.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use super::cli::NextOpts;
use super::columns::{KEY_COLUMN, NCOL, TS_COLUMN};
use super::errors::{csv_err, expected_path, invalid, io_err, GenError, Summary};
use super::expected::{write_expected, Expected};
use super::plan::{
    canonical_index, check_count, check_csv_path, fill_generated, generated_src, plan_columns,
    plan_malformed, remove_partial, Arena, Emitter, RowSink, Src,
};
use super::pools::RESULTS;
use super::row::{
    extra_value, format_timestamp, gen_row, next_timestamp, parse_index, parse_timestamp, row_key,
    Mix, TAG_MUTATE, TAG_SELECT,
};

fn open_prev(path: &Path) -> Result<csv::Reader<File>, GenError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    Ok(csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .buffer_capacity(1 << 20)
        .from_reader(file))
}

/// A previous-file record counts as a data row when it has every field and valid UTF-8.
pub(super) fn is_valid_row(rec: &csv::ByteRecord, ncols: usize) -> bool {
    rec.len() == ncols && rec.iter().all(|f| std::str::from_utf8(f).is_ok())
}

/// Mutate column `name` of a changed row so that it differs from its previous value.
fn mutate(
    seed: u64,
    key: u64,
    name: &str,
    ts: &[u8],
    rng: &mut Mix,
    canon: &mut [Vec<u8>],
    field: &mut Vec<u8>,
) {
    if name == "result" {
        let choices: Vec<&str> = RESULTS
            .iter()
            .copied()
            .filter(|r| r.as_bytes() != field.as_slice())
            .collect();
        let pick = rng.pick(&choices);
        field.clear();
        field.extend_from_slice(pick.as_bytes());
        return;
    }
    for _ in 0..16 {
        let version = rng.next_u64() | 1;
        let candidate: Vec<u8> = match canonical_index(name) {
            Some(ci) => {
                gen_row(seed, key, version, ts, canon);
                std::mem::take(&mut canon[ci])
            }
            None => {
                let mut v = Vec::new();
                extra_value(seed, key, xxh3_64(name.as_bytes()), version, &mut v);
                v
            }
        };
        if candidate != *field {
            *field = candidate;
            return;
        }
    }
    field.extend_from_slice(b" (amended)");
}

pub fn next(opts: &NextOpts) -> Result<Summary, GenError> {
    let r = next_inner(opts);
    if r.is_err() {
        remove_partial(&opts.out);
    }
    r
}

fn next_inner(opts: &NextOpts) -> Result<Summary, GenError> {
    let started = Instant::now();
    check_csv_path(&opts.prev, "previous file")?;
    check_csv_path(&opts.out, "output")?;
    check_count("--new", opts.new_rows)?;
    check_count("--malformed", opts.malformed)?;
    if let (Ok(a), Ok(b)) = (opts.prev.canonicalize(), opts.out.canonicalize()) {
        if a == b {
            return invalid("--out must not be the same file as --prev");
        }
    }
    let prev = &opts.prev;

    // Pass 1: header, valid row count, max record index, previous timestamp.
    let mut rdr = open_prev(prev)?;
    let header_raw = rdr.byte_headers().map_err(csv_err("read", prev))?.clone();
    if header_raw.is_empty() || header_raw.iter().all(|h| h.is_empty()) {
        return invalid(format!("{}: no header row", prev.display()));
    }
    let mut header = Vec::with_capacity(header_raw.len());
    for h in header_raw.iter() {
        match std::str::from_utf8(h) {
            Ok(s) => header.push(s.to_string()),
            Err(_) => {
                return invalid(format!("{}: header is not valid UTF-8", prev.display()));
            }
        }
    }
    {
        let mut seen = HashSet::new();
        for h in &header {
            if !seen.insert(h.as_str()) {
                return invalid(format!(
                    "{}: duplicate column {h:?} in header",
                    prev.display()
                ));
            }
        }
    }
    let ncols_prev = header.len();
    let Some(key_col) = header.iter().position(|h| h == KEY_COLUMN) else {
        return invalid(format!("{}: no record_id column", prev.display()));
    };
    let ts_col = header.iter().position(|h| h == TS_COLUMN);

    let mut rec = csv::ByteRecord::new();
    let mut prev_rows: u64 = 0;
    let mut skipped: u64 = 0;
    let mut max_index: u64 = 0;
    let mut prev_ts: Option<i64> = None;
    let mut prev_ts_raw: Vec<u8> = Vec::new();
    while rdr
        .read_byte_record(&mut rec)
        .map_err(csv_err("read", prev))?
    {
        if let Some(n) = rec.get(key_col).and_then(parse_index) {
            max_index = max_index.max(n);
        }
        if !is_valid_row(&rec, ncols_prev) {
            skipped += 1;
            continue;
        }
        if prev_rows == 0 {
            if let Some(v) = ts_col.and_then(|c| rec.get(c)) {
                prev_ts = parse_timestamp(v);
                prev_ts_raw = v.to_vec();
            }
        }
        prev_rows += 1;
    }
    drop(rdr);

    let picked = opts.removed.saturating_add(opts.changed);
    if picked > prev_rows {
        return invalid(format!(
            "--removed {} + --changed {} exceeds the {} data rows of {}",
            opts.removed,
            opts.changed,
            prev_rows,
            prev.display()
        ));
    }
    let seed = opts.seed.unwrap_or_else(|| {
        let mut b = Vec::with_capacity(16 + prev_ts_raw.len());
        b.extend_from_slice(&prev_rows.to_le_bytes());
        b.extend_from_slice(&max_index.to_le_bytes());
        b.extend_from_slice(&prev_ts_raw);
        xxh3_64(&b)
    });
    let ts_string = format_timestamp(next_timestamp(prev_ts, seed));
    let ts = ts_string.as_bytes();

    // Select removed and changed rows by position (Floyd's sampling, then a shuffle).
    let mut marks = vec![0u8; prev_rows as usize];
    if picked > 0 {
        let mut rng = Mix::new(seed, prev_rows, TAG_SELECT);
        let mut set = HashSet::with_capacity(picked as usize);
        let mut sample = Vec::with_capacity(picked as usize);
        for j in (prev_rows - picked)..prev_rows {
            let t = rng.below(j + 1);
            let v = if set.insert(t) {
                t
            } else {
                set.insert(j);
                j
            };
            sample.push(v);
        }
        rng.shuffle(&mut sample);
        for (k, pos) in sample.into_iter().enumerate() {
            marks[pos as usize] = if (k as u64) < opts.removed { 1 } else { 2 };
        }
    }

    // Output columns: the previous header's order, then drop / add / reorder.
    let columns = plan_columns(header.clone(), &opts.columns, seed)?;
    let carried: Vec<Src> = columns
        .iter()
        .map(|c| {
            if c == TS_COLUMN {
                Src::Ts
            } else if let Some(i) = header.iter().position(|h| h == c) {
                Src::Prev(i)
            } else {
                generated_src(c)
            }
        })
        .collect();
    let generated: Vec<Src> = columns.iter().map(|c| generated_src(c)).collect();
    let carried_needs_canon = carried.iter().any(|s| matches!(s, Src::Canon(_)));

    // Columns a change may touch: present before and after, compared (not the key or the
    // timestamp). Preferred: result (twice as likely), phone, street.
    let mutable: Vec<usize> = (0..columns.len())
        .filter(|&j| matches!(carried[j], Src::Prev(_)) && columns[j] != KEY_COLUMN)
        .collect();
    let mut preferred: Vec<usize> = Vec::new();
    for (name, weight) in [("result", 2), ("phone", 1), ("street", 1)] {
        if let Some(j) = mutable.iter().copied().find(|&j| columns[j] == name) {
            preferred.extend(std::iter::repeat_n(j, weight));
        }
    }
    let change_targets = if preferred.is_empty() {
        mutable
    } else {
        preferred
    };
    if opts.changed > 0 && change_targets.is_empty() {
        return invalid(
            "cannot change rows: no compared column is present in both the previous and the next file",
        );
    }

    let rows_total = prev_rows - opts.removed + opts.new_rows;
    if max_index > u64::MAX / 4 {
        return invalid(format!(
            "{}: record_id index too large to continue from",
            prev.display()
        ));
    }
    let first_new = max_index + 1;
    let first_malformed = first_new + opts.new_rows;
    let malformed = plan_malformed(
        opts.malformed,
        rows_total,
        first_malformed,
        seed,
        ts,
        &columns,
        &generated,
    )?;
    let emitter = Emitter::create(&opts.out, &columns, malformed)?;
    let mut sink = if opts.shuffle {
        RowSink::Shuffle(emitter, Arena::default())
    } else {
        RowSink::Direct(emitter)
    };

    // Pass 2: carry, change or remove each previous row.
    let mut rdr = open_prev(prev)?;
    let mut canon = vec![Vec::new(); NCOL];
    let mut out = vec![Vec::new(); columns.len()];
    let mut removed_ids = Vec::with_capacity(opts.removed as usize);
    let mut changed_ids = Vec::with_capacity(opts.changed as usize);
    let mut pos: usize = 0;
    while rdr
        .read_byte_record(&mut rec)
        .map_err(csv_err("read", prev))?
    {
        if !is_valid_row(&rec, ncols_prev) {
            continue;
        }
        let Some(&mark) = marks.get(pos) else {
            return invalid(format!(
                "{} changed while it was being read",
                prev.display()
            ));
        };
        pos += 1;
        let id = rec.get(key_col).unwrap_or_default();
        let id_str = String::from_utf8_lossy(id).into_owned();
        if mark == 1 {
            removed_ids.push(id_str);
            continue;
        }
        let key = row_key(id);
        if carried_needs_canon {
            gen_row(seed, key, 0, ts, &mut canon);
        }
        for (o, src) in out.iter_mut().zip(&carried) {
            o.clear();
            match *src {
                Src::Prev(i) => o.extend_from_slice(rec.get(i).unwrap_or_default()),
                Src::Canon(ci) => o.extend_from_slice(&canon[ci]),
                Src::Extra(h) => extra_value(seed, key, h, 0, o),
                Src::Ts => o.extend_from_slice(ts),
            }
        }
        if mark == 2 {
            let mut rng = Mix::new(seed, key, TAG_MUTATE);
            let j = rng.pick(&change_targets);
            mutate(
                seed,
                key,
                &columns[j],
                ts,
                &mut rng,
                &mut canon,
                &mut out[j],
            );
            changed_ids.push(id_str);
        }
        sink.push(&out)?;
    }
    if (pos as u64) != prev_rows {
        return invalid(format!(
            "{} changed while it was being read",
            prev.display()
        ));
    }

    for index in first_new..first_new + opts.new_rows {
        fill_generated(seed, index, ts, &generated, &mut canon, &mut out);
        sink.push(&out)?;
    }
    let (rows, malformed_lines) = sink.finish(seed, columns.len())?;
    let malformed = malformed_lines.len() as u64;
    let expected = expected_path(&opts.out);
    write_expected(
        &expected,
        Expected {
            rows,
            new: (opts.new_rows > 0).then(|| (first_new, first_new + opts.new_rows - 1)),
            changed: changed_ids,
            removed: removed_ids,
            malformed_lines,
            columns: &columns,
        },
    )?;
    Ok(Summary {
        rows,
        new: opts.new_rows,
        changed: opts.changed,
        removed: opts.removed,
        malformed,
        skipped_prev: skipped,
        columns: columns.len(),
        seed,
        out: opts.out.clone(),
        expected,
        elapsed: started.elapsed(),
    })
}
