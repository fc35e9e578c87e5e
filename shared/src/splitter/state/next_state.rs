//! The next state: what a diff leaves, sorted by key fingerprint, ready to be encoded as the
//! feed's new snapshot.

use super::names::{KeyNames, NameRef};
use super::snapshot::Entry;
use std::collections::HashSet;
use std::sync::Arc;

/// The state a diff leaves: key fingerprints in ascending order (unique), each row's
/// `[content, chain]`, line hash and where its record key is; becomes the next
/// [`Snapshot`](super::Snapshot).
///
/// Record keys are not copied per row: a row the previous snapshot had names its row of that
/// snapshot's names (kept alive by `old_names`), and a row only this file had names a row of
/// `file_names`, which the diff filled from the file's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextState {
    pub(crate) keys: Vec<u64>,
    pub(crate) vals: Vec<[u64; 2]>,
    /// Each row's line hash (0: none).
    pub(crate) lines: Vec<u64>,
    /// Where each row's record key is.
    pub(crate) names: Vec<NameRef>,
    /// The previous snapshot's names (`None`: it had none, or there was no snapshot).
    pub(crate) old_names: Option<Arc<KeyNames>>,
    /// Names this file gave.
    pub(crate) file_names: KeyNames,
}

impl NextState {
    /// Rows in the state.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The record key of row `i` (in key order); `None` when it is unnamed.
    pub fn name(&self, i: usize) -> Option<&[u8]> {
        self.names
            .get(i)?
            .resolve(self.old_names.as_deref(), &self.file_names)
    }

    /// The rows as snapshot entries, in key order.
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
    /// Their line hash is dropped, so the next file's row takes the full path; their record
    /// key stays.
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
            self.names[out] = self.names[i];
            out += 1;
        }
        self.keys.truncate(out);
        self.vals.truncate(out);
        self.lines.truncate(out);
        self.names.truncate(out);
    }

    /// Put records back that the diff left out: removed records whose tombstone the queue
    /// refused, each `(key fingerprint, [content, chain], record key)` as the previous
    /// snapshot had it, so the next file removes them again. Without a line hash (the next
    /// file's row, should it come back, takes the full path). Keys already present are
    /// left as they are.
    pub fn restore(&mut self, mut rows: Vec<(u64, [u64; 2], NameRef)>) {
        if rows.is_empty() {
            return;
        }
        rows.sort_unstable_by_key(|r| r.0);
        rows.dedup_by_key(|r| r.0);
        let n = self.keys.len() + rows.len();
        let mut keys = Vec::with_capacity(n);
        let mut vals = Vec::with_capacity(n);
        let mut lines = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut back = rows.into_iter().peekable();
        for i in 0..self.keys.len() {
            let key = self.keys[i];
            while let Some((k, v, name)) = back.next_if(|r| r.0 <= key) {
                if k < key {
                    keys.push(k);
                    vals.push(v);
                    lines.push(0);
                    names.push(name);
                }
            }
            keys.push(key);
            vals.push(self.vals[i]);
            lines.push(self.lines[i]);
            names.push(self.names[i]);
        }
        for (k, v, name) in back {
            keys.push(k);
            vals.push(v);
            lines.push(0);
            names.push(name);
        }
        (self.keys, self.vals, self.lines, self.names) = (keys, vals, lines, names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(keys: &[u64]) -> NextState {
        let mut file_names = KeyNames::default();
        let names = keys
            .iter()
            .map(|k| NameRef::file(file_names.push(format!("k{k}").as_bytes())))
            .collect();
        NextState {
            keys: keys.to_vec(),
            vals: keys.iter().map(|&k| [k * 10, k * 100]).collect(),
            lines: keys.iter().map(|&k| k + 1).collect(),
            names,
            old_names: None,
            file_names,
        }
    }

    #[test]
    fn a_reverted_row_keeps_its_record_key_and_a_refused_new_row_leaves() {
        let mut s = state(&[1, 2, 3]);
        let refused: HashSet<u64> = [2, 3].into_iter().collect();
        s.revert(&refused, |k| (k == 2).then_some([7, 8]));
        assert_eq!(s.keys, [1, 2]);
        assert_eq!(s.vals, [[10, 100], [7, 8]]);
        assert_eq!(s.lines, [2, 0]);
        assert_eq!(s.name(1), Some(&b"k2"[..]));
        assert_eq!(s.name(2), None);
    }

    #[test]
    fn restored_records_are_merged_in_key_order_by_their_old_names() {
        let mut old = KeyNames::default();
        old.push(b"old-a");
        old.push(b"old-b");
        let mut s = state(&[10, 30]);
        s.old_names = Some(Arc::new(old));
        s.restore(vec![
            (40, [4, 4], NameRef::old(1)),
            (5, [5, 5], NameRef::old(0)),
            (30, [9, 9], NameRef::NONE),
        ]);
        assert_eq!(s.keys, [5, 10, 30, 40]);
        assert_eq!(s.vals[0], [5, 5]);
        assert_eq!(
            s.vals[2],
            [300, 3000],
            "a key already present stays as it is"
        );
        assert_eq!(s.lines, [0, 11, 31, 0]);
        let names: Vec<_> = (0..4).map(|i| s.name(i)).collect();
        assert_eq!(
            names,
            [
                Some(&b"old-a"[..]),
                Some(&b"k10"[..]),
                Some(&b"k30"[..]),
                Some(&b"old-b"[..])
            ]
        );
    }
}
