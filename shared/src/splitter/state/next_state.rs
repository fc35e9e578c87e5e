//! The next state: what a diff leaves, sorted by key fingerprint, ready to be encoded as the
//! feed's new snapshot.

use super::snapshot::Entry;
use std::collections::HashSet;

/// The state a diff leaves: key fingerprints in ascending order (unique) and each row's
/// `[content, chain]`; becomes the next [`Snapshot`](super::Snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextState {
    pub(crate) keys: Vec<u64>,
    pub(crate) vals: Vec<[u64; 2]>,
    /// Each row's line hash (0: none).
    pub(crate) lines: Vec<u64>,
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
