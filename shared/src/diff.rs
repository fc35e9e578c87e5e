//! Fingerprints and the row classifier.
//!
//! * key fingerprint = xxh3-64 of the key columns' values (in the feed's key order,
//!   length-prefixed so `("ab","c")` and `("a","bc")` differ);
//! * content fingerprint = xxh3-64 of the compared columns' values taken in column-*name*
//!   order (length-prefixed), seeded with a hash of those names. Reordering the file's
//!   columns changes nothing; ignored and key columns are left out.
//!
//! Schema drift: the comparison with the snapshot uses the snapshot's hashed columns that the
//! file still has; the new snapshot hashes all of the file's compared columns. An added
//! column therefore never makes a row "changed"; it only enters the fingerprint from then on.

use crate::config::FeedConfig;
use crate::rows::{FileRejection, Record};
use crate::snapshot::{next_chain, Entry, Snapshot};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

const KEY_SEED: u64 = 0x6361_7365_6665_6564; // "casefeed"

/// How a file's columns map onto fingerprints.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    pub key_idx: Vec<usize>,
    /// File positions of the columns compared with the snapshot, in name order.
    compare_idx: Vec<usize>,
    compare_seed: u64,
    /// File positions hashed into the new snapshot, in name order.
    store_idx: Vec<usize>,
    store_seed: u64,
    /// The new snapshot's hashed column names (sorted).
    pub hashed_columns: Vec<String>,
    /// Columns in the file that the snapshot did not hash (not ignored, not keys).
    pub added: Vec<String>,
    /// Columns the snapshot hashed that the file no longer has.
    pub removed: Vec<String>,
}

fn names_seed(names: &[&str]) -> u64 {
    let mut buf = Vec::new();
    for n in names {
        buf.extend_from_slice(&(n.len() as u32).to_le_bytes());
        buf.extend_from_slice(n.as_bytes());
    }
    xxh3_64(&buf)
}

impl ColumnPlan {
    /// `previous`: the snapshot's hashed columns, if there is a snapshot.
    pub fn new(
        header: &[String],
        feed: &FeedConfig,
        previous: Option<&[String]>,
    ) -> Result<ColumnPlan, FileRejection> {
        let key_idx = feed
            .key_columns
            .iter()
            .map(|k| header.iter().position(|h| h == k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                FileRejection::MissingRequired(
                    feed.key_columns
                        .iter()
                        .filter(|k| !header.contains(k))
                        .cloned()
                        .collect(),
                )
            })?;
        let mut store: Vec<(&str, usize)> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| !feed.key_columns.contains(h) && !feed.ignore_columns.contains(h))
            .map(|(i, h)| (h.as_str(), i))
            .collect();
        store.sort();
        let hashed_columns: Vec<String> = store.iter().map(|(n, _)| n.to_string()).collect();
        let (compare, added, removed) = match previous {
            None => (store.clone(), Vec::new(), Vec::new()),
            Some(prev) => {
                let compare: Vec<(&str, usize)> = store
                    .iter()
                    .filter(|(n, _)| prev.iter().any(|p| p == n))
                    .copied()
                    .collect();
                let added = store
                    .iter()
                    .filter(|(n, _)| !prev.iter().any(|p| p == n))
                    .map(|(n, _)| n.to_string())
                    .collect();
                let removed: Vec<String> = prev
                    .iter()
                    .filter(|p| !hashed_columns.contains(p))
                    .cloned()
                    .collect();
                (compare, added, removed)
            }
        };
        let compare_names: Vec<&str> = compare.iter().map(|(n, _)| *n).collect();
        let store_names: Vec<&str> = store.iter().map(|(n, _)| *n).collect();
        Ok(ColumnPlan {
            key_idx,
            compare_seed: names_seed(&compare_names),
            compare_idx: compare.iter().map(|(_, i)| *i).collect(),
            store_seed: names_seed(&store_names),
            store_idx: store.iter().map(|(_, i)| *i).collect(),
            hashed_columns,
            added,
            removed,
        })
    }

    /// False when a compared column of the snapshot is gone: the snapshot's fingerprints
    /// cover it, so existing rows cannot be compared (only new keys can be told apart).
    pub fn comparable(&self) -> bool {
        self.removed.is_empty()
    }

    /// True when the comparison and the new snapshot use the same columns (no drift).
    pub fn same_sets(&self) -> bool {
        self.compare_idx == self.store_idx
    }
}

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

/// Fingerprints of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPrints {
    pub key: u64,
    /// Compared with the snapshot's content fingerprint.
    pub compare: u64,
    /// Stored in the new snapshot.
    pub store: u64,
    /// The row's [`crate::snapshot::line_hash`] (0: none), stored in the new snapshot.
    pub line: u64,
}

/// What the line hashes of a snapshot are valid for: the file's columns in order and the
/// feed settings that decide, from a row's bytes alone, whether it is accepted and what its
/// fingerprints are. A row whose raw line hashes to a snapshot row's line hash under the same
/// context is that row, unchanged: same bytes, same columns, same rules. Anything else (a
/// reordered, added or renamed column, a changed key, ignore list or row limit) makes a
/// different context, and every row takes the full path once.
pub fn line_context(header: &[String], feed: &FeedConfig) -> String {
    let mut buf = Vec::new();
    let mut put = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        buf.extend_from_slice(b);
    };
    put(b"casefeed line context 1");
    for list in [header, &feed.key_columns[..], &feed.ignore_columns[..]] {
        put(&(list.len() as u32).to_le_bytes());
        for c in list {
            put(c.as_bytes());
        }
    }
    put(&(feed.max_row_bytes as u64).to_le_bytes());
    format!("{:016x}", xxh3_64(&buf))
}

impl Fingerprinter {
    #[inline]
    pub fn prints(&mut self, plan: &ColumnPlan, rec: &Record) -> RowPrints {
        let key = hash_fields(&mut self.buf, rec, &plan.key_idx, KEY_SEED);
        let compare = hash_fields(&mut self.buf, rec, &plan.compare_idx, plan.compare_seed);
        let store = if plan.same_sets() {
            compare
        } else {
            hash_fields(&mut self.buf, rec, &plan.store_idx, plan.store_seed)
        };
        RowPrints {
            key,
            compare,
            store,
            line: rec.line_hash(),
        }
    }
}

/// The record key as the API sees it: the key value, or for a composite key the values
/// joined with `|` (a `|` or `\\` inside a value is escaped with `\\`, so distinct keys
/// never share a record key).
pub fn record_key(plan: &ColumnPlan, rec: &Record) -> String {
    if let [i] = plan.key_idx[..] {
        return String::from_utf8_lossy(&rec[i]).into_owned();
    }
    let mut s = String::new();
    for (n, &i) in plan.key_idx.iter().enumerate() {
        if n > 0 {
            s.push('|');
        }
        for ch in String::from_utf8_lossy(&rec[i]).chars() {
            if ch == '|' || ch == '\\' {
                s.push('\\');
            }
            s.push(ch);
        }
    }
    s
}

/// The key fingerprint of a record whose key columns are readable (for rows rejected for
/// other reasons), `None` when a key column is missing or empty.
pub fn key_print(plan: &ColumnPlan, rec: &Record, fp: &mut Fingerprinter) -> Option<u64> {
    if plan
        .key_idx
        .iter()
        .any(|&i| rec.get(i).is_none_or(|f| f.is_empty()))
    {
        return None;
    }
    Some(hash_fields(&mut fp.buf, rec, &plan.key_idx, KEY_SEED))
}

/// How one row compares with the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    New,
    /// `previous`: the snapshot's content fingerprint; `chain`: its history summary.
    Changed {
        previous: u64,
        chain: u64,
    },
    Unchanged,
    /// The key already appeared earlier in this file; the first occurrence wins.
    Duplicate,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiffCounts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub removed: u64,
    pub duplicate: u64,
    /// Existing rows taken over without comparison because a compared column is gone
    /// (also counted as unchanged).
    #[serde(default)]
    pub rebaselined: u64,
    /// Unchanged rows recognised by their raw line alone (also counted as unchanged): the
    /// previous file had the same bytes, so they were neither split nor fingerprinted.
    #[serde(default)]
    pub known: u64,
}

/// Identity hasher for sets of fingerprints (already uniformly distributed).
#[derive(Default)]
pub struct FpHasher(u64);
impl Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
pub type FpSet = HashSet<u64, BuildHasherDefault<FpHasher>>;

/// Classifies rows against a snapshot while the file streams, and collects the entries of
/// the new snapshot.
pub struct Differ<'a> {
    snapshot: Option<&'a Snapshot>,
    comparable: bool,
    seen: Vec<u64>,
    new_keys: FpSet,
    /// Snapshot positions of records whose row was rejected (kept unless a valid row of the
    /// same record turns up later in the file).
    carried: Vec<usize>,
    /// Rows of keys the snapshot does not have.
    added: Vec<Entry>,
    /// Snapshot positions whose `[content, chain]` moves (changed rows; after schema drift,
    /// every row whose stored fingerprint moves to the new column set). Unchanged rows cost
    /// nothing: the new state is the snapshot merged with these and `added`, no sort of the
    /// whole file.
    updates: Vec<(u32, [u64; 2])>,
    /// The new line hash of every snapshot position, once one moves (until then the
    /// snapshot's own); all zero from the start when the snapshot's line hashes are not
    /// valid for this file.
    lines: Option<Vec<u64>>,
    counts: DiffCounts,
    scratch_keys: Vec<u64>,
    scratch_ranges: Vec<(u32, u32)>,
    scratch_pos: Vec<Option<usize>>,
    scratch_vals: Vec<[u64; 2]>,
}

impl<'a> Differ<'a> {
    /// `comparable`: [`ColumnPlan::comparable`]; when false, rows of known keys are taken
    /// over as unchanged (re-baselined) rather than compared. `same_lines`: the snapshot's
    /// line hashes are valid for this file (same [`line_context`]); when false, rows the file
    /// does not have a plain line for get none in the new state.
    pub fn new(
        snapshot: Option<&'a Snapshot>,
        expected_rows: usize,
        comparable: bool,
        same_lines: bool,
    ) -> Self {
        let n = snapshot.map(|s| s.len()).unwrap_or(0);
        Differ {
            lines: (!same_lines && n > 0).then(|| vec![0u64; n]),
            snapshot,
            comparable,
            seen: vec![0u64; n.div_ceil(64)],
            new_keys: FpSet::default(),
            carried: Vec::new(),
            added: Vec::with_capacity(if n == 0 { expected_rows } else { 1024 }),
            updates: Vec::new(),
            counts: DiffCounts::default(),
            scratch_keys: Vec::new(),
            scratch_ranges: Vec::new(),
            scratch_pos: Vec::new(),
            scratch_vals: Vec::new(),
        }
    }

    #[inline]
    pub fn classify(&mut self, p: RowPrints) -> Class {
        let pos = self.snapshot.and_then(|s| s.position(p.key));
        let vals = match (pos, self.snapshot) {
            (Some(pos), Some(s)) => s.vals_at(pos),
            _ => [0, 0],
        };
        self.classify_at(p, pos, vals)
    }

    /// Classify a batch of rows (in file order) into `out`; the same answers as calling
    /// [`Differ::classify`] on each, with the snapshot lookups overlapped.
    pub fn classify_batch(&mut self, prints: &[RowPrints], out: &mut Vec<Class>) {
        out.clear();
        let Some(s) = self.snapshot else {
            out.extend(prints.iter().map(|&p| self.classify_at(p, None, [0, 0])));
            return;
        };
        self.scratch_keys.clear();
        self.scratch_keys.extend(prints.iter().map(|p| p.key));
        s.positions(
            &self.scratch_keys,
            &mut self.scratch_ranges,
            &mut self.scratch_pos,
        );
        // each row's line hash is read or written too: fetch them with the values
        let lines = self.lines.as_deref().unwrap_or(s.lines());
        for &p in self.scratch_pos.iter().flatten() {
            crate::snapshot::prefetch(&lines[p]);
        }
        self.scratch_vals.clear();
        self.scratch_vals.extend(
            self.scratch_pos
                .iter()
                .map(|p| p.map(|p| s.vals_at(p)).unwrap_or([0, 0])),
        );
        let (pos, vals) = (
            std::mem::take(&mut self.scratch_pos),
            std::mem::take(&mut self.scratch_vals),
        );
        for ((&p, &at), &v) in prints.iter().zip(&pos).zip(&vals) {
            let c = self.classify_at(p, at, v);
            out.push(c);
        }
        (self.scratch_pos, self.scratch_vals) = (pos, vals);
    }

    /// A row whose raw line is the line of snapshot position `pos` (found by
    /// [`crate::snapshot::KnownLines`]): unchanged, or a duplicate when the record was
    /// already seen in this file.
    #[inline]
    pub fn known(&mut self, pos: usize) -> Class {
        let (w, bit) = (pos / 64, 1u64 << (pos % 64));
        if self.seen[w] & bit != 0 {
            self.counts.duplicate += 1;
            Class::Duplicate
        } else {
            self.seen[w] |= bit;
            self.counts.unchanged += 1;
            self.counts.known += 1;
            Class::Unchanged
        }
    }

    /// Record the line hash of a snapshot position's row in this file.
    #[inline]
    fn set_line(&mut self, pos: usize, line: u64) {
        let Some(s) = self.snapshot else { return };
        match self.lines.as_mut() {
            Some(l) => l[pos] = line,
            None if s.line_at(pos) != line => {
                let mut l = s.lines().to_vec();
                l[pos] = line;
                self.lines = Some(l);
            }
            None => {}
        }
    }

    #[inline]
    fn classify_at(&mut self, p: RowPrints, pos: Option<usize>, vals: [u64; 2]) -> Class {
        let class = match pos {
            Some(pos) => {
                let (w, bit) = (pos / 64, 1u64 << (pos % 64));
                if self.seen[w] & bit != 0 {
                    Class::Duplicate
                } else {
                    self.seen[w] |= bit;
                    let [prev, chain] = vals;
                    if !self.comparable {
                        self.counts.rebaselined += 1;
                        Class::Unchanged
                    } else if prev == p.compare {
                        Class::Unchanged
                    } else {
                        Class::Changed {
                            previous: prev,
                            chain,
                        }
                    }
                }
            }
            None => {
                if self.new_keys.insert(p.key) {
                    Class::New
                } else {
                    Class::Duplicate
                }
            }
        };
        match class {
            Class::New => self.counts.new += 1,
            Class::Changed { .. } => self.counts.changed += 1,
            Class::Unchanged => self.counts.unchanged += 1,
            Class::Duplicate => self.counts.duplicate += 1,
        }
        match (class, pos) {
            (Class::Duplicate, _) => {}
            (Class::New, _) | (_, None) => self.added.push(Entry {
                key: p.key,
                content: p.store,
                chain: next_chain(None, p.store),
                line: p.line,
            }),
            (Class::Changed { chain, .. }, Some(pos)) => {
                self.updates
                    .push((pos as u32, [p.store, next_chain(Some(chain), p.store)]));
                self.set_line(pos, p.line);
            }
            // unchanged: the history goes on as it was (the stored fingerprint may move to
            // a new column set after schema drift, the history does not)
            (Class::Unchanged, Some(pos)) => {
                if p.store != vals[0] {
                    self.updates.push((pos as u32, [p.store, vals[1]]));
                }
                self.set_line(pos, p.line);
            }
        }
        class
    }

    /// A row of this key was rejected: keep the record's previous state (it is not
    /// "removed", and comes back as unchanged when the row is fixed).
    pub fn carry(&mut self, key: u64) {
        let Some(s) = self.snapshot else { return };
        if let Some(pos) = s.position(key) {
            self.carried.push(pos);
        }
    }

    pub fn counts(&self) -> DiffCounts {
        self.counts
    }

    /// The new state (sorted by key) and the final counts.
    pub fn finish(mut self) -> (NextState, DiffCounts) {
        let Some(s) = self.snapshot else {
            // no snapshot: every row is new (and unique: duplicates were not added)
            self.added.sort_unstable_by_key(|e| e.key);
            let keys = self.added.iter().map(|e| e.key).collect();
            let vals = self.added.iter().map(|e| [e.content, e.chain]).collect();
            let lines = self.added.iter().map(|e| e.line).collect();
            return (NextState { keys, vals, lines }, self.counts);
        };
        for pos in std::mem::take(&mut self.carried) {
            self.seen[pos / 64] |= 1u64 << (pos % 64);
        }
        let kept: u64 = self.seen.iter().map(|w| u64::from(w.count_ones())).sum();
        self.counts.removed = s.len() as u64 - kept;
        self.added.sort_unstable_by_key(|e| e.key);
        self.updates.sort_unstable_by_key(|u| u.0);
        let n = kept as usize + self.added.len();
        let (mut keys, mut vals) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut lines = Vec::with_capacity(n);
        let old_lines = self.lines.as_deref().unwrap_or(s.lines());
        let mut added = self.added.iter().peekable();
        let mut updates = self.updates.iter().peekable();
        for (w, &word) in self.seen.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let pos = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let key = s.keys_at(pos);
                while let Some(a) = added.next_if(|a| a.key < key) {
                    keys.push(a.key);
                    vals.push([a.content, a.chain]);
                    lines.push(a.line);
                }
                let v = match updates.next_if(|u| u.0 as usize == pos) {
                    Some(&(_, v)) => v,
                    None => s.vals_at(pos),
                };
                keys.push(key);
                vals.push(v);
                lines.push(old_lines[pos]);
            }
        }
        for a in added {
            keys.push(a.key);
            vals.push([a.content, a.chain]);
            lines.push(a.line);
        }
        (NextState { keys, vals, lines }, self.counts)
    }
}

/// The state a diff leaves: key fingerprints in ascending order (unique) and each row's
/// `[content, chain]`; becomes the next [`Snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextState {
    pub(crate) keys: Vec<u64>,
    pub(crate) vals: Vec<[u64; 2]>,
    /// Each row's line hash (0: none).
    pub(crate) lines: Vec<u64>,
}

impl NextState {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn to_entries(&self) -> Vec<Entry> {
        self.keys
            .iter()
            .zip(&self.vals)
            .zip(&self.lines)
            .map(|((&key, v), &line)| Entry {
                key,
                content: v[0],
                chain: v[1],
                line,
            })
            .collect()
    }

    /// Rows whose message was refused go back to their previous state (`previous` gives
    /// it), or leave the state when the record had none, so a later file retries them.
    /// Their line hash is dropped, so the next file's row takes the full path.
    pub fn revert(&mut self, refused: &HashSet<u64>, previous: impl Fn(u64) -> Option<[u64; 2]>) {
        let mut out = 0;
        for i in 0..self.keys.len() {
            let key = self.keys[i];
            let (v, line) = if refused.contains(&key) {
                match previous(key) {
                    Some(v) => (v, 0),
                    None => continue,
                }
            } else {
                (self.vals[i], self.lines[i])
            };
            self.keys[out] = key;
            self.vals[out] = v;
            self.lines[out] = line;
            out += 1;
        }
        self.keys.truncate(out);
        self.vals.truncate(out);
        self.lines.truncate(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{SnapshotHeader, SourceObject, FORMAT_VERSION};

    fn feed() -> FeedConfig {
        let mut f = FeedConfig::new("f", &["id"]);
        f.ignore_columns = vec!["ts".into()];
        f
    }
    fn hdr(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|s| s.to_string()).collect()
    }
    fn rec(vals: &[&str]) -> Record {
        Record::from_fields(vals)
    }
    fn prints(cols: &[&str], vals: &[&str], prev: Option<&[String]>) -> RowPrints {
        let plan = ColumnPlan::new(&hdr(cols), &feed(), prev).unwrap();
        Fingerprinter::default().prints(&plan, &rec(vals))
    }
    fn snap(entries: Vec<(u64, u64)>, hashed: Vec<String>) -> Snapshot {
        let entries: Vec<Entry> = entries.into_iter().map(Entry::from).collect();
        Snapshot::from_entries(
            SnapshotHeader {
                format: FORMAT_VERSION,
                feed: "f".into(),
                key_columns: vec!["id".into()],
                hashed_columns: hashed,
                source: SourceObject::default(),
                row_count: 0,
                created_at: String::new(),
                run: String::new(),
                line_context: None,
            },
            entries,
        )
    }

    #[test]
    fn reordered_columns_and_ignored_columns_change_nothing() {
        let a = prints(&["id", "a", "b", "ts"], &["1", "x", "y", "t1"], None);
        let b = prints(&["b", "ts", "id", "a"], &["y", "t2", "1", "x"], None);
        assert_eq!(a, b);
        let c = prints(&["id", "a", "b", "ts"], &["1", "x", "z", "t1"], None);
        assert_eq!(a.key, c.key);
        assert_ne!(a.compare, c.compare);
    }

    #[test]
    fn field_boundaries_matter() {
        let a = prints(&["id", "a", "b"], &["1", "ab", "c"], None);
        let b = prints(&["id", "a", "b"], &["1", "a", "bc"], None);
        assert_ne!(a.compare, b.compare);
        // swapping values between columns is a change
        let c = prints(&["id", "a", "b"], &["1", "c", "ab"], None);
        assert_ne!(a.compare, c.compare);
    }

    #[test]
    fn composite_keys() {
        let mut f = FeedConfig::new("f", &["j", "id"]);
        f.ignore_columns.clear();
        let plan = ColumnPlan::new(&hdr(&["id", "j", "v"]), &f, None).unwrap();
        let mut fp = Fingerprinter::default();
        let a = fp.prints(&plan, &rec(&["1", "ca", "v"]));
        let b = fp.prints(&plan, &rec(&["1", "ny", "v"]));
        assert_ne!(a.key, b.key);
        assert_eq!(record_key(&plan, &rec(&["1", "ca", "v"])), "ca|1");
        // separators inside values are escaped: distinct keys, distinct record keys
        let ra = record_key(&plan, &rec(&["7", "CA|LA", "v"]));
        let rb = record_key(&plan, &rec(&["LA|7", "CA", "v"]));
        assert_ne!(ra, rb);
        assert_eq!(ra, "CA\\|LA|7");
        let plan2 = ColumnPlan::new(&hdr(&["v", "j", "id"]), &f, None).unwrap();
        assert_eq!(fp.prints(&plan2, &rec(&["v", "ca", "1"])), a);
    }

    #[test]
    fn added_column_is_not_a_change() {
        let cols = ["id", "a", "ts"];
        let base = ColumnPlan::new(&hdr(&cols), &feed(), None).unwrap();
        let p0 = prints(&cols, &["1", "x", "t"], None);
        let plan = ColumnPlan::new(
            &hdr(&["id", "a", "new", "ts"]),
            &feed(),
            Some(&base.hashed_columns),
        )
        .unwrap();
        assert_eq!(plan.added, vec!["new"]);
        let p1 = Fingerprinter::default().prints(&plan, &rec(&["1", "x", "n", "t"]));
        assert_eq!(p1.compare, p0.compare);
        assert_ne!(p1.store, p0.store);
        assert_eq!(plan.hashed_columns, vec!["a", "new"]);
    }

    #[test]
    fn removed_column_rebaselines_known_keys_and_finds_new_ones() {
        // the snapshot hashed a and b; the file has lost b (removed or renamed to c)
        let old_cols = ["id", "a", "b"];
        let s = snap(
            vec![
                (
                    prints(&old_cols, &["1", "x", "y"], None).key,
                    prints(&old_cols, &["1", "x", "y"], None).compare,
                ),
                (
                    prints(&old_cols, &["2", "x", "y"], None).key,
                    prints(&old_cols, &["2", "x", "y"], None).compare,
                ),
            ],
            hdr(&["a", "b"]),
        );
        let plan = ColumnPlan::new(
            &hdr(&["id", "a", "c"]),
            &feed(),
            Some(&s.header.hashed_columns),
        )
        .unwrap();
        assert_eq!(plan.removed, vec!["b"]);
        assert_eq!(plan.added, vec!["c"]);
        assert!(!plan.comparable());
        let mut d = Differ::new(Some(&s), 0, plan.comparable(), false);
        let mut fp = Fingerprinter::default();
        assert_eq!(
            d.classify(fp.prints(&plan, &rec(&["1", "z", "q"]))),
            Class::Unchanged
        );
        assert_eq!(
            d.classify(fp.prints(&plan, &rec(&["3", "x", "q"]))),
            Class::New
        );
        let (entries, c) = d.finish();
        let entries = entries.to_entries();
        assert_eq!(
            (c.new, c.changed, c.unchanged, c.rebaselined, c.removed),
            (1, 0, 1, 1, 1)
        );
        // the re-baselined row now carries the fingerprint over the file's columns
        let e1 = entries
            .iter()
            .find(|e| e.key == prints(&old_cols, &["1", "x", "y"], None).key)
            .unwrap();
        assert_eq!(e1.content, fp.prints(&plan, &rec(&["1", "z", "q"])).store);
    }

    #[test]
    fn classification() {
        let cols = ["id", "a"];
        let p = |id: &str, a: &str| prints(&cols, &[id, a], None);
        let s = snap(
            vec![
                (p("1", "x").key, p("1", "x").compare),
                (p("2", "x").key, p("2", "x").compare),
                (p("3", "x").key, p("3", "x").compare),
            ],
            hdr(&["a"]),
        );
        let mut d = Differ::new(Some(&s), 0, true, false);
        assert_eq!(d.classify(p("1", "x")), Class::Unchanged);
        assert_eq!(
            d.classify(p("2", "y")),
            Class::Changed {
                previous: p("2", "x").compare,
                chain: next_chain(None, p("2", "x").compare),
            }
        );
        assert_eq!(d.classify(p("4", "x")), Class::New);
        assert_eq!(d.classify(p("4", "z")), Class::Duplicate);
        assert_eq!(d.classify(p("1", "q")), Class::Duplicate);
        let (entries, c) = d.finish();
        let entries = entries.to_entries();
        assert_eq!(
            c,
            DiffCounts {
                new: 1,
                changed: 1,
                unchanged: 1,
                removed: 1,
                duplicate: 2,
                rebaselined: 0,
                known: 0,
            }
        );
        assert_eq!(entries.len(), 3);
        let has = |k: u64, c: u64| entries.iter().any(|e| e.key == k && e.content == c);
        assert!(has(p("4", "x").key, p("4", "x").store));
        assert!(has(p("1", "x").key, p("1", "x").store));
        let two = entries.iter().find(|e| e.key == p("2", "y").key).unwrap();
        assert_eq!(
            two.chain,
            next_chain(
                Some(next_chain(None, p("2", "x").compare)),
                p("2", "y").store
            )
        );
    }

    #[test]
    fn carried_rows_are_not_removed() {
        let cols = ["id", "a"];
        let p = |id: &str, a: &str| prints(&cols, &[id, a], None);
        let s = snap(vec![(p("1", "x").key, p("1", "x").compare)], hdr(&["a"]));
        let mut d = Differ::new(Some(&s), 0, true, false);
        d.carry(p("1", "x").key);
        d.carry(p("1", "x").key);
        d.carry(p("9", "x").key);
        let (entries, c) = d.finish();
        let entries = entries.to_entries();
        assert_eq!(c.removed, 0);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0], s.entry(p("1", "x").key).unwrap());
    }

    #[test]
    fn no_snapshot_everything_new() {
        let cols = ["id", "a"];
        let mut d = Differ::new(None, 2, true, false);
        assert_eq!(d.classify(prints(&cols, &["1", "x"], None)), Class::New);
        assert_eq!(d.classify(prints(&cols, &["2", "x"], None)), Class::New);
        let (_, c) = d.finish();
        assert_eq!(c.new, 2);
        assert_eq!(c.removed, 0);
    }

    #[test]
    fn batch_classification_matches_one_by_one() {
        let cols = ["id", "a"];
        let base: Vec<(u64, u64)> = (0..2000)
            .map(|i| {
                let p = prints(&cols, &[&i.to_string(), "x"], None);
                (p.key, p.compare)
            })
            .collect();
        let s = snap(base, hdr(&["a"]));
        // known unchanged, changed, new, and duplicates of each, in a scrambled order
        let rows: Vec<RowPrints> = (0..2300u64)
            .chain(0..200)
            .map(|n| {
                let i = (n * 7919) % 2600;
                let v = if i % 5 == 0 { "y" } else { "x" };
                prints(&cols, &[&i.to_string(), v], None)
            })
            .collect();
        let mut one = Differ::new(Some(&s), 0, true, false);
        let a: Vec<Class> = rows.iter().map(|&p| one.classify(p)).collect();
        let mut batched = Differ::new(Some(&s), 0, true, false);
        let mut b = Vec::new();
        let mut out = Vec::new();
        for chunk in rows.chunks(256) {
            batched.classify_batch(chunk, &mut out);
            b.extend_from_slice(&out);
        }
        assert_eq!(a, b);
        let (ea, ca) = one.finish();
        let (eb, cb) = batched.finish();
        assert!(ea.keys.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        assert_eq!(ca, cb);
        assert_eq!(ea, eb);
        assert!(ca.new > 0 && ca.changed > 0 && ca.duplicate > 0 && ca.removed > 0);
    }
}
