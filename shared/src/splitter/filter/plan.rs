//! The column plan: how a file's columns map onto fingerprints — the key columns, the columns
//! compared with the state (by name, so reordering changes nothing) and the columns the new
//! state hashes; schema drift (added and removed columns) is read off here.

use crate::config::FeedConfig;
use crate::splitter::source::{trim_key, FileRejection, Record};
use std::collections::{HashMap, HashSet};
use xxhash_rust::xxh3::xxh3_64;

/// How a file's columns map onto fingerprints.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    /// File positions of the key columns, in the feed's key order.
    pub key_idx: Vec<usize>,
    /// Whether key values are used trimmed of surrounding whitespace (the feed's
    /// `trim_keys`); see [`ColumnPlan::key_values`].
    pub trim_keys: bool,
    /// File positions of the columns compared with the snapshot, in name order.
    pub(super) compare_idx: Vec<usize>,
    pub(super) compare_seed: u64,
    /// File positions hashed into the new snapshot, in name order.
    pub(super) store_idx: Vec<usize>,
    pub(super) store_seed: u64,
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
        // every list is looked up in a table, never searched per column: a header of
        // 100,000 columns and a state of as many hashed columns take linear time
        let positions: HashMap<&str, usize> = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.as_str(), i))
            .collect();
        let key_idx = feed
            .key_columns
            .iter()
            .map(|k| positions.get(k.as_str()).copied())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                FileRejection::MissingRequired(
                    feed.key_columns
                        .iter()
                        .filter(|k| !positions.contains_key(k.as_str()))
                        .cloned()
                        .collect(),
                )
            })?;
        let unhashed: HashSet<&str> = feed
            .key_columns
            .iter()
            .chain(&feed.ignore_columns)
            .map(String::as_str)
            .collect();
        let mut store: Vec<(&str, usize)> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| !unhashed.contains(h.as_str()))
            .map(|(i, h)| (h.as_str(), i))
            .collect();
        store.sort();
        let hashed_columns: Vec<String> = store.iter().map(|(n, _)| n.to_string()).collect();
        let (compare, added, removed) = match previous {
            None => (store.clone(), Vec::new(), Vec::new()),
            Some(prev) => {
                let prev_set: HashSet<&str> = prev.iter().map(String::as_str).collect();
                let (compare, added): (Vec<_>, Vec<_>) =
                    store.iter().partition(|(n, _)| prev_set.contains(n));
                let added = added.iter().map(|(n, _)| n.to_string()).collect();
                let stored: HashSet<&str> = store.iter().map(|(n, _)| *n).collect();
                let removed: Vec<String> = prev
                    .iter()
                    .filter(|p| !stored.contains(p.as_str()))
                    .cloned()
                    .collect();
                (compare, added, removed)
            }
        };
        let compare_names: Vec<&str> = compare.iter().map(|(n, _)| *n).collect();
        let store_names: Vec<&str> = store.iter().map(|(n, _)| *n).collect();
        Ok(ColumnPlan {
            key_idx,
            trim_keys: feed.trim_keys,
            compare_seed: names_seed(&compare_names),
            compare_idx: compare.iter().map(|(_, i)| *i).collect(),
            store_seed: names_seed(&store_names),
            store_idx: store.iter().map(|(_, i)| *i).collect(),
            hashed_columns,
            added,
            removed,
        })
    }

    /// The record's key values in the feed's key order, as every use of them sees them
    /// (record key, key fingerprint, idempotency key): trimmed of surrounding whitespace
    /// with `trim_keys`. A key column the record lacks gives an empty value.
    pub fn key_values<'r>(&'r self, rec: &'r Record) -> impl Iterator<Item = &'r [u8]> + 'r {
        self.key_idx.iter().map(move |&i| {
            let v = rec.get(i).unwrap_or_default();
            if self.trim_keys {
                trim_key(v)
            } else {
                v
            }
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
