//! Opening an object's byte stream: gzip by its magic bytes (a corrupt stream is the file's
//! fault, a failed network read is not; its inflated bytes are counted against the feed's
//! limit), then a UTF-8 byte-order mark skipped.

use super::{FileRejection, ReadError};
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Marks an error of the decompressor on intact input: the data itself is bad.
#[derive(Debug)]
struct CorruptInput;
impl std::fmt::Display for CorruptInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("corrupt compressed data")
    }
}
impl std::error::Error for CorruptInput {}

/// Marks the decompressed stream passing the feed's `max_inflated_bytes` (the limit).
#[derive(Debug)]
struct InflatedPastLimit(u64);
impl std::fmt::Display for InflatedPastLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decompressed data over the limit of {} bytes", self.0)
    }
}
impl std::error::Error for InflatedPastLimit {}

/// Hands out at most `limit` bytes of the decompressed stream; asked for more while the
/// stream has more, it fails (and keeps failing) instead: a small object that inflates to
/// gigabytes is refused after `limit + 1` bytes, not read to its end.
struct Limited<R> {
    inner: R,
    limit: u64,
    total: u64,
}
impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.total > self.limit {
            return Err(past_limit(self.limit));
        }
        // one byte past the limit is enough to know the stream is over it
        let room = (self.limit - self.total).saturating_add(1);
        let n = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
        let got = self.inner.read(&mut buf[..n])?;
        self.total += got as u64;
        if self.total > self.limit {
            return Err(past_limit(self.limit));
        }
        Ok(got)
    }
}

fn past_limit(limit: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, InflatedPastLimit(limit))
}

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

/// Open a byte stream: transparently gunzips (by magic bytes) and skips a UTF-8 BOM. A
/// gzip stream that inflates to more than `max_inflated_bytes` fails with
/// [`FileRejection::InflatedTooLarge`] once that many bytes have been read from it.
pub fn open_stream<R: Read + Send + 'static>(
    inner: R,
    buf_size: usize,
    max_inflated_bytes: u64,
) -> Result<Box<dyn Read + Send>, ReadError> {
    let failed = Arc::new(AtomicBool::new(false));
    let watched = Watch {
        inner,
        failed: failed.clone(),
    };
    let mut br = BufReader::with_capacity(buf_size, watched);
    let head = fill_at_least(&mut br, 2)?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        // the limit outside the decoder's wrapper: its error is not the data's corruption
        let gz = Limited {
            inner: Decoded {
                inner: flate2::read::MultiGzDecoder::new(br),
                source_failed: failed,
            },
            limit: max_inflated_bytes,
            total: 0,
        };
        let mut inner = BufReader::with_capacity(buf_size, gz);
        skip_bom(&mut inner).map_err(io_error)?;
        return Ok(Box::new(inner));
    }
    skip_bom(&mut br)?;
    Ok(Box::new(br))
}

pub(super) fn io_error(e: std::io::Error) -> ReadError {
    match e.get_ref() {
        Some(i) if i.is::<CorruptInput>() => ReadError::Rejected(FileRejection::CorruptCompression),
        Some(i) => match i.downcast_ref::<InflatedPastLimit>() {
            Some(&InflatedPastLimit(limit)) => {
                ReadError::Rejected(FileRejection::InflatedTooLarge { limit })
            }
            None => ReadError::Io(e),
        },
        None => ReadError::Io(e),
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
