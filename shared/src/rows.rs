//! Streaming CSV reading that survives real exports: header row, quoted fields with commas
//! and newlines, CRLF, a UTF-8 byte-order mark, gzip. A row that cannot be used is returned
//! as a [`Rejected`] (line number and reason, never its values in the reason) and does not
//! stop the file; an empty file, a missing or unusable header rejects the whole file.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Reads rows with a validated header.
pub struct RowReader<R: Read> {
    rdr: csv::Reader<R>,
    header: Vec<String>,
    max_row_bytes: usize,
    key_idx: Vec<usize>,
    /// The csv crate reports the start of a record that follows a CRLF terminator on the
    /// line of that terminator's `\r`; this corrects it (detected on the header row).
    line_offset: u64,
}

/// One outcome of [`RowReader::next_row`].
pub enum Row<'a> {
    Ok {
        line: u64,
        record: &'a csv::ByteRecord,
    },
    /// A row that cannot be used; `record` is what was read (its key may still be readable).
    Rejected {
        rejected: Rejected,
        record: &'a csv::ByteRecord,
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
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(256 * 1024)
            .from_reader(inner);
        let mut rec = csv::ByteRecord::new();
        let got = rdr.read_byte_record(&mut rec).map_err(csv_io)?;
        if !got || (rec.len() == 1 && rec[0].is_empty()) {
            return Err(FileRejection::Empty.into());
        }
        if rec.len() > max_columns {
            return Err(FileRejection::TooManyColumns {
                found: rec.len(),
                limit: max_columns,
            }
            .into());
        }
        let header_newlines: u64 = rec
            .iter()
            .map(|f| f.iter().filter(|&&b| b == b'\n').count() as u64)
            .sum();
        let line_offset = u64::from(rdr.position().line() == 1 + header_newlines);
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
        Ok(RowReader {
            rdr,
            header,
            max_row_bytes,
            key_idx,
            line_offset,
        })
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The next row, or `None` at the end. The record is valid UTF-8, has exactly as many
    /// fields as the header, fits the size limit and has non-empty key values.
    pub fn next_row<'a>(
        &mut self,
        record: &'a mut csv::ByteRecord,
    ) -> Result<Option<Row<'a>>, ReadError> {
        if !self.rdr.read_byte_record(record).map_err(csv_io)? {
            return Ok(None);
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0) + self.line_offset;
        // A blank line between rows: the csv crate yields nothing for it, but a line with
        // only whitespace would be a 1-field record: reject it like any ragged row.
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
        let size = record.as_slice().len() + n;
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
        if std::str::from_utf8(record.as_slice()).is_err() {
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

fn reject(line: u64, reason: String, record: &csv::ByteRecord) -> Rejected {
    Rejected {
        line,
        reason,
        fields: record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
    }
}

fn csv_io(e: csv::Error) -> ReadError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_error(io),
        other => ReadError::Io(std::io::Error::other(format!("csv: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Vec<String>, Vec<(u64, Vec<String>)>, Vec<Rejected>);

    fn rows(data: &[u8]) -> Parsed {
        let s = open_stream(std::io::Cursor::new(data.to_vec()), 64).unwrap();
        let mut r = RowReader::new(s, &["id".into()], &["id".into()], 100, 200).unwrap();
        let mut rec = csv::ByteRecord::new();
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
        let mut rec = csv::ByteRecord::new();
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
}
