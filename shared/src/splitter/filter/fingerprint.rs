//! Fingerprints of a row: the key fingerprint (xxh3-64 of the key columns' values in the
//! feed's key order, length-prefixed so `("ab","c")` and `("a","bc")` differ) and the content
//! fingerprint (the compared columns' values in column-*name* order, length-prefixed, seeded
//! with a hash of those names); and the record key the API sees.

use super::plan::ColumnPlan;
use crate::splitter::source::{is_blank_key, Record};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const KEY_SEED: u64 = 0x6361_7365_6665_6564; // "casefeed"

/// Reusable scratch space for fingerprinting.
#[derive(Default)]
pub struct Fingerprinter {
    buf: Vec<u8>,
}

#[inline]
fn hash_fields(buf: &mut Vec<u8>, rec: &Record, idx: &[usize], seed: u64) -> u64 {
    // the bytes hashed: each value, length-prefixed, in `idx` order; written into a buffer
    // sized once (no growth checks per field)
    let need = rec.data_len() + 4 * idx.len();
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let mut w = 0;
    for &i in idx {
        let f = &rec[i];
        buf[w..w + 4].copy_from_slice(&(f.len() as u32).to_le_bytes());
        w += 4;
        buf[w..w + f.len()].copy_from_slice(f);
        w += f.len();
    }
    xxh3_64_with_seed(&buf[..w], seed)
}

/// The key fingerprint: the key values as the plan gives them ([`ColumnPlan::key_values`]),
/// length-prefixed, in key order — hashed as [`hash_fields`] hashes the same bytes.
#[inline]
fn hash_key(buf: &mut Vec<u8>, plan: &ColumnPlan, rec: &Record) -> u64 {
    // the buffer only grows (as in `hash_fields`): no clearing and refilling per row
    let need = rec.data_len() + 4 * plan.key_idx.len();
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let mut w = 0;
    for v in plan.key_values(rec) {
        buf[w..w + 4].copy_from_slice(&(v.len() as u32).to_le_bytes());
        w += 4;
        buf[w..w + v.len()].copy_from_slice(v);
        w += v.len();
    }
    xxh3_64_with_seed(&buf[..w], KEY_SEED)
}

/// Fingerprints of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    /// The key fingerprint: which record the row is.
    pub key: u64,
    /// Compared with the snapshot's content fingerprint.
    pub compare: u64,
    /// Stored in the new snapshot.
    pub store: u64,
    /// The row's [`crate::splitter::source::line_hash`] (0: none), stored in the new snapshot.
    pub line: u64,
}

impl Fingerprinter {
    /// The fingerprints of one row under `plan`.
    #[inline]
    pub fn fingerprints(&mut self, plan: &ColumnPlan, rec: &Record) -> Fingerprints {
        let key = hash_key(&mut self.buf, plan, rec);
        let compare = hash_fields(&mut self.buf, rec, &plan.compare_idx, plan.compare_seed);
        let store = if plan.same_sets() {
            compare
        } else {
            hash_fields(&mut self.buf, rec, &plan.store_idx, plan.store_seed)
        };
        Fingerprints {
            key,
            compare,
            store,
            line: rec.line_hash(),
        }
    }
}

/// The record key as the API sees it: the key value, or for a composite key the values
/// joined with `|` (a `|` or `\\` inside a value is escaped with `\\`, so distinct keys
/// never share a record key); trimmed with the feed's `trim_keys`.
pub fn record_key(plan: &ColumnPlan, rec: &Record) -> String {
    let mut b = Vec::new();
    write_record_key(plan, rec, &mut b);
    // valid: written from `from_utf8_lossy` strings and ASCII separators
    String::from_utf8(b).unwrap_or_default()
}

/// [`record_key`], appended to `out` as bytes (no allocation of its own): how the state's
/// table of record keys is filled.
/// A key column the record lacks (a rejected row's) counts as empty.
pub fn write_record_key(plan: &ColumnPlan, rec: &Record, out: &mut Vec<u8>) {
    if plan.key_idx.len() == 1 {
        for v in plan.key_values(rec) {
            out.extend_from_slice(String::from_utf8_lossy(v).as_bytes());
        }
        return;
    }
    for (n, v) in plan.key_values(rec).enumerate() {
        if n > 0 {
            out.push(b'|');
        }
        let v = String::from_utf8_lossy(v);
        if !v.contains(['|', '\\']) {
            out.extend_from_slice(v.as_bytes());
            continue;
        }
        for ch in v.chars() {
            if ch == '|' || ch == '\\' {
                out.push(b'\\');
            }
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// The key fingerprint of a record whose key columns are readable (for rows rejected for
/// other reasons), `None` when a key column is missing, empty or only whitespace. The same
/// as [`Fingerprints::key`] of a usable row with these key values.
pub fn key_fp(plan: &ColumnPlan, rec: &Record, fp: &mut Fingerprinter) -> Option<u64> {
    if plan
        .key_idx
        .iter()
        .any(|&i| rec.get(i).is_none_or(is_blank_key))
    {
        return None;
    }
    Some(hash_key(&mut fp.buf, plan, rec))
}
