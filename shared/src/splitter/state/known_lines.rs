//! Known lines: a table from line prints to snapshot positions, so the rows the previous file
//! had byte for byte are known unchanged by their line alone.

use super::snapshot::{prefetch, Snapshot};
use crate::config::FeedConfig;
use xxhash_rust::xxh3::xxh3_64;

/// What the line hashes of a snapshot are valid for: the file's columns in order and the
/// feed settings that decide, from a row's bytes alone, whether it is accepted and what its
/// fingerprints are. A row whose raw line hashes to a snapshot row's line hash under the same
/// context is that row, unchanged: same bytes, same columns, same rules. Anything else (a
/// reordered, added or renamed column, a changed key, ignore list, row limit or
/// `trim_keys`) makes a different context, and every row takes the full path once.
pub fn line_context(header: &[String], feed: &FeedConfig) -> String {
    let mut buf = Vec::new();
    let mut put = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        buf.extend_from_slice(b);
    };
    // 2: a key value of only whitespace is rejected (context 1 accepted it, so a line print
    // of such a row may be in a snapshot made under it)
    put(b"casefeed line context 2");
    for list in [header, &feed.key_columns[..], &feed.ignore_columns[..]] {
        put(&(list.len() as u32).to_le_bytes());
        for c in list {
            put(c.as_bytes());
        }
    }
    put(&(feed.max_row_bytes as u64).to_le_bytes());
    // trimmed keys make another record of the same line (nothing added when off, so the
    // contexts of feeds without it stay as they were)
    if feed.trim_keys {
        put(b"trim_keys");
    }
    format!("{:016x}", xxh3_64(&buf))
}

/// A hash table from line hashes to snapshot positions: a row of the next file whose raw line
/// has a known hash is the same bytes as that snapshot row's line, so (under the same
/// [`line_context`]) the same record with the same content — no need to split
/// or fingerprint it. Open addressing with linear probing over the hash's low bits (the
/// hashes are uniform), 4 bytes a slot, at most 2/3 full; each probe checks the full 64-bit
/// hash. Two rows with the same line hash (a 64-bit collision, or a corrupt snapshot) are
/// both left to the full path.
#[derive(Debug)]
pub struct KnownLines {
    snapshot: std::sync::Arc<Snapshot>,
    slots: Vec<u32>,
    mask: usize,
    /// Line hashes that more than one row has (normally none).
    ambiguous: Vec<u64>,
}

const EMPTY: u32 = u32::MAX;

impl KnownLines {
    /// `None` when the snapshot has no line hashes or too many rows to index in 32 bits.
    pub fn new(snapshot: std::sync::Arc<Snapshot>) -> Option<KnownLines> {
        let lines = snapshot.lines();
        let n = lines.iter().filter(|&&h| h != 0).count();
        if n == 0 || lines.len() >= EMPTY as usize {
            return None;
        }
        let cap = (n + n / 2 + 1).next_power_of_two().max(16);
        let mask = cap - 1;
        let mut slots = vec![EMPTY; cap];
        let mut ambiguous = Vec::new();
        for (pos, &h) in lines.iter().enumerate() {
            if h == 0 {
                continue;
            }
            let mut i = h as usize & mask;
            loop {
                match slots[i] {
                    EMPTY => {
                        slots[i] = pos as u32;
                        break;
                    }
                    s if lines[s as usize] == h => {
                        ambiguous.push(h);
                        break;
                    }
                    _ => i = (i + 1) & mask,
                }
            }
        }
        Some(KnownLines {
            snapshot,
            slots,
            mask,
            ambiguous,
        })
    }

    /// [`KnownLines::find`] for many hashes at once: the slots of all of them are fetched
    /// first, then the rows they point at, then each is resolved — so the memory loads of a
    /// batch overlap instead of each line waiting for two cache misses in turn (the table
    /// and the snapshot do not stay in cache while a file streams through them).
    pub fn find_many(&self, hashes: &[u64], out: &mut Vec<Option<u32>>) {
        out.clear();
        let lines = self.snapshot.lines();
        for &h in hashes {
            prefetch(&self.slots[h as usize & self.mask]);
        }
        for &h in hashes {
            let s = self.slots[h as usize & self.mask];
            if s != EMPTY {
                prefetch(&lines[s as usize]);
            }
        }
        out.extend(hashes.iter().map(|&h| self.find(h)));
    }

    /// The snapshot position whose line has hash `h` (`None` also when several have it).
    #[inline]
    pub fn find(&self, h: u64) -> Option<u32> {
        let lines = self.snapshot.lines();
        let mut i = h as usize & self.mask;
        loop {
            match self.slots[i] {
                EMPTY => return None,
                s if lines[s as usize] == h => {
                    if !self.ambiguous.is_empty() && self.ambiguous.contains(&h) {
                        return None;
                    }
                    return Some(s);
                }
                _ => i = (i + 1) & self.mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::envelope::next_chain;
    use crate::splitter::source::line_hash;
    use crate::splitter::state::snapshot::tests::{header, sample};
    use crate::splitter::state::snapshot::{Entry, Snapshot};
    use xxhash_rust::xxh3::xxh3_64;

    fn lined(n: u64) -> Snapshot {
        let entries = (0..n).map(|i| Entry {
            key: xxh3_64(&i.to_le_bytes()),
            content: i,
            chain: next_chain(None, i),
            // every third row without a line hash (it was not one plain line)
            line: if i % 3 == 0 {
                0
            } else {
                line_hash(format!("{i},row").as_bytes())
            },
        });
        let mut h = header("f");
        h.line_context = Some("00ff".into());
        Snapshot::from_entries(h, entries)
    }

    #[test]
    fn line_hashes_round_trip_and_are_found() {
        let s = lined(5_000);
        let d = Snapshot::decode(&s.encode().unwrap(), Some("f")).unwrap();
        assert_eq!(d.header.line_context.as_deref(), Some("00ff"));
        assert_eq!(
            d.all_entries().collect::<Vec<_>>(),
            s.all_entries().collect::<Vec<_>>()
        );
        let known = KnownLines::new(std::sync::Arc::new(d)).unwrap();
        for i in 0..5_000u64 {
            let got = known.find(line_hash(format!("{i},row").as_bytes()));
            if i % 3 == 0 {
                assert_eq!(got, None, "row {i} has no line hash");
            } else {
                let pos = got.unwrap_or_else(|| panic!("row {i} not found")) as usize;
                assert_eq!(s.keys_at(pos), xxh3_64(&i.to_le_bytes()));
            }
        }
        assert_eq!(known.find(line_hash(b"5001,row")), None);
        assert_eq!(known.find(line_hash(b"")), None);
        assert_ne!(line_hash(b""), 0);
    }

    /// Line prints made with keys trimmed are not reused untrimmed, nor the other way
    /// round: the same line is another record then.
    #[test]
    fn the_line_context_changes_with_trim_keys() {
        let header = vec!["id".to_string(), "v".to_string()];
        let mut feed = crate::config::FeedConfig::new("f", &["id"]);
        let off = line_context(&header, &feed);
        assert_eq!(off, line_context(&header, &feed));
        feed.trim_keys = true;
        assert_ne!(line_context(&header, &feed), off);
    }

    #[test]
    fn a_line_hash_two_rows_share_is_found_for_neither() {
        let same = line_hash(b"a,b");
        let entries = [(1u64, same), (2, same), (3, line_hash(b"c,d"))].map(|(k, l)| Entry {
            key: k,
            content: k,
            chain: 0,
            line: l,
        });
        let known = KnownLines::new(std::sync::Arc::new(Snapshot::from_entries(
            header("f"),
            entries,
        )))
        .unwrap();
        assert_eq!(known.find(same), None);
        assert_eq!(known.find(line_hash(b"c,d")), Some(2));
        // no line hashes at all: nothing to index
        assert!(KnownLines::new(std::sync::Arc::new(sample(10))).is_none());
    }
}
