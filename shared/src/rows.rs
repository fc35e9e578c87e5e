//! Streaming CSV reading that survives real exports: header row, quoted fields with commas
//! and newlines, CRLF, a UTF-8 byte-order mark, gzip. A row that cannot be used is returned
//! as a [`Rejected`] (line number and reason, never its values in the reason) and does not
//! stop the file; an empty file, a missing or unusable header rejects the whole file.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::snapshot::{line_hash, KnownLines};

/// Why a whole file was refused. Permanent: the same bytes always fail the same way.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FileRejection {
    #[error("the file is empty (no header row)")]
    Empty,
    #[error("the header row is not valid UTF-8")]
    HeaderEncoding,
    #[error("the header row has an empty column name at position {0}")]
    EmptyColumnName(usize),
    #[error("the header row names the same column at positions {0} and {1}")]
    DuplicateColumn(usize, usize),
    #[error("the compressed (gzip) data is corrupt or truncated")]
    CorruptCompression,
    #[error("the header row has {found} columns, more than the feed's limit of {limit}")]
    TooManyColumns { found: usize, limit: usize },
    #[error("required column(s) missing: {}", .0.join(", "))]
    MissingRequired(Vec<String>),
    #[error("column(s) compared in the previous file are missing: {}; the file cannot be compared with the feed's state", .0.join(", "))]
    ComparedColumnsMissing(Vec<String>),
    #[error("the header row is {size} bytes, more than the limit of {limit}")]
    HeaderTooLong { size: usize, limit: usize },
    #[error("the object is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
}

/// Reading failed for a reason that may pass (network, S3 stream).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the object failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Rejected(#[from] FileRejection),
}

impl ReadError {
    pub fn retryable(&self) -> bool {
        matches!(self, ReadError::Io(_))
    }
}

/// A row that could not be used, with the 1-based physical line where it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
    /// The raw fields (lossily decoded), for the rejects report in S3 only. Never logged.
    pub fields: Vec<String>,
}

/// Marks an error of the decompressor on intact input: the data itself is bad.
#[derive(Debug)]
struct CorruptInput;
impl std::fmt::Display for CorruptInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("corrupt compressed data")
    }
}
impl std::error::Error for CorruptInput {}

/// Remembers whether the underlying source (the network stream) failed.
struct Watch<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}
impl<R: Read> Read for Watch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| {
            self.failed.store(true, Ordering::SeqCst);
        })
    }
}

/// A decompressor whose errors, when the source itself did not fail, mean corrupt data.
struct Decoded<R> {
    inner: R,
    source_failed: Arc<AtomicBool>,
}
impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if self.source_failed.load(Ordering::SeqCst) {
                e
            } else {
                std::io::Error::new(std::io::ErrorKind::InvalidData, CorruptInput)
            }
        })
    }
}

/// Open a byte stream: transparently gunzips (by magic bytes) and skips a UTF-8 BOM.
pub fn open_stream<R: Read + Send + 'static>(
    inner: R,
    buf_size: usize,
) -> Result<Box<dyn Read + Send>, ReadError> {
    let failed = Arc::new(AtomicBool::new(false));
    let watched = Watch {
        inner,
        failed: failed.clone(),
    };
    let mut br = BufReader::with_capacity(buf_size, watched);
    let head = fill_at_least(&mut br, 2)?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        let gz = Decoded {
            inner: flate2::read::MultiGzDecoder::new(br),
            source_failed: failed,
        };
        let mut inner = BufReader::with_capacity(buf_size, gz);
        skip_bom(&mut inner).map_err(io_error)?;
        return Ok(Box::new(inner));
    }
    skip_bom(&mut br)?;
    Ok(Box::new(br))
}

fn io_error(e: std::io::Error) -> ReadError {
    if e.get_ref().is_some_and(|i| i.is::<CorruptInput>()) {
        ReadError::Rejected(FileRejection::CorruptCompression)
    } else {
        ReadError::Io(e)
    }
}

fn fill_at_least<R: Read>(br: &mut BufReader<R>, n: usize) -> std::io::Result<Vec<u8>> {
    // BufReader::fill_buf may return fewer bytes than available; peek by reading into a small
    // buffer only when the first fill is short (rare: tiny network chunks).
    let buf = br.fill_buf()?;
    if buf.len() >= n || buf.is_empty() {
        return Ok(buf[..buf.len().min(n)].to_vec());
    }
    Ok(buf.to_vec())
}

fn skip_bom<R: BufRead>(br: &mut R) -> std::io::Result<()> {
    let buf = br.fill_buf()?;
    if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
        br.consume(3);
    }
    Ok(())
}

/// One CSV record: a byte buffer and where each field's value lies in it.
///
/// [`RowReader`] fills it with one copy of the line: a line whose fields are plain or simply
/// quoted is split where it lies (quotes stripped, `""` unescaped in place); any other
/// record goes through `csv-core`'s state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    data: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    /// Whether the record's bytes are valid UTF-8 (checked once, on the raw bytes).
    utf8: bool,
    /// [`line_hash`] of the raw line when the record was one plain line, else 0.
    line_hash: u64,
}

impl Record {
    pub fn new() -> Record {
        Record::default()
    }

    /// A record of these field values (tests, tools).
    pub fn from_fields<I, T>(fields: I) -> Record
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut r = Record::new();
        for f in fields {
            let start = r.data.len();
            r.data.extend_from_slice(f.as_ref());
            r.bounds.push((start, r.data.len()));
        }
        r.utf8 = simdutf8::basic::from_utf8(&r.data).is_ok();
        r
    }

    /// Number of fields.
    #[inline]
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The value of field `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let &(a, b) = self.bounds.get(i)?;
        self.data.get(a..b)
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.bounds.iter().map(move |&(a, b)| &self.data[a..b])
    }

    /// The hash of the record's raw line, when [`RowReader`] read it as one line (0 if not).
    #[inline]
    pub fn line_hash(&self) -> u64 {
        self.line_hash
    }

    /// Bytes of the record's buffer: at least the sum of its values' lengths.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The record's size as the limit counts it: its values' bytes plus one per field.
    pub fn size(&self) -> usize {
        self.bounds.iter().map(|(a, b)| b - a + 1).sum()
    }

    fn clear(&mut self) {
        self.data.clear();
        self.bounds.clear();
        self.utf8 = false;
        self.line_hash = 0;
    }
}

impl std::ops::Index<usize> for Record {
    type Output = [u8];
    #[inline]
    fn index(&self, i: usize) -> &[u8] {
        let (a, b) = self.bounds[i];
        &self.data[a..b]
    }
}

/// Positions of every comma of `d`, in order, into `out` (cleared first).
#[inline]
fn comma_positions(d: &[u8], out: &mut Vec<u32>) {
    out.clear();
    let mut base = 0usize;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16 bytes inside `d`
        // (`base + 16 <= d.len()`), unaligned loads allowed.
        unsafe {
            let comma = _mm_set1_epi8(b',' as i8);
            while base + 16 <= d.len() {
                let v = _mm_loadu_si128(d.as_ptr().add(base).cast());
                let mut m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, comma)) as u32;
                while m != 0 {
                    out.push(base as u32 + m.trailing_zeros());
                    m &= m - 1;
                }
                base += 16;
            }
        }
    }
    for (j, &b) in d[base..].iter().enumerate() {
        if b == b',' {
            out.push((base + j) as u32);
        }
    }
}

/// Split a copied line in place: plain fields, and quoted fields that close on this line
/// and are followed by a comma or the end. Anything else (a quote left open — a line break
/// inside quotes —, text after a closing quote) returns false and the caller hands the
/// record to `csv-core`. `\r` never reaches here. `commas` is scratch space.
#[inline]
fn split_line(rec: &mut Record, commas: &mut Vec<u32>) -> bool {
    let d = &mut rec.data;
    let n = d.len();
    comma_positions(d, commas);
    // the next comma not yet used or skipped
    let mut c = 0usize;
    let mut i = 0;
    loop {
        if i < n && d[i] == b'"' {
            let start = i + 1;
            let (mut r, mut w) = (start, start);
            loop {
                let Some(k) = memchr::memchr(b'"', &d[r..n]) else {
                    return false;
                };
                let q = r + k;
                if w != r {
                    d.copy_within(r..q, w);
                }
                w += q - r;
                if d.get(q + 1) == Some(&b'"') {
                    d[w] = b'"';
                    w += 1;
                    r = q + 2;
                    continue;
                }
                rec.bounds.push((start, w));
                i = q + 1;
                break;
            }
            if i == n {
                return true;
            }
            if d[i] != b',' {
                return false;
            }
            // commas inside the quotes are not separators
            while c < commas.len() && (commas[c] as usize) <= i {
                c += 1;
            }
            i += 1;
        } else {
            match commas.get(c) {
                Some(&k) => {
                    let k = k as usize;
                    rec.bounds.push((i, k));
                    c += 1;
                    i = k + 1;
                }
                None => {
                    rec.bounds.push((i, n));
                    return true;
                }
            }
        }
        if i == n {
            // a trailing comma: an empty last field
            rec.bounds.push((n, n));
            return true;
        }
    }
}

/// The hash a plain line (without its terminator) is known by: [`line_hash`] of the line
/// with the values of the `ignored` fields (sorted file positions) cut out, their commas
/// kept. 0 when the line cannot be known that way: longer than the row limit allows, fewer
/// fields than an ignored position, or quoting that the fields up to the last ignored one do
/// not close. Two lines with the same print have the same bytes in every other field — so,
/// read with the same header, the same key and the same content fingerprint. An ignored
/// value must still be valid UTF-8 (the full path would reject the row otherwise), and
/// `len + 1 <= max_row_bytes` bounds the row's size whatever the cut-out values were.
///
/// `fields` is the header's column count. When the only ignored column is the last one (an
/// export timestamp at the end of the row, the usual case), a line whose text after its last
/// comma holds no quote is printed as the bytes up to and including that comma: for a row
/// of `fields` fields that is what the field walk gives, and a line that prints the same as
/// an accepted row's line is that row's leading fields plus one plain last field — so it has
/// exactly `fields` fields too. Anything else takes the walk.
pub fn line_print(
    line: &[u8],
    ignored: &[usize],
    fields: usize,
    max_row_bytes: usize,
    scratch: &mut PrintScratch,
) -> u64 {
    if line.len() >= max_row_bytes {
        return 0;
    }
    let Some(&last) = ignored.last() else {
        return line_hash(line);
    };
    if ignored.len() == 1 && last + 1 == fields {
        if let Some(p) = memchr::memrchr(b',', line) {
            let tail = &line[p + 1..];
            if memchr::memchr(b'"', tail).is_none() {
                if simdutf8::basic::from_utf8(tail).is_err() {
                    return 0;
                }
                return line_hash(&line[..p + 1]);
            }
        }
    }
    let n = line.len();
    let PrintScratch { commas, kept } = scratch;
    comma_positions(line, commas);
    kept.clear();
    // as `split_line` walks fields: the next comma not yet used or skipped
    let mut c = 0usize;
    let (mut i, mut field, mut kept_from) = (0usize, 0usize, 0usize);
    let mut next = ignored.iter().copied().peekable();
    loop {
        let start = i;
        let end = if line.get(i) == Some(&b'"') {
            let mut r = i + 1;
            let end = loop {
                let Some(k) = memchr::memchr(b'"', &line[r..]) else {
                    return 0;
                };
                let q = r + k;
                if line.get(q + 1) == Some(&b'"') {
                    r = q + 2;
                    continue;
                }
                break q + 1;
            };
            if end < n && line[end] != b',' {
                return 0;
            }
            // commas inside the quotes are not separators
            while c < commas.len() && (commas[c] as usize) <= end {
                c += 1;
            }
            end
        } else {
            match commas.get(c) {
                Some(&k) => {
                    c += 1;
                    k as usize
                }
                None => n,
            }
        };
        if next.peek() == Some(&field) {
            next.next();
            if simdutf8::basic::from_utf8(&line[start..end]).is_err() {
                return 0;
            }
            kept.extend_from_slice(&line[kept_from..start]);
            kept_from = end;
            if field == last {
                kept.extend_from_slice(&line[kept_from..]);
                return line_hash(kept);
            }
        }
        if end >= n {
            return 0;
        }
        i = end + 1;
        field += 1;
    }
}

/// Scratch space for [`line_print`].
#[derive(Debug, Default)]
pub struct PrintScratch {
    commas: Vec<u32>,
    kept: Vec<u8>,
}

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
    Ok {
        line: u64,
        record: &'a Record,
    },
    /// A line identical to the line of snapshot position `pos` (see
    /// [`RowReader::set_known`]); not split, the record is untouched.
    Known {
        line: u64,
        pos: u32,
    },
    /// A row that cannot be used; `record` is what was read (its key may still be readable).
    Rejected {
        rejected: Rejected,
        record: &'a Record,
    },
}

/// What [`RowReader::read_record`] found.
enum Read1 {
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
    /// `required`); their values must be non-empty in every row.
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
        let mut header = Vec::with_capacity(rec.len());
        for (i, f) in rec.iter().enumerate() {
            let name = std::str::from_utf8(f).map_err(|_| FileRejection::HeaderEncoding)?;
            let name = name.trim();
            if name.is_empty() {
                return Err(FileRejection::EmptyColumnName(i + 1).into());
            }
            if let Some(first) = header.iter().position(|h: &String| h == name) {
                return Err(FileRejection::DuplicateColumn(first + 1, i + 1).into());
            }
            header.push(name.to_string());
        }
        let missing: Vec<String> = required
            .iter()
            .filter(|r| !header.contains(r))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(FileRejection::MissingRequired(missing).into());
        }
        let key_idx = key_columns
            .iter()
            .map(|k| header.iter().position(|h| h == k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                FileRejection::MissingRequired(
                    key_columns
                        .iter()
                        .filter(|k| !header.contains(k))
                        .cloned()
                        .collect(),
                )
            })?;
        r.header = header;
        r.key_idx = key_idx;
        r.max_row_bytes = max_row_bytes;
        r.keep_bytes = max_row_bytes.saturating_add(1);
        Ok(r)
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// From now on, a plain line whose hash the previous file's snapshot has is returned as
    /// [`Row::Known`] without being split or checked: it is byte for byte a row that was
    /// accepted before. Only for a snapshot whose line hashes are valid for this file (same
    /// [`crate::diff::line_context`]).
    pub fn set_known(&mut self, known: Option<Arc<KnownLines>>) {
        self.known = known;
        self.clear_ahead();
    }

    /// Leave these columns' values out of each line's hash (the feed's ignored columns, such
    /// as an export timestamp that changes in every row of every file): a row then is known
    /// by its line when everything else is the same bytes.
    pub fn set_line_ignored(&mut self, columns: &[String]) {
        let mut idx: Vec<usize> = columns
            .iter()
            .filter(|c| !self.key_idx.iter().any(|&k| self.header[k] == **c))
            .filter_map(|c| self.header.iter().position(|h| h == c))
            .collect();
        idx.sort_unstable();
        idx.dedup();
        self.line_ignored = idx;
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
    fn read_record(&mut self, rec: &mut Record) -> Result<Read1, ReadError> {
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
                    return Ok(Read1::Record {
                        line: at,
                        oversized: dropping.then_some(out + fields),
                    });
                }
                R::End => return Ok(Read1::End),
            }
        }
    }

    /// The next row, or `None` at the end. The record is valid UTF-8, has exactly as many
    /// fields as the header, fits the size limit and has non-empty key values.
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
        if let Some(&i) = self.key_idx.iter().find(|&&i| record[i].is_empty()) {
            let reason = format!("empty key column `{}`", self.header[i]);
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

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Vec<String>, Vec<(u64, Vec<String>)>, Vec<Rejected>);

    fn rows(data: &[u8]) -> Parsed {
        let s = open_stream(std::io::Cursor::new(data.to_vec()), 64).unwrap();
        let mut r = RowReader::new(s, &["id".into()], &["id".into()], 100, 200).unwrap();
        let mut rec = Record::new();
        let mut ok = vec![];
        let mut bad = vec![];
        while let Some(row) = r.next_row(&mut rec).unwrap() {
            match row {
                Row::Ok { line, record } => ok.push((
                    line,
                    record
                        .iter()
                        .map(|f| String::from_utf8(f.to_vec()).unwrap())
                        .collect(),
                )),
                Row::Rejected { rejected, .. } => bad.push(rejected),
                Row::Known { .. } => unreachable!("no known lines were set"),
            }
        }
        (r.header().to_vec(), ok, bad)
    }

    #[test]
    fn quoted_commas_newlines_crlf_bom() {
        let data = b"\xEF\xBB\xBFid,name,addr\r\n1,\"Zo\xC3\xAB, Jr\",\"12 Main St\r\nApt 4\"\r\n2,\"say \"\"hi\"\"\",\r\n";
        let (h, ok, bad) = rows(data);
        assert_eq!(h, vec!["id", "name", "addr"]);
        assert!(bad.is_empty());
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].1, vec!["1", "Zoë, Jr", "12 Main St\r\nApt 4"]);
        assert_eq!(ok[0].0, 2);
        assert_eq!(ok[1].1, vec!["2", "say \"hi\"", ""]);
        assert_eq!(ok[1].0, 4, "line numbers count embedded newlines");
    }

    #[test]
    fn gzip_is_transparent() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"\xEF\xBB\xBFid,v\n1,a\n2,b\n").unwrap();
        let gz = enc.finish().unwrap();
        let (h, ok, bad) = rows(&gz);
        assert_eq!(h, vec!["id", "v"]);
        assert_eq!(ok.len(), 2);
        assert!(bad.is_empty());
    }

    #[test]
    fn corrupt_gzip_is_a_file_rejection() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(enc, "id,v").unwrap();
        for i in 0..5000 {
            writeln!(enc, "{i},value-{i}").unwrap();
        }
        let gz = enc.finish().unwrap();
        let mut cut = b"".to_vec();
        cut.extend_from_slice(&gz[..gz.len() / 2]);
        let s = open_stream(std::io::Cursor::new(cut), 64).unwrap();
        let mut r =
            RowReader::new(s, &[], &["id".into()], 10, 100).unwrap_or_else(|e| panic!("{e}"));
        let mut rec = Record::new();
        let err = loop {
            match r.next_row(&mut rec) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a truncated gzip read to the end"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, ReadError::Rejected(FileRejection::CorruptCompression)),
            "{err}"
        );
        assert!(!err.retryable());
    }

    #[test]
    fn source_failures_stay_retryable() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("connection reset"))
            }
        }
        let err = open_stream(Broken, 64).err().unwrap();
        assert!(err.retryable(), "{err}");
    }

    #[test]
    fn bad_rows_are_rejected_with_lines() {
        let data = b"id,v\n1,a\n2\n3,\xFF\xFE\n,x\n4,b,c\n5,ok\n";
        let (_, ok, bad) = rows(data);
        assert_eq!(ok.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 7]);
        let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6]);
        assert!(bad[0].reason.contains("ragged"));
        assert!(bad[1].reason.contains("UTF-8") && bad[1].reason.contains("`v`"));
        assert!(bad[2].reason.contains("empty key"));
        assert!(bad[3].reason.contains("ragged"));
        for b in &bad {
            assert!(!b.reason.contains('\u{FFFD}') && !b.reason.contains("x"));
        }
    }

    #[test]
    fn huge_row_is_rejected_without_values() {
        let mut data = b"id,v\n1,".to_vec();
        data.extend(std::iter::repeat_n(b'x', 500));
        data.extend(b"\n2,y\n");
        let (_, ok, bad) = rows(&data);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].reason.contains("over the feed's limit"));
        assert!(bad[0].fields.is_empty());
    }

    #[test]
    fn whole_file_rejections() {
        let open = |d: &[u8]| {
            let s = open_stream(std::io::Cursor::new(d.to_vec()), 64).unwrap();
            RowReader::new(s, &["id".into(), "v".into()], &["id".into()], 3, 100)
                .err()
                .map(|e| e.to_string())
        };
        assert!(open(b"").unwrap().contains("empty"));
        assert!(open(b"\xEF\xBB\xBF").unwrap().contains("empty"));
        assert!(open(b"\n\n").unwrap().contains("empty"));
        assert!(open(b"id,w\n1,2\n").unwrap().contains("missing: v"));
        assert!(open(b"id,v,id\n").unwrap().contains("positions 1 and 3"));
        assert!(open(b"id,,v\n").unwrap().contains("empty column name"));
        assert!(open(b"id,v,a,b\n").unwrap().contains("limit of 3"));
        assert!(open(b"id,\xFF\n").unwrap().contains("UTF-8"));
        assert!(
            open(b"id,v\n").is_none(),
            "header only is a valid empty export"
        );
    }

    /// Hands out at most `n` bytes per read: every buffer boundary gets exercised.
    struct Trickle(std::io::Cursor<Vec<u8>>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    fn all_records(data: &[u8], per_read: usize, max_row: usize) -> Vec<(u64, Vec<Vec<u8>>)> {
        let src = Trickle(std::io::Cursor::new(data.to_vec()), per_read);
        let mut r = match RowReader::new(src, &[], &[], 1_000_000, max_row) {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        let mut out = vec![(
            1,
            r.header().iter().map(|h| h.as_bytes().to_vec()).collect(),
        )];
        let mut rec = Record::new();
        while let Ok(Read1::Record { line, .. }) = r.read_record(&mut rec) {
            out.push((line, rec.iter().map(|f| f.to_vec()).collect()));
        }
        out
    }

    /// A seeded xorshift64 generator: the random inputs of these tests, reproducible.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// The two paths of the reader give what the `csv` crate gives, record by record, on
    /// random input made of CSV's special bytes, whatever the read sizes.
    #[test]
    fn same_records_as_the_csv_crate_on_random_input() {
        let alphabet: &[&[u8]] = &[
            b"a",
            b"bc",
            b",",
            b",",
            b"\"",
            b"\n",
            b"\r\n",
            b"\r",
            b" ",
            "é".as_bytes(),
            b"\"\"",
        ];
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        for case in 0..2000 {
            let len = (next() % 60) as usize;
            let mut data = b"h1,h2\n".to_vec();
            for _ in 0..len {
                data.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let mut want = Vec::new();
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(&data[..]);
            let mut rec = csv::ByteRecord::new();
            while rdr.read_byte_record(&mut rec).unwrap_or(false) {
                want.push(rec.iter().map(|f| f.to_vec()).collect::<Vec<_>>());
            }
            for per_read in [1, 2, 3, 7, 4096] {
                let got: Vec<Vec<Vec<u8>>> = all_records(&data, per_read, 1 << 16)
                    .into_iter()
                    .map(|(_, f)| f)
                    .collect();
                assert_eq!(
                    got,
                    want,
                    "case {case}, reads of {per_read}: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }

    /// With a snapshot's line hashes set, exactly the plain lines it has come back as known
    /// (at their line numbers, with the row that has them), and every other record comes
    /// back as it did without — whatever the read sizes and wherever the buffer ends.
    #[test]
    fn known_lines_change_nothing_else() {
        use crate::snapshot::{Entry, Snapshot, SnapshotHeader};
        let alphabet: &[&[u8]] = &[
            b"a", b"bc", b",", b",", b"\"", b"\n", b"\n", b"\n", b"\r\n", b"\r", b"x,y",
        ];
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        type Got = Vec<(u64, Result<Vec<Vec<u8>>, u32>)>;
        let read = |data: &[u8],
                    per_read: usize,
                    ignored: &[String],
                    known: Option<Arc<KnownLines>>|
         -> Got {
            let src = Trickle(std::io::Cursor::new(data.to_vec()), per_read);
            let mut r = RowReader::new(src, &[], &[], 1_000_000, 1 << 16).unwrap();
            r.set_line_ignored(ignored);
            r.set_known(known);
            let mut rec = Record::new();
            let mut out = Vec::new();
            loop {
                match r.read_record(&mut rec).unwrap() {
                    Read1::End => return out,
                    Read1::Record { line, .. } => {
                        out.push((line, Ok(rec.iter().map(|f| f.to_vec()).collect())))
                    }
                    Read1::Known { line, pos } => out.push((line, Err(pos))),
                }
            }
        };
        for case in 0..300 {
            // no column, the last or the first left out of line prints
            let ignored =
                [vec![], vec!["h2".to_string()], vec!["h1".to_string()]][case % 3].clone();
            let mut data = b"h1,h2\n".to_vec();
            for _ in 0..(next() % 400) {
                data.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            // the plain lines as the reader hashes them, and a random half of them known
            let plain: Vec<(u64, Vec<Vec<u8>>, u64)> = {
                let src = std::io::Cursor::new(data.clone());
                let mut r = RowReader::new(src, &[], &[], 1_000_000, 1 << 16).unwrap();
                r.set_line_ignored(&ignored);
                let mut rec = Record::new();
                let mut v = Vec::new();
                while let Ok(Read1::Record { line, .. }) = r.read_record(&mut rec) {
                    v.push((
                        line,
                        rec.iter().map(|f| f.to_vec()).collect(),
                        rec.line_hash(),
                    ));
                }
                v
            };
            let mut chosen = std::collections::BTreeSet::new();
            for (_, _, h) in &plain {
                if *h != 0 && next().is_multiple_of(2) {
                    chosen.insert(*h);
                }
            }
            let entries: Vec<Entry> = chosen
                .iter()
                .enumerate()
                .map(|(i, &h)| Entry {
                    key: i as u64,
                    content: 0,
                    chain: 0,
                    line: h,
                })
                .collect();
            let header = SnapshotHeader {
                format: crate::snapshot::FORMAT_VERSION,
                feed: "f".into(),
                key_columns: vec![],
                hashed_columns: vec![],
                source: Default::default(),
                row_count: 0,
                created_at: String::new(),
                run: String::new(),
                line_context: None,
            };
            let snap = Arc::new(Snapshot::from_entries(header, entries));
            let known = KnownLines::new(snap.clone()).map(Arc::new);
            let want: Got = plain
                .iter()
                .map(|(line, fields, h)| {
                    let pos = (*h != 0 && chosen.contains(h))
                        .then(|| (0..snap.len()).find(|&p| snap.line_at(p) == *h).unwrap());
                    match pos {
                        Some(p) => (*line, Err(p as u32)),
                        None => (*line, Ok(fields.clone())),
                    }
                })
                .collect();
            for per_read in [1, 2, 7, 64, 4096] {
                let got = read(&data, per_read, &ignored, known.clone());
                assert_eq!(
                    got,
                    want,
                    "case {case}, reads of {per_read}, {ignored:?} left out: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }

    #[test]
    fn line_prints_leave_out_ignored_values_and_nothing_else() {
        // the field walk only (no column count known)
        fn p(line: impl AsRef<[u8]>, ig: &[usize]) -> u64 {
            line_print(
                line.as_ref(),
                ig,
                usize::MAX,
                100,
                &mut PrintScratch::default(),
            )
        }
        // with the column count: the last column's shortcut
        fn pf(line: impl AsRef<[u8]>, ig: &[usize], fields: usize) -> u64 {
            line_print(line.as_ref(), ig, fields, 100, &mut PrintScratch::default())
        }
        assert_eq!(pf("1,a,TS1", &[2], 3), p("1,a,TS1", &[2]));
        assert_eq!(pf("1,\"a,b\",TS1", &[2], 3), p("1,\"a,b\",TS2", &[2]));
        assert_eq!(pf("1,a,\"T,S\"", &[2], 3), p("1,a,TS2", &[2]));
        assert_eq!(pf(b"1,a,\xff", &[2], 3), 0);
        assert_ne!(pf("1,a,TS,x", &[2], 3), p("1,a,TS", &[2]), "a ragged row");
        // the last column ignored (an export timestamp)
        assert_eq!(p("1,a,TS1", &[2]), p("1,a,TS2", &[2]));
        assert_eq!(p("1,a,TS1", &[2]), p("1,a,\"T,\"\"S\"", &[2]));
        assert_ne!(p("1,a,TS1", &[2]), p("1,b,TS1", &[2]));
        assert_ne!(
            p("1,a,TS1", &[2]),
            p("1,a,TS1,x", &[2]),
            "an extra field counts"
        );
        assert_ne!(p("1,a,TS1", &[2]), p("1,a,", &[1]));
        // in the middle, quoted fields around it
        let a = p("\"1,2\",TS,\"x\"\"y\"", &[1]);
        assert_ne!(a, 0);
        assert_eq!(a, p("\"1,2\",\"TS,TS\",\"x\"\"y\"", &[1]));
        assert_ne!(a, p("\"1,2\",TS,\"x\"\"z\"", &[1]));
        assert_ne!(a, p("\"1\",TS,\"x\"\"y\"", &[1]));
        // several ignored
        assert_eq!(p("k,1,v,2,w", &[1, 3]), p("k,9,v,8,w", &[1, 3]));
        assert_ne!(p("k,1,v,2,w", &[1, 3]), p("k,1,v,2,x", &[1, 3]));
        // nothing ignored: the plain line hash
        assert_eq!(p("1,a,TS1", &[]), line_hash(b"1,a,TS1"));
        assert_ne!(p("1,a,TS1", &[]), p("1,a,TS2", &[]));
        // not known by a print: too few fields, unclosed or odd quoting up to the ignored
        // field, an ignored value that is not UTF-8, a line too long for the limit
        assert_eq!(p("1,a", &[2]), 0);
        assert_eq!(p("1,\"a,TS", &[2]), 0);
        assert_eq!(p("1,\"a\"b,TS", &[2]), 0);
        assert_eq!(p("1,a,\"TS", &[2]), 0);
        assert_eq!(p(b"1,a,\xff", &[2]), 0);
        assert_ne!(p(b"1,\xff,a", &[2]), 0, "the full path checks kept values");
        assert_eq!(p([b'a'; 100], &[]), 0);
        assert_ne!(p([b'a'; 99], &[]), 0);
        assert_eq!(p([b'a'; 100], &[0]), 0);
        // commas inside quotes before the ignored field are not separators
        assert_eq!(p("\"a,b\",x,TS", &[2]), p("\"a,b\",x,\"T,S\"", &[2]));
        assert_eq!(p("\"a,b\",x,TS", &[2]), p("\"a,b\",x,", &[2]));
        assert_eq!(p("\"a,b\",x", &[2]), 0);
    }

    /// The last column's shortcut prints every row of the right width as the field walk
    /// does (stored prints and looked-up prints must agree, whichever way each was made).
    #[test]
    fn the_last_column_shortcut_agrees_with_the_field_walk() {
        let alphabet: &[&[u8]] = &[
            b"a",
            b"bc",
            b",",
            b",",
            b"\"",
            b"\"\"",
            b" ",
            "é".as_bytes(),
        ];
        let mut next = xorshift(0x1234_5678_9ABC_DEF1);
        let mut agreed = 0;
        for _ in 0..20_000 {
            let mut line = Vec::new();
            for _ in 0..(next() % 16) {
                line.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(&line[..]);
            let mut rec = csv::ByteRecord::new();
            let fields = match rdr.read_byte_record(&mut rec) {
                Ok(true)
                    if rdr.read_byte_record(&mut csv::ByteRecord::new()).ok() == Some(false) =>
                {
                    rec.len()
                }
                _ => continue,
            };
            let walk = line_print(
                &line,
                &[fields - 1],
                usize::MAX,
                1 << 20,
                &mut PrintScratch::default(),
            );
            let short = line_print(
                &line,
                &[fields - 1],
                fields,
                1 << 20,
                &mut PrintScratch::default(),
            );
            if walk != 0 {
                assert_eq!(short, walk, "{:?}", String::from_utf8_lossy(&line));
                agreed += 1;
            }
        }
        assert!(agreed > 1000, "{agreed}");
    }

    #[test]
    fn line_numbers_count_every_line_feed() {
        let data = b"id,v\n1,a\n\n2,\"x\ny\"\r\n3,b\r\n\r\n4,\"q\"\n5,c";
        for per_read in [1, 5, 4096] {
            let got = all_records(data, per_read, 1000);
            let lines: Vec<u64> = got.iter().map(|(l, _)| *l).collect();
            assert_eq!(lines, vec![1, 2, 4, 6, 8, 9], "reads of {per_read}");
            assert_eq!(got[2].1, vec![b"2".to_vec(), b"x\ny".to_vec()]);
            assert_eq!(got[5].1, vec![b"5".to_vec(), b"c".to_vec()]);
        }
    }

    /// A record far over the limit (a quote never closed, say) is read with bounded memory,
    /// rejected with its size, its key still readable, and the rows after it are intact.
    #[test]
    fn oversized_records_are_bounded_and_keep_their_key() {
        for quoted in [false, true] {
            let mut data = b"id,v,w\n1,a,b\n2,".to_vec();
            if quoted {
                data.push(b'"');
            }
            data.extend(std::iter::repeat_n(b'x', 300_000));
            if quoted {
                data.extend_from_slice(b"\n\"");
            }
            data.extend_from_slice(b",z\n3,c,d\n");
            let src = Trickle(std::io::Cursor::new(data), 1000);
            let mut r = RowReader::new(src, &[], &["id".into()], 10, 100).unwrap();
            let mut rec = Record::new();
            let mut seen = Vec::new();
            while let Some(row) = r.next_row(&mut rec).unwrap() {
                match row {
                    Row::Ok { line, record } => seen.push((line, record[0].to_vec(), None)),
                    Row::Rejected { rejected, record } => {
                        assert!(record.data.len() <= 1000, "kept {}", record.data.len());
                        seen.push((rejected.line, record[0].to_vec(), Some(rejected.reason)))
                    }
                    Row::Known { .. } => unreachable!("no known lines were set"),
                }
            }
            assert_eq!(seen.len(), 3, "{seen:?}");
            assert_eq!(seen[1].1, b"2");
            let reason = seen[1].2.as_deref().unwrap_or_default();
            assert!(reason.contains("over the feed's limit of 100"), "{reason}");
            assert_eq!(seen[2].1, b"3");
            assert_eq!(seen[2].0, if quoted { 5 } else { 4 });
        }
    }

    #[test]
    fn comma_positions_match_a_plain_scan() {
        let mut out = Vec::new();
        for len in 0..100usize {
            let d: Vec<u8> = (0..len)
                .map(|i| if (i * 7 + len) % 5 == 0 { b',' } else { b'a' })
                .collect();
            comma_positions(&d, &mut out);
            let want: Vec<u32> = (0..len as u32).filter(|&i| d[i as usize] == b',').collect();
            assert_eq!(out, want, "length {len}");
        }
    }
}
