//! Output planning: the column layout, malformed rows, the CSV emitter and the shuffle arena.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::cli::ColumnOpts;
use super::columns::{COLUMNS, KEY_COLUMN, NCOL, TS_COLUMN};
use super::errors::{csv_err, invalid, io_err, GenError};
use super::row::{extra_value, gen_row, Mix, TAG_MALFORMED, TAG_REORDER, TAG_SHUFFLE};

/// Upper bound for --rows, --new and --malformed (keeps every index arithmetic in range).
const MAX_ROWS: u64 = 1_000_000_000;

pub(super) fn check_count(flag: &str, n: u64) -> Result<(), GenError> {
    if n > MAX_ROWS {
        return invalid(format!("{flag} {n} is too large (at most {MAX_ROWS})"));
    }
    Ok(())
}

pub(super) fn check_csv_path(path: &Path, what: &str) -> Result<(), GenError> {
    let s = path.to_string_lossy();
    if s.ends_with(".gz") {
        return invalid(format!(
            "{what} {}: gzip is not supported by `casefeed gen`; use a plain .csv path (compress it separately, e.g. `gzip -k`)",
            path.display()
        ));
    }
    Ok(())
}

/// Apply drop / add / reorder to a base column list.
pub(super) fn plan_columns(
    base: Vec<String>,
    opts: &ColumnOpts,
    seed: u64,
) -> Result<Vec<String>, GenError> {
    for d in &opts.drop {
        if d == KEY_COLUMN {
            return invalid("cannot drop column record_id: it is the key column");
        }
        if !base.contains(d) {
            return invalid(format!("cannot drop column {d:?}: no such column"));
        }
        if opts.add.contains(d) {
            return invalid(format!("column {d:?} is both added and dropped"));
        }
    }
    let mut cols: Vec<String> = base
        .into_iter()
        .filter(|c| !opts.drop.contains(c))
        .collect();
    for a in &opts.add {
        if a.is_empty() {
            return invalid("cannot add a column with an empty name");
        }
        if cols.contains(a) {
            return invalid(format!("cannot add column {a:?}: it is already present"));
        }
        cols.push(a.clone());
    }
    if opts.reorder && cols.len() >= 2 {
        let before = cols.clone();
        Mix::new(seed, 0, TAG_REORDER).shuffle(&mut cols);
        if cols == before {
            cols.rotate_left(1);
        }
    }
    Ok(cols)
}

/// Where an output column's value comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Src {
    /// Field `i` of the previous file's record.
    Prev(usize),
    /// Canonical column `i` of a generated row.
    Canon(usize),
    /// An added column: seeded value from the column name's hash.
    Extra(u64),
    /// The export timestamp of this file.
    Ts,
}

pub(super) fn canonical_index(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == name)
}

pub(super) fn generated_src(name: &str) -> Src {
    if name == TS_COLUMN {
        Src::Ts
    } else if let Some(ci) = canonical_index(name) {
        Src::Canon(ci)
    } else {
        Src::Extra(xxh3_64(name.as_bytes()))
    }
}

/// Fill `out` for a generated row (`new` or malformed) with index `index`.
pub(super) fn fill_generated(
    seed: u64,
    index: u64,
    ts: &[u8],
    srcs: &[Src],
    canon: &mut [Vec<u8>],
    out: &mut [Vec<u8>],
) {
    gen_row(seed, index, 0, ts, canon);
    for (o, src) in out.iter_mut().zip(srcs) {
        match *src {
            Src::Canon(ci) => {
                o.clear();
                o.extend_from_slice(&canon[ci]);
            }
            Src::Extra(h) => extra_value(seed, index, h, 0, o),
            Src::Ts => {
                o.clear();
                o.extend_from_slice(ts);
            }
            Src::Prev(_) => o.clear(),
        }
    }
}

/// Malformed rows to insert: (data position to insert before, fields), by position.
type Malformed = Vec<(u64, Vec<Vec<u8>>)>;

/// Plan the malformed rows. Alternately ragged (too few
/// fields, record_id kept) and invalid UTF-8 (0xFF 0xFE in a name).
pub(super) fn plan_malformed(
    n: u64,
    rows: u64,
    first_index: u64,
    seed: u64,
    ts: &[u8],
    columns: &[String],
    srcs: &[Src],
) -> Result<Malformed, GenError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if columns.len() < 2 {
        return invalid(
            "--malformed needs at least 2 columns (a ragged row must have fewer fields)",
        );
    }
    let mut rng = Mix::new(seed, n, TAG_MALFORMED);
    let mut positions: Vec<u64> = (0..n).map(|_| rng.below(rows + 1)).collect();
    positions.sort_unstable();
    let key_col = columns.iter().position(|c| c == KEY_COLUMN);
    let utf8_col = ["first_name", "last_name"]
        .iter()
        .find_map(|n| columns.iter().position(|c| c == n))
        .or_else(|| columns.iter().position(|c| c != KEY_COLUMN))
        .unwrap_or(0);
    let keep = (columns.len() / 2).max(1);
    let mut canon = vec![Vec::new(); NCOL];
    let mut out = vec![Vec::new(); columns.len()];
    let mut planned = Vec::with_capacity(positions.len());
    for (k, pos) in positions.into_iter().enumerate() {
        let index = first_index + k as u64;
        fill_generated(seed, index, ts, srcs, &mut canon, &mut out);
        let fields: Vec<Vec<u8>> = if k % 2 == 0 {
            // Ragged: `keep` fields, always including record_id, in column order.
            let mut others = keep - usize::from(key_col.is_some());
            out.iter()
                .enumerate()
                .filter(|(j, _)| {
                    if Some(*j) == key_col {
                        true
                    } else if others > 0 {
                        others -= 1;
                        true
                    } else {
                        false
                    }
                })
                .map(|(_, f)| f.clone())
                .collect()
        } else {
            let mut v = out.clone();
            let mut bad = vec![0xFF, 0xFE];
            bad.extend_from_slice(&v[utf8_col]);
            v[utf8_col] = bad;
            v
        };
        planned.push((pos, fields));
    }
    Ok(planned)
}

/// Writes the CSV, inserting malformed rows at their positions and counting physical lines.
pub(super) struct Emitter {
    w: csv::Writer<BufWriter<File>>,
    /// The final path; rows go to `path` (`OUT.partial`) which is renamed on success and
    /// removed on failure.
    out: PathBuf,
    path: PathBuf,
    /// Physical lines written so far (header included).
    lines: u64,
    data_rows: u64,
    malformed: Malformed,
    next_malformed: usize,
    malformed_lines: Vec<u64>,
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

/// Remove a leftover `OUT.partial` after a failed run.
pub(super) fn remove_partial(out: &Path) {
    let _ = std::fs::remove_file(partial_path(out));
}

fn newlines(field: &[u8]) -> u64 {
    field.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Emitter {
    pub(super) fn create(
        path: &Path,
        columns: &[String],
        malformed: Malformed,
    ) -> Result<Emitter, GenError> {
        let partial = partial_path(path);
        let file = File::create(&partial).map_err(io_err("create", &partial))?;
        let w = csv::WriterBuilder::new()
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(1 << 16)
            .from_writer(BufWriter::with_capacity(1 << 20, file));
        let mut e = Emitter {
            w,
            out: path.to_path_buf(),
            path: partial,
            lines: 0,
            data_rows: 0,
            malformed,
            next_malformed: 0,
            malformed_lines: Vec::new(),
        };
        e.write(columns.iter().map(|c| c.as_bytes()))?;
        Ok(e)
    }

    fn write<'a, I>(&mut self, fields: I) -> Result<(), GenError>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        self.lines += 1 + fields.clone().map(newlines).sum::<u64>();
        self.w
            .write_record(fields)
            .map_err(csv_err("write", &self.path))
    }

    fn emit_malformed_upto(&mut self, pos: u64) -> Result<(), GenError> {
        while self.next_malformed < self.malformed.len()
            && self.malformed[self.next_malformed].0 <= pos
        {
            let fields = std::mem::take(&mut self.malformed[self.next_malformed].1);
            self.malformed_lines.push(self.lines + 1);
            self.write(fields.iter().map(|f| f.as_slice()))?;
            self.next_malformed += 1;
        }
        Ok(())
    }

    pub(super) fn data(&mut self, fields: &[Vec<u8>]) -> Result<(), GenError> {
        self.emit_malformed_upto(self.data_rows)?;
        self.write(fields.iter().map(|f| f.as_slice()))?;
        self.data_rows += 1;
        Ok(())
    }

    /// Returns (data rows, malformed line numbers).
    pub(super) fn finish(mut self) -> Result<(u64, Vec<u64>), GenError> {
        self.emit_malformed_upto(u64::MAX)?;
        let path = self.path.clone();
        let inner = self.w.into_inner().map_err(|e| GenError::Io {
            action: "write",
            path: path.clone(),
            source: io::Error::other(e.error().to_string()),
        })?;
        let file = inner.into_inner().map_err(|e| GenError::Io {
            action: "write",
            path: path.clone(),
            source: io::Error::other(e.error().to_string()),
        })?;
        drop(file);
        std::fs::rename(&path, &self.out).map_err(io_err("rename", &path))?;
        Ok((self.data_rows, self.malformed_lines))
    }
}

/// Rows kept in memory for `--shuffle`: fields stored as varint length + bytes.
#[derive(Default)]
pub(super) struct Arena {
    data: Vec<u8>,
    starts: Vec<u64>,
}

impl Arena {
    pub(super) fn push(&mut self, fields: &[Vec<u8>]) {
        self.starts.push(self.data.len() as u64);
        for f in fields {
            let mut n = f.len() as u64;
            loop {
                let b = (n & 0x7F) as u8;
                n >>= 7;
                if n == 0 {
                    self.data.push(b);
                    break;
                }
                self.data.push(b | 0x80);
            }
            self.data.extend_from_slice(f);
        }
    }

    pub(super) fn load(&self, i: usize, out: &mut [Vec<u8>]) {
        let mut at = self.starts[i] as usize;
        for o in out.iter_mut() {
            let mut n = 0usize;
            let mut shift = 0;
            loop {
                let b = self.data[at];
                at += 1;
                n |= usize::from(b & 0x7F) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            o.clear();
            o.extend_from_slice(&self.data[at..at + n]);
            at += n;
        }
    }
}

/// Either streams rows straight to the emitter or collects them for a shuffle.
pub(super) enum RowSink {
    Direct(Emitter),
    Shuffle(Emitter, Arena),
}

impl RowSink {
    pub(super) fn push(&mut self, fields: &[Vec<u8>]) -> Result<(), GenError> {
        match self {
            RowSink::Direct(e) => e.data(fields),
            RowSink::Shuffle(_, a) => {
                a.push(fields);
                Ok(())
            }
        }
    }

    pub(super) fn finish(self, seed: u64, ncols: usize) -> Result<(u64, Vec<u64>), GenError> {
        match self {
            RowSink::Direct(e) => e.finish(),
            RowSink::Shuffle(mut e, arena) => {
                let mut order: Vec<usize> = (0..arena.starts.len()).collect();
                Mix::new(seed, order.len() as u64, TAG_SHUFFLE).shuffle(&mut order);
                let mut buf = vec![Vec::new(); ncols];
                for i in order {
                    arena.load(i, &mut buf);
                    e.data(&buf)?;
                }
                e.finish()
            }
        }
    }
}
