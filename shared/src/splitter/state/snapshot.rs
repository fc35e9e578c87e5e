//! The feed's fingerprint snapshot: what the last accepted file contained, in 32 bytes a row
//! plus the row's record key.
//!
//! Layout (all integers little-endian):
//! ```text
//! "CFSNAP" 0x00 0x03          8 bytes: magic + format version
//! header_len: u32             length of the JSON header that follows
//! header: JSON                SnapshotHeader (feed, hashed columns, source object, row count)
//! row_count: u64
//! row_count × { key_fp: u64, content_fp: u64, chain: u64, line: u64 }   sorted by key_fp, unique
//! names_len: u64              bytes of the record keys below
//! row_count × end: u32        where each row's record key ends in them (it starts where the
//!                             previous row's ends; an empty one is unnamed)
//! names: names_len bytes      every row's record key (UTF-8), in entry order
//! checksum: u64               xxh3-64 of every byte before it
//! ```
//! `chain` summarises the record's history of contents (see [`next_chain`]): it makes the
//! idempotency key of a transition unique over the record's life, so A→B, B→A, A→B again
//! get three different keys while a re-run of the same transition gets the same one.
//!
//! `line` is the print of the row's raw line as the file had it ([`crate::splitter::source::line_print`]:
//! the line's hash with the feed's ignored columns cut out; 0 when the record was not one
//! plain line). The next file's identical lines are then known unchanged
//! without splitting or fingerprinting them ([`KnownLines`]) — valid only while the header
//! and the feed's row settings stay the same, which the header's `line_context` records.
//!
//! The record keys (the `record_key` a message carries, [`crate::splitter::filter::record_key`])
//! name the records a later file removes; the fingerprints alone cannot. They are loaded as
//! two allocations ([`KeyNames`]: the bytes and the offsets), never a `String` per row, and a
//! key is resolved only to name a removed record or to write the next state — where a row
//! known by its line takes its key from this table by position, without the row being split.
//!
//! Formats 1 (24-byte entries, no line hashes) and 2 (no record keys) are still read: a
//! format 1 state's rows take the full path once; so do a format 2 state's (its rows' record
//! keys are read from the file), and the records such a state loses cannot be named, only
//! counted. The snapshot the run writes is format 3.
//!
//! A file that is truncated, has a wrong magic/version/checksum, or belongs to another feed
//! is an error: it is never treated as empty.
//!
//! [`KnownLines`]: super::KnownLines

use super::names::{decode_names, encode_name_runs, encode_names, KeyNames, NameRef};
use super::next_state::NextState;
use crate::contract::envelope::next_chain;
use crate::contract::source::SourceObject;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// The first 8 bytes of a snapshot this build writes: `CFSNAP`, 0, the format version.
pub const MAGIC: &[u8; 8] = b"CFSNAP\x00\x03";
/// The magic of format 2 snapshots (read, never written).
const MAGIC_V2: &[u8; 8] = b"CFSNAP\x00\x02";
/// The magic of format 1 snapshots (read, never written).
const MAGIC_V1: &[u8; 8] = b"CFSNAP\x00\x01";
const ENTRY_BYTES: usize = 32;
const ENTRY_BYTES_V1: usize = 24;

/// One row of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The record's key fingerprint.
    pub key: u64,
    /// The record's content fingerprint (of the hashed columns).
    pub content: u64,
    /// The record's history chain ([`next_chain`]).
    pub chain: u64,
    /// The print of the row's raw line ([`crate::splitter::source::line_print`]), 0 when unknown.
    pub line: u64,
}

impl From<(u64, u64)> for Entry {
    /// A record seen for the first time with this content.
    fn from((key, content): (u64, u64)) -> Entry {
        Entry {
            key,
            content,
            chain: next_chain(None, content),
            line: 0,
        }
    }
}
/// The generation the next committed run gives the state, and the version its messages
/// carry: one more than the state's (1 for a feed's first state).
pub fn next_generation(state: Option<&Snapshot>) -> u64 {
    state.map_or(0, |s| s.header.generation).saturating_add(1)
}

/// The snapshot format this build writes (formats 1 and 2 are still read).
pub const FORMAT_VERSION: u32 = 3;
const MAX_HEADER_LEN: usize = 16 * 1024 * 1024;

/// Why a snapshot cannot be read or written. A snapshot that cannot be read is never taken
/// for an empty state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot, or a format this build does not read.
    #[error("snapshot is not a casefeed snapshot (bad magic or unsupported format version)")]
    BadMagic,
    /// The bytes end early; says which part is cut.
    #[error("snapshot is truncated ({0})")]
    Truncated(&'static str),
    /// The checksum does not match: the object is corrupt.
    #[error("snapshot checksum mismatch: the object is corrupt")]
    Checksum,
    /// The JSON header cannot be read (or its length is implausible).
    #[error("snapshot header is unreadable: {0}")]
    Header(String),
    /// The snapshot is another feed's state.
    #[error("snapshot belongs to feed `{found}`, expected `{expected}`")]
    ForeignFeed {
        /// The feed that read it.
        expected: String,
        /// The feed it belongs to.
        found: String,
    },
    /// The entries are not sorted by key fingerprint, or a key repeats.
    #[error("snapshot entries are not sorted and unique")]
    Unsorted,
    /// The header's row count, the count field and the number of entries disagree.
    #[error("snapshot row count {header} does not match {entries} entries")]
    Count {
        /// The header's row count.
        header: u64,
        /// Entries in the file.
        entries: u64,
    },
    /// The header could not be encoded as JSON.
    #[error("snapshot header could not be encoded: {0}")]
    Encode(String),
}

/// The snapshot's JSON header: whose state it is and what it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The snapshot format ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The feed whose state it is.
    pub feed: String,
    /// The feed's key columns when it was written, in key order.
    pub key_columns: Vec<String>,
    /// The columns whose values make up each content fingerprint, sorted by name.
    pub hashed_columns: Vec<String>,
    /// The export the state came from.
    pub source: SourceObject,
    /// Rows in the snapshot.
    pub row_count: u64,
    /// When it was written (RFC 3339, ms).
    pub created_at: String,
    /// The run that produced this snapshot.
    pub run: String,
    /// How many runs have committed the feed's state, this one included: the version every
    /// message of that run carried (0 in snapshots written before versions existed).
    #[serde(default)]
    pub generation: u64,
    /// What the entries' line hashes are valid for (see [`crate::splitter::state::line_context`]);
    /// `None` when they are not to be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_context: Option<String>,
}

/// A loaded snapshot with a radix index over the top bits of the key fingerprints (about
/// four keys per bucket, so a lookup touches one or two cache lines of keys), and each row's
/// content and chain side by side (one more cache line).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What the snapshot is of.
    pub header: SnapshotHeader,
    keys: Vec<u64>,
    /// `[content, chain]` per row.
    vals: Vec<[u64; 2]>,
    /// The line hash per row (0: none).
    lines: Vec<u64>,
    /// Each row's record key; `None` when the snapshot has none (formats 1 and 2).
    names: Option<Arc<KeyNames>>,
    index: Vec<u32>,
    index_bits: u32,
}

fn index_bits(n: usize) -> u32 {
    // ~4 keys per bucket; 2^8 ..= 2^24 buckets (64 MiB of index at most)
    let want = (n / 4).max(1).next_power_of_two().trailing_zeros();
    want.clamp(8, 24)
}

fn build_index(keys: &[u64], bits: u32) -> Vec<u32> {
    let buckets = 1usize << bits;
    let mut index = vec![0u32; buckets + 1];
    // counts, then prefix sums: index[b] = first position whose top bits >= b
    for k in keys {
        index[(k >> (64 - bits)) as usize + 1] += 1;
    }
    for b in 0..buckets {
        index[b + 1] += index[b];
    }
    index
}

impl Snapshot {
    /// Build from entries (any order); duplicates by key keep the first occurrence.
    pub fn from_entries<E: Into<Entry>>(
        header: SnapshotHeader,
        entries: impl IntoIterator<Item = E>,
    ) -> Snapshot {
        let mut entries: Vec<Entry> = entries.into_iter().map(Into::into).collect();
        entries.sort_by_key(|e| e.key); // stable: the first occurrence of a key stays first
        entries.dedup_by_key(|e| e.key);
        let state = NextState {
            keys: entries.iter().map(|e| e.key).collect(),
            vals: entries.iter().map(|e| [e.content, e.chain]).collect(),
            lines: entries.iter().map(|e| e.line).collect(),
            names: vec![NameRef::NONE; entries.len()],
            ..NextState::default()
        };
        drop(entries);
        Snapshot::from_state(header, state)
    }

    /// Build from entries (any order) with each row's record key; duplicates by key keep the
    /// first occurrence.
    pub fn from_named_entries<N: AsRef<[u8]>>(
        header: SnapshotHeader,
        entries: impl IntoIterator<Item = (Entry, N)>,
    ) -> Snapshot {
        let mut entries: Vec<(Entry, N)> = entries.into_iter().collect();
        entries.sort_by_key(|e| e.0.key);
        entries.dedup_by_key(|e| e.0.key);
        let mut file_names = KeyNames::default();
        let names = entries
            .iter()
            .map(|(_, n)| NameRef::file(file_names.push(n.as_ref())))
            .collect();
        let state = NextState {
            keys: entries.iter().map(|e| e.0.key).collect(),
            vals: entries.iter().map(|e| [e.0.content, e.0.chain]).collect(),
            lines: entries.iter().map(|e| e.0.line).collect(),
            names,
            old_names: None,
            file_names,
        };
        Snapshot::from_state(header, state)
    }

    /// Build from a diff's sorted state (no sort needed). The record keys are copied into
    /// the snapshot's own table (none when no row has one).
    pub fn from_state(header: SnapshotHeader, state: NextState) -> Snapshot {
        let names = (state.names.iter().any(|&n| n != NameRef::NONE)).then(|| {
            let mut table = KeyNames::with_capacity(state.len(), 0);
            for i in 0..state.len() {
                table.push(state.name(i).unwrap_or_default());
            }
            Arc::new(table)
        });
        let NextState {
            keys, vals, lines, ..
        } = state;
        let mut header = header;
        header.row_count = keys.len() as u64;
        let index_bits = index_bits(keys.len());
        let index = build_index(&keys, index_bits);
        Snapshot {
            header,
            keys,
            vals,
            lines,
            names,
            index,
            index_bits,
        }
    }

    /// The encoded snapshot of a diff's state, without building its index (the splitter
    /// writes the state; it does not look anything up in it). The state is consumed: its
    /// fingerprints are freed once written, before the record keys are, so the state and
    /// its encoding are not both whole in memory.
    pub fn encode_state(
        header: &SnapshotHeader,
        state: NextState,
    ) -> Result<Vec<u8>, SnapshotError> {
        let mut header = header.clone();
        header.row_count = state.keys.len() as u64;
        header.format = FORMAT_VERSION;
        let names_len: usize = (0..state.len())
            .map(|i| state.name(i).map_or(0, <[u8]>::len))
            .sum();
        let (keys, vals, lines) = (&state.keys, &state.vals, &state.lines);
        let mut out = encode_entries(&header, MAGIC, keys, vals, lines, names_len)?;
        let NextState {
            keys,
            vals,
            lines,
            names,
            old_names,
            file_names,
        } = state;
        drop((keys, vals, lines));
        let old = old_names.as_deref();
        if u32::try_from(names_len).is_ok() {
            encode_name_runs(&mut out, &names, old, &file_names);
        } else {
            let name = |i: usize| names[i].resolve(old, &file_names);
            encode_names(&mut out, names.len(), name);
        }
        seal(&mut out);
        Ok(out)
    }

    /// The record keys, by position; `None` when the snapshot has none (format 1 or 2): its
    /// removed records cannot be named, and a row of it known by its line would have none.
    pub fn names(&self) -> Option<&Arc<KeyNames>> {
        self.names.as_ref()
    }

    /// The record key at a position; `None` when the row is unnamed.
    pub fn name_at(&self, pos: usize) -> Option<&[u8]> {
        self.names.as_ref()?.get(pos)
    }

    /// Rows in the snapshot.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Position of a key fingerprint, if present.
    #[inline]
    pub fn position(&self, key: u64) -> Option<usize> {
        let b = (key >> (64 - self.index_bits)) as usize;
        let lo = self.index[b] as usize;
        let hi = self.index[b + 1] as usize;
        let slice = &self.keys[lo..hi];
        slice.binary_search(&key).ok().map(|i| lo + i)
    }

    /// Positions of many keys at once. Each step runs over the whole batch, so the CPU has
    /// many independent memory loads in flight instead of one cache miss after another
    /// (a snapshot does not stay in cache while a file streams through it).
    pub fn positions(
        &self,
        keys: &[u64],
        ranges: &mut Vec<(u32, u32)>,
        out: &mut Vec<Option<usize>>,
    ) {
        ranges.clear();
        out.clear();
        let shift = 64 - self.index_bits;
        for &k in keys {
            let b = (k >> shift) as usize;
            ranges.push((self.index[b], self.index[b + 1]));
        }
        for (&k, &(lo, hi)) in keys.iter().zip(ranges.iter()) {
            let (lo, hi) = (lo as usize, hi as usize);
            out.push(
                self.keys[lo..hi]
                    .iter()
                    .position(|&x| x >= k)
                    .filter(|&i| self.keys[lo + i] == k)
                    .map(|i| lo + i),
            );
        }
    }

    /// `[content, chain]` at a position.
    #[inline]
    pub fn vals_at(&self, pos: usize) -> [u64; 2] {
        self.vals[pos]
    }

    /// The content fingerprint at a position.
    #[inline]
    pub fn content_at(&self, pos: usize) -> u64 {
        self.vals[pos][0]
    }

    /// The key fingerprint at a position.
    #[inline]
    pub fn keys_at(&self, pos: usize) -> u64 {
        self.keys[pos]
    }

    /// The history chain at a position.
    #[inline]
    pub fn chain_at(&self, pos: usize) -> u64 {
        self.vals[pos][1]
    }

    /// The line hash at a position (0: none).
    #[inline]
    pub fn line_at(&self, pos: usize) -> u64 {
        self.lines[pos]
    }

    /// Every row's line hash, by position.
    pub fn lines(&self) -> &[u64] {
        &self.lines
    }

    /// The content fingerprint stored for a key.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.position(key).map(|p| self.vals[p][0])
    }

    /// The entry of a key fingerprint, if present.
    pub fn entry(&self, key: u64) -> Option<Entry> {
        self.position(key).map(|p| Entry {
            key,
            content: self.vals[p][0],
            chain: self.vals[p][1],
            line: self.lines[p],
        })
    }

    /// `(key, content)` pairs in key order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.keys
            .iter()
            .copied()
            .zip(self.vals.iter().map(|v| v[0]))
    }

    /// Full entries in key order.
    pub fn all_entries(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.keys.len()).map(|i| Entry {
            key: self.keys[i],
            content: self.vals[i][0],
            chain: self.vals[i][1],
            line: self.lines[i],
        })
    }

    /// The snapshot's bytes, in the current format.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let names = self.names.as_deref();
        let name = |i: usize| names.and_then(|n| n.get(i));
        let names_len = names.map_or(0, KeyNames::bytes);
        let mut header = self.header.clone();
        header.format = FORMAT_VERSION;
        let (keys, vals, lines) = (&self.keys, &self.vals, &self.lines);
        let mut out = encode_entries(&header, MAGIC, keys, vals, lines, names_len)?;
        encode_names(&mut out, self.keys.len(), name);
        seal(&mut out);
        Ok(out)
    }

    /// The bytes a format 2 build would have written for this snapshot (no record keys): for
    /// the tests of reading an older state.
    #[cfg(test)]
    pub(crate) fn encode_format_2(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.format = 2;
        let mut out = encode_entries(&header, MAGIC_V2, &self.keys, &self.vals, &self.lines, 0)
            .unwrap_or_default();
        seal(&mut out);
        out
    }

    /// Decode and verify. `expected_feed` guards against reading another feed's state.
    pub fn decode(bytes: &[u8], expected_feed: Option<&str>) -> Result<Snapshot, SnapshotError> {
        let (format, entry_bytes) = match bytes.get(..8) {
            Some(m) if m == MAGIC => (FORMAT_VERSION, ENTRY_BYTES),
            Some(m) if m == MAGIC_V2 => (2, ENTRY_BYTES),
            Some(m) if m == MAGIC_V1 => (1, ENTRY_BYTES_V1),
            _ => return Err(SnapshotError::BadMagic),
        };
        if bytes.len() < 8 + 4 + 8 + 8 {
            return Err(SnapshotError::Truncated("shorter than the fixed fields"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let mut sum_b = [0u8; 8];
        sum_b.copy_from_slice(sum);
        if xxh3_64(body) != u64::from_le_bytes(sum_b) {
            return Err(SnapshotError::Checksum);
        }
        let read_u32 = |at: usize| -> Result<u32, SnapshotError> {
            let s = body
                .get(at..at + 4)
                .ok_or(SnapshotError::Truncated("header length"))?;
            let mut b = [0u8; 4];
            b.copy_from_slice(s);
            Ok(u32::from_le_bytes(b))
        };
        let read_u64 = |at: usize| -> Result<u64, SnapshotError> {
            let s = body
                .get(at..at + 8)
                .ok_or(SnapshotError::Truncated("u64 field"))?;
            let mut b = [0u8; 8];
            b.copy_from_slice(s);
            Ok(u64::from_le_bytes(b))
        };
        let hlen = read_u32(8)? as usize;
        if hlen > MAX_HEADER_LEN {
            return Err(SnapshotError::Header("header length is implausible".into()));
        }
        let hjson = body
            .get(12..12 + hlen)
            .ok_or(SnapshotError::Truncated("header"))?;
        let header: SnapshotHeader =
            serde_json::from_slice(hjson).map_err(|e| SnapshotError::Header(e.to_string()))?;
        if header.format != format {
            return Err(SnapshotError::BadMagic);
        }
        if let Some(feed) = expected_feed {
            if header.feed != feed {
                return Err(SnapshotError::ForeignFeed {
                    expected: feed.to_string(),
                    found: header.feed.clone(),
                });
            }
        }
        let count_at = 12 + hlen;
        let count = read_u64(count_at)?;
        let entries_at = count_at + 8;
        let rest = &body[entries_at.min(body.len())..];
        // format 3: exactly `count` entries, then the record keys; before: entries to the end
        let (entries_bytes, names_bytes) = if format >= 3 {
            let len = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(entry_bytes))
                .filter(|&len| len <= rest.len())
                .ok_or(SnapshotError::Truncated("entries"))?;
            let (e, n) = rest.split_at(len);
            (e, Some(n))
        } else {
            (rest, None)
        };
        if entries_bytes.len() % entry_bytes != 0 {
            return Err(SnapshotError::Truncated("entries"));
        }
        let n = (entries_bytes.len() / entry_bytes) as u64;
        if n != count || header.row_count != count {
            return Err(SnapshotError::Count {
                header: header.row_count,
                entries: n,
            });
        }
        let names = match names_bytes {
            Some(b) => decode_names(b, n as usize)?,
            None => None,
        };
        let mut keys = Vec::with_capacity(n as usize);
        let mut vals = Vec::with_capacity(n as usize);
        let mut lines = Vec::with_capacity(n as usize);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        for ch in entries_bytes.chunks_exact(entry_bytes) {
            keys.push(word(&ch[..8]));
            vals.push([word(&ch[8..16]), word(&ch[16..24])]);
            lines.push(if format == 1 { 0 } else { word(&ch[24..32]) });
        }
        let mut header = header;
        if format == 1 {
            // a format 1 snapshot has no line hashes; the next run writes them
            header.line_context = None;
        }
        // read as the current format: without record keys (format 1 or 2) it has no names
        header.format = FORMAT_VERSION;
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SnapshotError::Unsorted);
        }
        let index_bits = index_bits(keys.len());
        let index = build_index(&keys, index_bits);
        Ok(Snapshot {
            header,
            keys,
            vals,
            lines,
            names: names.map(Arc::new),
            index,
            index_bits,
        })
    }
}

/// `magic`, the header (as given) and the entries, into a buffer with room for the record
/// keys (`names_len` bytes of them) and the checksum.
fn encode_entries(
    header: &SnapshotHeader,
    magic: &[u8; 8],
    keys: &[u64],
    vals: &[[u64; 2]],
    lines: &[u64],
    names_len: usize,
) -> Result<Vec<u8>, SnapshotError> {
    let header = serde_json::to_vec(header).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let header_len = u32::try_from(header.len())
        .map_err(|_| SnapshotError::Encode("the header is larger than 4 GiB".into()))?;
    let n = keys.len();
    let cap = 8 + 4 + header.len() + 8 + n * ENTRY_BYTES + 8 + n * 4 + names_len + 8;
    let mut out = Vec::with_capacity(cap);
    out.extend_from_slice(magic);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(n as u64).to_le_bytes());
    for ((k, v), l) in keys.iter().zip(vals).zip(lines) {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&v[0].to_le_bytes());
        out.extend_from_slice(&v[1].to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
    }
    Ok(out)
}

/// The checksum after every byte of an encoded snapshot: their xxh3-64.
fn seal(out: &mut Vec<u8>) {
    let sum = xxh3_64(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// A hint to bring `x`'s cache line in (no effect on other architectures).
#[inline(always)]
pub(crate) fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults and `x` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header(feed: &str) -> SnapshotHeader {
        SnapshotHeader {
            format: FORMAT_VERSION,
            feed: feed.into(),
            key_columns: vec!["id".into()],
            hashed_columns: vec!["a".into(), "b".into()],
            source: SourceObject {
                bucket: "b".into(),
                key: "incoming/f/x.csv".into(),
                etag: Some("\"abc\"".into()),
                ..Default::default()
            },
            row_count: 0,
            created_at: "2026-01-01T00:00:00Z".into(),
            run: "r1".into(),
            line_context: None,
            generation: 0,
        }
    }

    pub(crate) fn sample(n: u64) -> Snapshot {
        let entries: Vec<(u64, u64)> = (0..n)
            .map(|i| {
                (
                    xxh3_64(&i.to_le_bytes()),
                    xxh3_64(&(i * 7 + 1).to_le_bytes()),
                )
            })
            .collect();
        Snapshot::from_entries::<(u64, u64)>(header("f"), entries)
    }

    #[test]
    fn round_trip_and_lookup() {
        let s = sample(10_000);
        let bytes = s.encode().unwrap();
        // unnamed rows: an offset each, no key bytes
        assert_eq!(
            bytes.len(),
            8 + 4
                + serde_json::to_vec(&s.header).unwrap().len()
                + 8
                + 32 * 10_000
                + 8
                + 4 * 10_000
                + 8
        );
        let d = Snapshot::decode(&bytes, Some("f")).unwrap();
        assert!(d.names().is_none(), "no row named: no names to offer");
        assert_eq!(d.header, s.header);
        assert_eq!(d.len(), 10_000);
        for i in 0..10_000u64 {
            let k = xxh3_64(&i.to_le_bytes());
            assert_eq!(d.get(k), Some(xxh3_64(&(i * 7 + 1).to_le_bytes())));
        }
        assert_eq!(d.get(12345), None);
        let k = xxh3_64(&5u64.to_le_bytes());
        assert_eq!(
            d.entry(k).unwrap().chain,
            next_chain(None, d.get(k).unwrap())
        );
        assert_ne!(next_chain(None, 1), next_chain(Some(0), 1));
        assert_ne!(
            next_chain(Some(next_chain(None, 1)), 2),
            next_chain(None, 2)
        );
        assert_eq!(d.get(0), None);
        assert_eq!(d.get(u64::MAX), None);
    }

    #[test]
    fn format_1_snapshots_are_read_without_line_hashes() {
        // a format 1 snapshot as the previous release wrote it: 24-byte entries
        let mut h = header("f");
        h.format = 1;
        let hjson = serde_json::to_vec(&h).unwrap();
        let mut b = MAGIC_V1.to_vec();
        b.extend_from_slice(&(hjson.len() as u32).to_le_bytes());
        b.extend_from_slice(&hjson);
        let mut keys: Vec<u64> = (0..100u64).map(|i| xxh3_64(&i.to_le_bytes())).collect();
        keys.sort_unstable();
        b.extend_from_slice(&100u64.to_le_bytes());
        for (i, k) in keys.iter().enumerate() {
            for w in [*k, i as u64, next_chain(None, i as u64)] {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        // the header says 0 rows: fix it the way the writer did
        let mut h100 = h.clone();
        h100.row_count = 100;
        let hjson100 = serde_json::to_vec(&h100).unwrap();
        let mut b100 = MAGIC_V1.to_vec();
        b100.extend_from_slice(&(hjson100.len() as u32).to_le_bytes());
        b100.extend_from_slice(&hjson100);
        b100.extend_from_slice(&b[8 + 4 + hjson.len()..]);
        let sum = xxh3_64(&b100);
        b100.extend_from_slice(&sum.to_le_bytes());

        let d = Snapshot::decode(&b100, Some("f")).unwrap();
        assert_eq!(d.len(), 100);
        assert_eq!(d.header.format, FORMAT_VERSION);
        assert_eq!(d.header.line_context, None);
        for (i, k) in keys.iter().enumerate() {
            let e = d.entry(*k).unwrap();
            assert_eq!((e.content, e.line), (i as u64, 0));
        }
        // re-encoded, it is the current format
        let re = d.encode().unwrap();
        assert_eq!(&re[..8], MAGIC);
        let again = Snapshot::decode(&re, Some("f")).unwrap();
        assert_eq!(
            again.all_entries().collect::<Vec<_>>(),
            d.all_entries().collect::<Vec<_>>()
        );
        // a format 1 header in a format 2 file (or the other way round) is refused
        let mut wrong = b100.clone();
        wrong[..8].copy_from_slice(MAGIC);
        let n = wrong.len();
        let sum = xxh3_64(&wrong[..n - 8]);
        wrong[n - 8..].copy_from_slice(&sum.to_le_bytes());
        assert!(Snapshot::decode(&wrong, Some("f")).is_err());
    }

    pub(crate) fn named(n: u64) -> Snapshot {
        let entries = (0..n).map(|i| {
            let e = Entry {
                key: xxh3_64(&i.to_le_bytes()),
                content: i,
                chain: next_chain(None, i),
                line: i + 1,
            };
            (e, format!("LR-{i:08}"))
        });
        Snapshot::from_named_entries(header("f"), entries)
    }

    #[test]
    fn record_keys_round_trip_by_position_in_a_blob_and_offsets() {
        let s = named(1_000);
        let bytes = s.encode().unwrap();
        let hlen = serde_json::to_vec(&s.header).unwrap().len();
        assert_eq!(
            bytes.len(),
            8 + 4 + hlen + 8 + 1_000 * (32 + 4 + 11) + 8 + 8
        );
        assert_eq!(&bytes[..8], b"CFSNAP\x00\x03");
        let d = Snapshot::decode(&bytes, Some("f")).unwrap();
        assert_eq!(d.header.format, 3);
        for i in 0..1_000u64 {
            let pos = d.position(xxh3_64(&i.to_le_bytes())).unwrap();
            assert_eq!(d.name_at(pos), Some(format!("LR-{i:08}").as_bytes()));
            assert_eq!(d.line_at(pos), i + 1);
        }
        assert_eq!(d.encode().unwrap(), bytes, "re-encoded byte for byte");
        // a next state made of it writes the same names without copying them per row
        let state = NextState {
            keys: (0..d.len()).map(|p| d.keys_at(p)).collect(),
            vals: (0..d.len()).map(|p| d.vals_at(p)).collect(),
            lines: d.lines().to_vec(),
            names: (0..d.len()).map(NameRef::old).collect(),
            old_names: d.names().cloned(),
            file_names: KeyNames::default(),
        };
        assert_eq!(Snapshot::encode_state(&d.header, state).unwrap(), bytes);
    }

    #[test]
    fn format_2_snapshots_are_read_without_record_keys() {
        // a format 2 snapshot as the previous release wrote it: 32-byte entries, nothing after
        let mut h = header("f");
        h.format = 2;
        h.row_count = 3;
        let hjson = serde_json::to_vec(&h).unwrap();
        let mut b = MAGIC_V2.to_vec();
        b.extend_from_slice(&(hjson.len() as u32).to_le_bytes());
        b.extend_from_slice(&hjson);
        b.extend_from_slice(&3u64.to_le_bytes());
        for k in [10u64, 20, 30] {
            for w in [k, k + 1, k + 2, k + 3] {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        let sum = xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        let d = Snapshot::decode(&b, Some("f")).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.header.format, FORMAT_VERSION);
        assert!(d.names().is_none());
        assert_eq!(d.name_at(0), None);
        assert_eq!(d.entry(20).unwrap().line, 23, "its line hashes are kept");
        assert_eq!(&d.encode().unwrap()[..8], MAGIC);
    }

    #[test]
    fn extreme_keys_and_empty() {
        let s = Snapshot::from_entries(header("f"), vec![(u64::MAX, 1), (0, 2), (0, 3)]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(0), Some(2), "first occurrence wins");
        assert_eq!(s.get(u64::MAX), Some(1));
        let e = Snapshot::from_entries(header("f"), Vec::<Entry>::new());
        let d = Snapshot::decode(&e.encode().unwrap(), Some("f")).unwrap();
        assert!(d.is_empty());
        assert_eq!(d.get(5), None);
    }

    #[test]
    fn corruption_is_an_error() {
        let bytes = sample(100).encode().unwrap();
        // every single-byte flip is detected
        for i in [
            0usize,
            9,
            20,
            bytes.len() / 2,
            bytes.len() - 9,
            bytes.len() - 1,
        ] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                Snapshot::decode(&b, Some("f")).is_err(),
                "flip at {i} undetected"
            );
        }
        // truncation
        for cut in [0usize, 7, 12, 40, bytes.len() - 1] {
            assert!(
                Snapshot::decode(&bytes[..cut], Some("f")).is_err(),
                "cut {cut}"
            );
        }
        assert_eq!(
            Snapshot::decode(b"", None).unwrap_err(),
            SnapshotError::BadMagic
        );
        assert_eq!(
            Snapshot::decode(b"hello world, not a snapshot at all", None).unwrap_err(),
            SnapshotError::BadMagic
        );
    }

    #[test]
    fn foreign_feed_is_an_error() {
        let bytes = sample(3).encode().unwrap();
        assert!(matches!(
            Snapshot::decode(&bytes, Some("other")),
            Err(SnapshotError::ForeignFeed { .. })
        ));
    }
}
