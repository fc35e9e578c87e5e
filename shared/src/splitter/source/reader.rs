//! The row reader: a validated header, then one row at a time — split where it lies when the
//! line is plain, through `csv-core` otherwise, or known by its line print — with bounded
//! memory for oversized records.

use super::line_print::{line_print, PrintScratch};
use super::open::io_error;
use super::record::{is_blank_key, split_line, Record};
use super::{FileRejection, ReadError, Rejected};
use crate::splitter::state::KnownLines;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

/// Reads rows with a validated header.
///
/// Most lines of an export are plain: no quote and no carriage return except before the line
/// feed. Those are split on commas where they lie in the read buffer (SIMD search, one copy);
/// any other record — quoted fields, line breaks inside quotes, a lone `\r` — goes through
/// `csv-core`'s state machine, so both paths give exactly what the CSV rules (RFC 4180)
/// give. Physical line numbers count every line feed, inside quotes too. A record longer
/// than the limit is consumed with bounded memory and reported, its leading fields kept so
/// its key can still be read.
pub struct RowReader<R: Read> {
    src: R,
    buf: Vec<u8>,
    /// Next unread byte and end of the data in `buf`.
    pos: usize,
    end: usize,
    eof: bool,
    /// Physical line (1-based) of `buf[pos]`.
    line: u64,
    core: csv_core::Reader,
    header: Vec<String>,
    max_row_bytes: usize,
    key_idx: Vec<usize>,
    /// Bytes kept of a record longer than the limit.
    keep_bytes: usize,
    scratch: Vec<u8>,
    scratch_ends: Vec<usize>,
    /// Field ends as `csv-core` writes them.
    core_ends: Vec<usize>,
    /// Comma positions of the current line.
    commas: Vec<u32>,
    /// The previous file's lines, when their hashes are valid for this file.
    known: Option<Arc<KnownLines>>,
    /// File positions of the columns a line's hash leaves out (the feed's ignored columns).
    line_ignored: Vec<usize>,
    print_scratch: PrintScratch,
    /// Plain lines found ahead in `buf` and looked up in `known` together (see
    /// [`RowReader::scan_ahead`]); `ahead[next_ahead..]` are not consumed yet. Emptied
    /// whenever `buf` moves or a record is read any other way.
    ahead: Vec<Ahead>,
    next_ahead: usize,
    ahead_hashes: Vec<u64>,
    ahead_found: Vec<Option<u32>>,
}

/// A plain line found ahead: where it starts in the buffer, its length without and with its
/// terminator, its hash, and the snapshot row that has it.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    start: usize,
    len: usize,
    consumed: usize,
    hash: u64,
    known: Option<u32>,
}

/// Lines looked up together (enough loads in flight to hide memory latency).
const AHEAD: usize = 64;

/// Bytes asked of the source per read.
const READ_CHUNK: usize = 1 << 20;

/// One outcome of [`RowReader::next_row`].
pub enum Row<'a> {
    /// A usable row: UTF-8, as many fields as the header, within the size limit, its key
    /// values neither empty nor only whitespace.
    Ok {
        /// The 1-based physical line where the row starts.
        line: u64,
        /// Its fields.
        record: &'a Record,
    },
    /// A line identical to the line of snapshot position `pos` (see
    /// [`RowReader::set_known`]); not split, the record is untouched.
    Known {
        /// The 1-based physical line.
        line: u64,
        /// The snapshot row (by position) whose line it is.
        pos: u32,
    },
    /// A row that cannot be used; `record` is what was read (its key may still be readable).
    Rejected {
        /// The line and reason, for the rejects report.
        rejected: Rejected,
        /// What was read of the row.
        record: &'a Record,
    },
}

/// What [`RowReader::read_record`] found.
pub(super) enum Read1 {
    End,
    /// A record starting on `line`; `size` when it was longer than the limit (then only its
    /// leading fields are kept).
    Record {
        line: u64,
        oversized: Option<usize>,
    },
    /// A plain line on `line` identical to the line of snapshot position `pos`.
    Known {
        line: u64,
        pos: u32,
    },
}

impl<R: Read> RowReader<R> {
    /// Read and validate the header. `key_columns` must be present (checked by the caller via
    /// `required`); their values must be neither empty nor only whitespace in every row.
    pub fn new(
        inner: R,
        required: &[String],
        key_columns: &[String],
        max_columns: usize,
        max_row_bytes: usize,
    ) -> Result<Self, ReadError> {
        let mut r = RowReader {
            src: inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            eof: false,
            line: 1,
            core: csv_core::Reader::new(),
            header: Vec::new(),
            // the header may be longer than a row: it has every column's name
            max_row_bytes: max_row_bytes.max(1 << 20),
            key_idx: Vec::new(),
            keep_bytes: 0,
            scratch: Vec::new(),
            scratch_ends: Vec::new(),
            core_ends: Vec::new(),
            commas: Vec::new(),
            known: None,
            line_ignored: Vec::new(),
            print_scratch: PrintScratch::default(),
            ahead: Vec::with_capacity(AHEAD),
            next_ahead: 0,
            ahead_hashes: Vec::with_capacity(AHEAD),
            ahead_found: Vec::with_capacity(AHEAD),
        };
        r.keep_bytes = r.max_row_bytes.saturating_add(1);
        let mut rec = Record::new();
        let (got, oversized) = match r.read_record(&mut rec)? {
            Read1::End => (false, None),
            Read1::Record { oversized, .. } => (true, oversized),
            Read1::Known { .. } => (true, None),
        };
        if !got || (rec.len() == 1 && rec[0].is_empty()) {
            return Err(FileRejection::Empty.into());
        }
        if let Some(size) = oversized {
            return Err(FileRejection::HeaderTooLong {
                size,
                limit: r.max_row_bytes,
            }
            .into());
        }
        if rec.len() > max_columns {
            return Err(FileRejection::TooManyColumns {
                found: rec.len(),
                limit: max_columns,
            }
            .into());
        }
        // one pass over the names, each looked up in a table of those before it: a header
        // of 100,000 columns costs 100,000 lookups, not 5 billion comparisons
        let mut names: Vec<&str> = Vec::with_capacity(rec.len());
        let mut positions: HashMap<&str, usize> = HashMap::with_capacity(rec.len());
        for (i, f) in rec.iter().enumerate() {
            let name = std::str::from_utf8(f).map_err(|_| FileRejection::HeaderEncoding)?;
            let name = name.trim();
            if name.is_empty() {
                return Err(FileRejection::EmptyColumnName(i + 1).into());
            }
            if let Some(&first) = positions.get(name) {
                return Err(FileRejection::DuplicateColumn(first + 1, i + 1).into());
            }
            positions.insert(name, i);
            names.push(name);
        }
        let missing: Vec<String> = required
            .iter()
            .filter(|r| !positions.contains_key(r.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(FileRejection::MissingRequired(missing).into());
        }
        let key_idx = key_columns
            .iter()
            .map(|k| positions.get(k.as_str()).copied())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                FileRejection::MissingRequired(
                    key_columns
                        .iter()
                        .filter(|k| !positions.contains_key(k.as_str()))
                        .cloned()
                        .collect(),
                )
            })?;
        let header: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        r.header = header;
        r.key_idx = key_idx;
        r.max_row_bytes = max_row_bytes;
        r.keep_bytes = max_row_bytes.saturating_add(1);
        Ok(r)
    }

    /// The file's column names, in file order (trimmed).
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// From now on, a plain line whose hash the previous file's snapshot has is returned as
    /// [`Row::Known`] without being split or checked: it is byte for byte a row that was
    /// accepted before. Only for a snapshot whose line hashes are valid for this file (same
    /// [`crate::splitter::state::line_context`]).
    pub fn set_known(&mut self, known: Option<Arc<KnownLines>>) {
        self.known = known;
        self.clear_ahead();
    }

    /// Leave these columns' values out of each line's hash (the feed's ignored columns, such
    /// as an export timestamp that changes in every row of every file): a row then is known
    /// by its line when everything else is the same bytes.
    pub fn set_line_ignored(&mut self, columns: &[String]) {
        // one pass over the header (no search of it per column)
        let ignored: HashSet<&str> = columns.iter().map(String::as_str).collect();
        self.line_ignored = self
            .header
            .iter()
            .enumerate()
            .filter(|&(i, h)| ignored.contains(h.as_str()) && !self.key_idx.contains(&i))
            .map(|(i, _)| i)
            .collect();
        self.clear_ahead();
    }

    fn clear_ahead(&mut self) {
        self.ahead.clear();
        self.next_ahead = 0;
    }

    /// Find up to [`AHEAD`] plain lines from `pos` (each ended by `\n` or `\r\n` inside the
    /// buffer, not blank, not over the row limit), hash them and look them up together. A
    /// line that turns out to open a multi-line record makes the rest stale: reading it
    /// another way empties the list.
    fn scan_ahead(&mut self) {
        self.clear_ahead();
        let Some(known) = self.known.as_ref() else {
            return;
        };
        let mut p = self.pos;
        self.ahead_hashes.clear();
        while self.ahead.len() < AHEAD {
            let avail = &self.buf[p..self.end];
            let Some(i) = memchr::memchr2(b'\n', b'\r', avail) else {
                break;
            };
            if i == 0 || i > self.max_row_bytes {
                break;
            }
            let consumed = if avail[i] == b'\n' {
                i + 1
            } else if avail.get(i + 1) == Some(&b'\n') {
                i + 2
            } else {
                break;
            };
            let hash = line_print(
                &avail[..i],
                &self.line_ignored,
                self.header.len(),
                self.max_row_bytes,
                &mut self.print_scratch,
            );
            self.ahead.push(Ahead {
                start: p,
                len: i,
                consumed,
                hash,
                known: None,
            });
            self.ahead_hashes.push(hash);
            p += consumed;
        }
        known.find_many(&self.ahead_hashes, &mut self.ahead_found);
        for (a, &f) in self.ahead.iter_mut().zip(&self.ahead_found) {
            a.known = f;
        }
    }

    /// Move the unread bytes to the front and read more. False at the end of the source.
    fn fill(&mut self) -> Result<bool, ReadError> {
        if self.eof {
            return Ok(false);
        }
        self.clear_ahead();
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        // reads grow from 64 KiB to READ_CHUNK (small inputs stay cheap)
        let chunk = (self.buf.len() * 2).clamp(64 * 1024, READ_CHUNK);
        if self.buf.len() < self.end + chunk {
            self.buf.resize(self.end + chunk, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// The next record into `rec`.
    pub(super) fn read_record(&mut self, rec: &mut Record) -> Result<Read1, ReadError> {
        if self.known.is_some() {
            if self
                .ahead
                .get(self.next_ahead)
                .is_none_or(|a| a.start != self.pos)
            {
                self.scan_ahead();
            }
            if let Some(&a) = self
                .ahead
                .get(self.next_ahead)
                .filter(|a| a.start == self.pos)
            {
                self.next_ahead += 1;
                if let Some(pos) = a.known {
                    self.pos += a.consumed;
                    let at = self.line;
                    self.line += 1;
                    return Ok(Read1::Known { line: at, pos });
                }
                return self.line_record(rec, a.len, a.consumed, Some(a.hash));
            }
        }
        loop {
            let avail = &self.buf[self.pos..self.end];
            let Some(i) = memchr::memchr2(b'\n', b'\r', avail) else {
                // no terminator in the buffer: read more, unless the line is already too long
                // to be a plain row (then the state machine consumes it with bounded memory)
                let n = avail.len();
                if n <= self.max_row_bytes && self.fill()? {
                    continue;
                }
                if self.pos == self.end {
                    return Ok(Read1::End);
                }
                if self.eof && n <= self.max_row_bytes {
                    // a last line without a line feed
                    return self.line_record(rec, n, n, None);
                }
                return self.quoted(rec);
            };
            if avail[i] == b'\n' {
                if i == 0 {
                    // a blank line between records: skipped, as the CSV rules say
                    self.pos += 1;
                    self.line += 1;
                    continue;
                }
                if i > self.max_row_bytes {
                    return self.quoted(rec);
                }
                return self.line_record(rec, i, i + 1, None);
            }
            // `\r`: a CRLF ends the line; a lone one is a terminator of its own (CSV rules)
            if i + 1 == avail.len() && !self.eof && self.fill()? {
                continue;
            }
            let avail = &self.buf[self.pos..self.end];
            if avail.get(i + 1) == Some(&b'\n') && i <= self.max_row_bytes {
                if i == 0 {
                    self.pos += 2;
                    self.line += 1;
                    continue;
                }
                return self.line_record(rec, i, i + 2, None);
            }
            return self.quoted(rec);
        }
    }

    /// A line of `len` bytes (without its terminator), `consumed` with it, split in place;
    /// or, when its quoting needs more than that, read by the state machine.
    #[inline]
    fn line_record(
        &mut self,
        rec: &mut Record,
        len: usize,
        consumed: usize,
        hash: Option<u64>,
    ) -> Result<Read1, ReadError> {
        let line = &self.buf[self.pos..self.pos + len];
        let hash = match hash {
            Some(h) => h,
            None => {
                // a line the look-ahead could not take (across the end of the buffer, the
                // file's last line): looked up on its own
                let h = line_print(
                    line,
                    &self.line_ignored,
                    self.header.len(),
                    self.max_row_bytes,
                    &mut self.print_scratch,
                );
                if let Some(pos) = self
                    .known
                    .as_ref()
                    .filter(|_| h != 0)
                    .and_then(|k| k.find(h))
                {
                    self.pos += consumed;
                    let at = self.line;
                    self.line += 1;
                    return Ok(Read1::Known { line: at, pos });
                }
                h
            }
        };
        rec.clear();
        rec.data.extend_from_slice(line);
        rec.utf8 = simdutf8::basic::from_utf8(line).is_ok();
        if !split_line(rec, &mut self.commas) {
            return self.quoted(rec);
        }
        rec.line_hash = hash;
        self.pos += consumed;
        let at = self.line;
        self.line += 1;
        Ok(Read1::Record {
            line: at,
            oversized: None,
        })
    }

    /// A record that needs the CSV state machine, from `pos` (the start of a record).
    fn quoted(&mut self, rec: &mut Record) -> Result<Read1, ReadError> {
        use csv_core::ReadRecordResult as R;
        // the lines found ahead may be inside this record
        self.clear_ahead();
        rec.clear();
        rec.data.resize(4096, 0);
        self.core_ends.resize(64, 0);
        let at = self.line;
        // bytes written and fields ended so far; once the record is over the limit, what
        // follows goes to `scratch` and only the leading part stays in `rec`
        let (mut out, mut fields) = (0usize, 0usize);
        let (mut kept_out, mut kept_fields) = (0usize, 0usize);
        let mut dropping = false;
        loop {
            if self.pos == self.end && !self.eof {
                self.fill()?;
            }
            // an empty input tells the state machine that the data has ended
            let input = &self.buf[self.pos..self.end];
            let (res, nin, nout, nend) = if dropping {
                if self.scratch.is_empty() {
                    self.scratch.resize(64 * 1024, 0);
                    self.scratch_ends.resize(1024, 0);
                }
                self.core
                    .read_record(input, &mut self.scratch, &mut self.scratch_ends)
            } else {
                self.core.read_record(
                    input,
                    &mut rec.data[kept_out..],
                    &mut self.core_ends[kept_fields..],
                )
            };
            self.line += memchr::memchr_iter(b'\n', &input[..nin]).count() as u64;
            self.pos += nin;
            out += nout;
            fields += nend;
            if !dropping {
                kept_out += nout;
                kept_fields += nend;
                // `out + fields - 1` bytes of values and separators at least: past
                // `keep_bytes` the record is over the limit whatever follows
                if out + fields > self.keep_bytes {
                    dropping = true;
                }
            }
            match res {
                R::InputEmpty => {}
                R::OutputFull if !dropping => {
                    let n = rec.data.len() * 2;
                    rec.data.resize(n, 0);
                }
                R::OutputEndsFull if !dropping => {
                    let n = self.core_ends.len() * 2;
                    self.core_ends.resize(n, 0);
                }
                R::OutputFull | R::OutputEndsFull => {}
                R::Record => {
                    // the fields kept whole; a cut one is left out
                    let mut start = 0;
                    for &e in &self.core_ends[..kept_fields] {
                        if e > kept_out {
                            break;
                        }
                        rec.bounds.push((start, e));
                        start = e;
                    }
                    rec.data.truncate(start);
                    rec.utf8 = simdutf8::basic::from_utf8(&rec.data).is_ok();
                    // measured as `Record::size` measures: the values and the separators
                    // between them (`fields` counts every field's end, the last one too)
                    return Ok(Read1::Record {
                        line: at,
                        oversized: dropping.then_some((out + fields).saturating_sub(1)),
                    });
                }
                R::End => return Ok(Read1::End),
            }
        }
    }

    /// The next row, or `None` at the end. The record is valid UTF-8, has exactly as many
    /// fields as the header, fits the size limit and has key values that are neither empty
    /// nor only whitespace (such a row is rejected, naming the key column).
    pub fn next_row<'a>(&mut self, record: &'a mut Record) -> Result<Option<Row<'a>>, ReadError> {
        let (line, oversized) = match self.read_record(record)? {
            Read1::End => return Ok(None),
            Read1::Record { line, oversized } => (line, oversized),
            Read1::Known { line, pos } => return Ok(Some(Row::Known { line, pos })),
        };
        let size = oversized.unwrap_or_else(|| record.size());
        if size > self.max_row_bytes {
            let reason = format!(
                "row is {size} bytes, over the feed's limit of {}",
                self.max_row_bytes
            );
            return Ok(Some(Row::Rejected {
                rejected: Rejected {
                    line,
                    reason,
                    fields: Vec::new(),
                },
                record,
            }));
        }
        let n = record.len();
        if n != self.header.len() {
            let reason = format!(
                "ragged row: {n} field(s), the header has {}",
                self.header.len()
            );
            return Ok(Some(Row::Rejected {
                rejected: reject(line, reason, record),
                record,
            }));
        }
        if !record.utf8 {
            let col = record
                .iter()
                .position(|f| std::str::from_utf8(f).is_err())
                .map(|i| self.header[i].as_str())
                .unwrap_or("?");
            let reason = format!("invalid UTF-8 in column `{col}`");
            return Ok(Some(Row::Rejected {
                rejected: reject(line, reason, record),
                record,
            }));
        }
        if let Some(&i) = self.key_idx.iter().find(|&&i| is_blank_key(&record[i])) {
            let reason = if record[i].is_empty() {
                format!("empty key column `{}`", self.header[i])
            } else {
                format!("empty key column `{}` (only whitespace)", self.header[i])
            };
            return Ok(Some(Row::Rejected {
                rejected: reject(line, reason, record),
                record,
            }));
        }
        Ok(Some(Row::Ok { line, record }))
    }
}

fn reject(line: u64, reason: String, record: &Record) -> Rejected {
    Rejected {
        line,
        reason,
        fields: record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
    }
}
