//! The differ: classifies each row against the feed's state while the file streams — new,
//! changed, unchanged or a duplicate within the file — and collects the next state.
//!
//! Schema drift: the comparison with the state uses the state's hashed columns that the file
//! still has; the next state hashes all of the file's compared columns. An added column
//! therefore never makes a row "changed"; it only enters the fingerprint from then on.
//!
//! Record keys: the next state names every row. A record the state has keeps the state's
//! name (by position, nothing copied per row); the pass hands over the names of the rows
//! only this file has ([`Differ::name_rows`]) — and, when the state has no names (format 1
//! or 2), of every row of a known record, so the next state has them.

use super::fingerprint::Fingerprints;
use crate::contract::envelope::next_chain;
use crate::contract::report::Counts;
use crate::splitter::state::{prefetch, Entry, KeyNames, NameRef, NextState, Snapshot};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// How one row compares with the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The snapshot has no record of the key.
    New,
    /// The snapshot has the record with other content.
    Changed {
        /// The snapshot's content fingerprint for the record.
        previous: u64,
        /// The record's history chain in the snapshot.
        chain: u64,
    },
    /// The snapshot has the record with the same content (or it was taken over uncompared).
    Unchanged,
    /// The key already appeared earlier in this file; the first occurrence wins.
    Duplicate,
}

/// A file's rows by class, as the differ counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiffCounts {
    /// Rows whose key the snapshot does not have (first occurrence).
    pub new: u64,
    /// Rows whose key the snapshot has, with other content.
    pub changed: u64,
    /// Rows whose key the snapshot has, with the same content (`rebaselined` and `known`
    /// included).
    pub unchanged: u64,
    /// Records of the snapshot whose key the file no longer has (a rejected row keeps its
    /// record); set by [`Differ::finish`].
    pub removed: u64,
    /// Rows whose key appeared earlier in the file.
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

impl DiffCounts {
    /// Put these counts into a run report's counts (read, rejected and sent are the run's).
    pub fn apply_to(self, counts: &mut Counts) {
        counts.new = self.new;
        counts.changed = self.changed;
        counts.removed = self.removed;
        counts.unchanged = self.unchanged;
        counts.duplicate = self.duplicate;
        counts.rebaselined = self.rebaselined;
        counts.known = self.known;
    }
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
/// A set of fingerprints, hashed by [`FpHasher`].
pub type FpSet = HashSet<u64, BuildHasherDefault<FpHasher>>;

/// A row of a key the snapshot does not have, and where its record key is.
#[derive(Debug, Clone, Copy)]
struct Added {
    entry: Entry,
    name: NameRef,
}

/// Where a row's record key goes once the pass hands it over.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// To the `added` row at this index.
    Added(u32),
    /// To the snapshot position (its state has no names).
    Old(u32),
}

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
    added: Vec<Added>,
    /// Record keys this file gave (of the rows the snapshot cannot name).
    names: KeyNames,
    /// When the snapshot has no names: each position's name from this file.
    old_from_file: Option<Vec<NameRef>>,
    /// Rows of the last batch whose record key the next state needs: (row in the batch,
    /// where it goes).
    wanted: Vec<(u32, Want)>,
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
    ///
    /// [`ColumnPlan::comparable`]: super::ColumnPlan::comparable
    /// [`line_context`]: crate::splitter::state::line_context
    pub fn new(
        snapshot: Option<&'a Snapshot>,
        expected_rows: usize,
        comparable: bool,
        same_lines: bool,
    ) -> Self {
        let n = snapshot.map(|s| s.len()).unwrap_or(0);
        let unnamed = snapshot.is_some_and(|s| s.names().is_none());
        Differ {
            lines: (!same_lines && n > 0).then(|| vec![0u64; n]),
            snapshot,
            comparable,
            seen: vec![0u64; n.div_ceil(64)],
            new_keys: FpSet::default(),
            carried: Vec::new(),
            added: Vec::with_capacity(if n == 0 { expected_rows } else { 1024 }),
            names: KeyNames::default(),
            old_from_file: unnamed.then(|| vec![NameRef::NONE; n]),
            wanted: Vec::new(),
            updates: Vec::new(),
            counts: DiffCounts::default(),
            scratch_keys: Vec::new(),
            scratch_ranges: Vec::new(),
            scratch_pos: Vec::new(),
            scratch_vals: Vec::new(),
        }
    }

    /// Classify one row by its fingerprints, and note what the next state keeps of it. Its
    /// record key, when the next state needs it, is asked for by [`Differ::name_rows`] as
    /// row 0.
    #[inline]
    pub fn classify(&mut self, p: Fingerprints) -> Class {
        self.wanted.clear();
        let pos = self.snapshot.and_then(|s| s.position(p.key));
        let vals = match (pos, self.snapshot) {
            (Some(pos), Some(s)) => s.vals_at(pos),
            _ => [0, 0],
        };
        self.classify_at(0, p, pos, vals)
    }

    /// Classify a batch of rows (in file order) into `out`; the same answers as calling
    /// [`Differ::classify`] on each, with the snapshot lookups overlapped. The record keys
    /// the next state needs of them are asked for by [`Differ::name_rows`], by row of the
    /// batch.
    pub fn classify_batch(&mut self, fps: &[Fingerprints], out: &mut Vec<Class>) {
        out.clear();
        self.wanted.clear();
        let Some(s) = self.snapshot else {
            out.extend(
                fps.iter()
                    .enumerate()
                    .map(|(row, &p)| self.classify_at(row, p, None, [0, 0])),
            );
            return;
        };
        self.scratch_keys.clear();
        self.scratch_keys.extend(fps.iter().map(|p| p.key));
        s.positions(
            &self.scratch_keys,
            &mut self.scratch_ranges,
            &mut self.scratch_pos,
        );
        // each row's line hash is read or written too: fetch them with the values
        let lines = self.lines.as_deref().unwrap_or(s.lines());
        for &p in self.scratch_pos.iter().flatten() {
            prefetch(&lines[p]);
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
        for (row, ((&p, &at), &v)) in fps.iter().zip(&pos).zip(&vals).enumerate() {
            let c = self.classify_at(row, p, at, v);
            out.push(c);
        }
        (self.scratch_pos, self.scratch_vals) = (pos, vals);
    }

    /// A row whose raw line is the line of snapshot position `pos` (found by
    /// [`crate::splitter::state::KnownLines`]): unchanged, or a duplicate when the record was
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

    /// The record keys the last [`Differ::classify_batch`] (or [`Differ::classify`]) needs:
    /// `write(row, buf)` appends the record key of that row of the batch to `buf` (see
    /// [`crate::splitter::filter::write_record_key`]). Only rows the snapshot cannot name are
    /// asked for: new rows, and every row of a known record when the snapshot has no names.
    pub fn name_rows(&mut self, mut write: impl FnMut(usize, &mut Vec<u8>)) {
        for &(row, want) in &self.wanted {
            let name = NameRef::file(self.names.push_with(|b| write(row as usize, b)));
            match want {
                Want::Added(i) => self.added[i as usize].name = name,
                Want::Old(pos) => {
                    if let Some(v) = self.old_from_file.as_mut() {
                        v[pos as usize] = name;
                    }
                }
            }
        }
        self.wanted.clear();
    }

    /// When the snapshot has no names, a known record's row at `pos` (in batch row `row`)
    /// gives its name, once.
    #[inline]
    fn want_old_name(&mut self, row: usize, pos: usize) {
        if let Some(v) = self.old_from_file.as_ref() {
            if v[pos] == NameRef::NONE {
                self.wanted.push((row as u32, Want::Old(pos as u32)));
            }
        }
    }

    #[inline]
    fn classify_at(
        &mut self,
        row: usize,
        p: Fingerprints,
        pos: Option<usize>,
        vals: [u64; 2],
    ) -> Class {
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
            (Class::New, _) | (_, None) => {
                self.wanted
                    .push((row as u32, Want::Added(self.added.len() as u32)));
                self.added.push(Added {
                    entry: Entry {
                        key: p.key,
                        content: p.store,
                        chain: next_chain(None, p.store),
                        line: p.line,
                    },
                    name: NameRef::NONE,
                });
            }
            (Class::Changed { chain, .. }, Some(pos)) => {
                self.updates
                    .push((pos as u32, [p.store, next_chain(Some(chain), p.store)]));
                self.set_line(pos, p.line);
                self.want_old_name(row, pos);
            }
            // unchanged: the history goes on as it was (the stored fingerprint may move to
            // a new column set after schema drift, the history does not)
            (Class::Unchanged, Some(pos)) => {
                if p.store != vals[0] {
                    self.updates.push((pos as u32, [p.store, vals[1]]));
                }
                self.set_line(pos, p.line);
                self.want_old_name(row, pos);
            }
        }
        class
    }

    /// A row of this key was rejected: keep the record's previous state (it is not
    /// "removed", and comes back as unchanged when the row is fixed). `name` appends the
    /// row's record key, asked for only when the snapshot has no names.
    pub fn carry(&mut self, key: u64, name: impl FnOnce(&mut Vec<u8>)) {
        let Some(s) = self.snapshot else { return };
        if let Some(pos) = s.position(key) {
            self.carried.push(pos);
            if let Some(v) = self.old_from_file.as_mut() {
                if v[pos] == NameRef::NONE {
                    v[pos] = NameRef::file(self.names.push_with(name));
                }
            }
        }
    }

    /// The counts so far (`removed` is set only by [`Differ::finish`]).
    pub fn counts(&self) -> DiffCounts {
        self.counts
    }

    /// The new state (sorted by key), the final counts, and the snapshot positions of the
    /// records this file no longer has (the removed ones, in key order).
    pub fn finish(mut self) -> (NextState, DiffCounts, Vec<u32>) {
        let Some(s) = self.snapshot else {
            // no snapshot: every row is new (and unique: duplicates were not added)
            self.added.sort_unstable_by_key(|a| a.entry.key);
            let keys = self.added.iter().map(|a| a.entry.key).collect();
            let vals = self
                .added
                .iter()
                .map(|a| [a.entry.content, a.entry.chain])
                .collect();
            let lines = self.added.iter().map(|a| a.entry.line).collect();
            let names = self.added.iter().map(|a| a.name).collect();
            let state = NextState {
                keys,
                vals,
                lines,
                names,
                old_names: None,
                file_names: self.names,
            };
            return (state, self.counts, Vec::new());
        };
        for pos in std::mem::take(&mut self.carried) {
            self.seen[pos / 64] |= 1u64 << (pos % 64);
        }
        let kept: u64 = self.seen.iter().map(|w| u64::from(w.count_ones())).sum();
        self.counts.removed = s.len() as u64 - kept;
        let removed = unseen(&self.seen, s.len(), self.counts.removed as usize);
        self.added.sort_unstable_by_key(|a| a.entry.key);
        self.updates.sort_unstable_by_key(|u| u.0);
        let n = kept as usize + self.added.len();
        let (mut keys, mut vals) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut lines, mut names) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let old_lines = self.lines.as_deref().unwrap_or(s.lines());
        let old_from_file = self.old_from_file.as_deref();
        let mut added = self.added.iter().peekable();
        let mut updates = self.updates.iter().peekable();
        for (w, &word) in self.seen.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let pos = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let key = s.keys_at(pos);
                while let Some(a) = added.next_if(|a| a.entry.key < key) {
                    keys.push(a.entry.key);
                    vals.push([a.entry.content, a.entry.chain]);
                    lines.push(a.entry.line);
                    names.push(a.name);
                }
                let v = match updates.next_if(|u| u.0 as usize == pos) {
                    Some(&(_, v)) => v,
                    None => s.vals_at(pos),
                };
                keys.push(key);
                vals.push(v);
                lines.push(old_lines[pos]);
                names.push(old_from_file.map_or(NameRef::old(pos), |v| v[pos]));
            }
        }
        for a in added {
            keys.push(a.entry.key);
            vals.push([a.entry.content, a.entry.chain]);
            lines.push(a.entry.line);
            names.push(a.name);
        }
        let state = NextState {
            keys,
            vals,
            lines,
            names,
            old_names: s.names().cloned(),
            file_names: self.names,
        };
        (state, self.counts, removed)
    }
}

/// The positions below `n` whose bit in `seen` is clear (`count` of them), in order.
fn unseen(seen: &[u64], n: usize, count: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(count);
    for (w, &word) in seen.iter().enumerate() {
        let mut gone = !word;
        let first = w * 64;
        if first + 64 > n {
            // the last word: only its first n - first bits are positions
            gone &= (1u64 << (n - first)) - 1;
        }
        while gone != 0 {
            out.push((first + gone.trailing_zeros() as usize) as u32);
            gone &= gone - 1;
        }
    }
    out
}
