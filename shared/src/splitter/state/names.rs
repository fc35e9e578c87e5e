//! Record keys by row: the record key strings of a state (the `record_key` the envelope
//! carries, see [`crate::splitter::filter::record_key`]) kept as one blob of bytes and each
//! row's end offset in it — two allocations for millions of rows, no `String` per row. A
//! name is resolved only when it is needed: to name a removed record, or to write the next
//! state.
//!
//! Their encoding in a format 3 snapshot is here too, beside the table it reads and writes
//! (the whole layout is in [`super::snapshot`]): after the entries, `names_len: u64`, one
//! `end: u32` a row, then the names back to back. A next state's names are written in runs:
//! most of its rows name the previous snapshot's rows in order, copied as one slice each.

use super::snapshot::SnapshotError;

/// Record keys in one blob, by row. An empty name is an *unnamed* row (a record key is never
/// empty: rows with an empty key value are rejected), as every row of a state written before
/// names were kept is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyNames {
    blob: Vec<u8>,
    /// Where each row's name ends in `blob`; it starts where the previous row's ends.
    ends: Vec<u32>,
}

impl KeyNames {
    /// Room for `rows` names of `bytes` bytes together.
    pub fn with_capacity(rows: usize, bytes: usize) -> KeyNames {
        KeyNames {
            blob: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(rows),
        }
    }

    /// Rows (named or not).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all names together.
    pub fn bytes(&self) -> usize {
        self.blob.len()
    }

    /// The name of row `i`; `None` when the row is unnamed or there is no such row.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.blob.get(start..end).filter(|n| !n.is_empty())
    }

    /// Where row `i`'s name starts and ends in the blob (`i` < `len()`).
    #[inline]
    fn span(&self, i: usize) -> (usize, usize) {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        (start, self.ends[i] as usize)
    }

    /// The bytes of the names of rows `first..=last`, back to back.
    #[inline]
    fn bytes_of(&self, first: usize, last: usize) -> &[u8] {
        let (start, _) = self.span(first);
        let (_, end) = self.span(last);
        &self.blob[start..end]
    }

    /// Append a row named `name` (empty: unnamed); returns its row.
    pub fn push(&mut self, name: &[u8]) -> u32 {
        self.push_with(|b| b.extend_from_slice(name))
    }

    /// Append a row whose name `write` appends to the blob; returns its row. Past 4 GiB of
    /// names together (offsets are 32 bits) the row stays unnamed.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> u32 {
        let start = self.blob.len();
        write(&mut self.blob);
        if u32::try_from(self.blob.len()).is_err() {
            self.blob.truncate(start);
        }
        // fits: the blob is at most u32::MAX bytes long
        self.ends.push(self.blob.len() as u32);
        (self.ends.len() - 1) as u32
    }

    /// Every row's end offset, in row order (the snapshot's encoding).
    #[cfg(test)]
    fn ends(&self) -> &[u32] {
        &self.ends
    }

    /// The blob of every name, in row order (the snapshot's encoding).
    #[cfg(test)]
    fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// Names from their encoding; `None` when the offsets do not fit the blob (they must
    /// not decrease and the last must be the blob's end).
    fn from_parts(blob: Vec<u8>, ends: Vec<u32>) -> Option<KeyNames> {
        let fits = ends.windows(2).all(|w| w[0] <= w[1])
            && ends.last().map_or(0, |&e| e as usize) == blob.len();
        fits.then_some(KeyNames { blob, ends })
    }
}

/// Where a row of the next state finds its record key: a row of the previous snapshot's
/// names, a name this file gave (the next state's own names), or nowhere (unnamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRef(u32);

impl NameRef {
    /// No name is known.
    pub const NONE: NameRef = NameRef(u32::MAX);
    const FILE: u32 = 1 << 31;

    /// Row `pos` of the previous snapshot's names.
    #[inline]
    pub fn old(pos: usize) -> NameRef {
        match u32::try_from(pos) {
            Ok(p) if p < NameRef::FILE => NameRef(p),
            _ => NameRef::NONE,
        }
    }

    /// The row of the previous snapshot's names this refers to, if it is one.
    #[inline]
    pub fn old_pos(self) -> Option<usize> {
        (self.0 & NameRef::FILE == 0).then_some(self.0 as usize)
    }

    /// Row `row` of the names this file gave.
    #[inline]
    pub fn file(row: u32) -> NameRef {
        if row < NameRef::FILE {
            NameRef(row | NameRef::FILE)
        } else {
            NameRef::NONE
        }
    }

    /// The name in `old` (the previous snapshot's names) or `file` (this file's).
    #[inline]
    pub fn resolve<'a>(self, old: Option<&'a KeyNames>, file: &'a KeyNames) -> Option<&'a [u8]> {
        if self == NameRef::NONE {
            None
        } else if self.0 & NameRef::FILE != 0 {
            file.get((self.0 & !NameRef::FILE) as usize)
        } else {
            old?.get(self.0 as usize)
        }
    }
}

/// A stretch of the next state's rows whose names are written together.
enum NameRun {
    /// `len` rows naming rows `pos..pos + len` of the previous snapshot's names: their bytes
    /// lie back to back there, and are copied as one slice.
    Old { pos: usize, len: usize },
    /// One row named some other way (by the file, or not at all).
    One(usize),
}

/// The next state's rows as [`NameRun`]s. Most rows of a next state are the previous
/// state's, in the same order, so the runs are long.
fn name_runs<'a>(
    names: &'a [NameRef],
    old: Option<&'a KeyNames>,
) -> impl Iterator<Item = NameRun> + 'a {
    let old_len = old.map_or(0, KeyNames::len);
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *names.get(i)?;
        let run = match first.old_pos().filter(|&p| p < old_len) {
            Some(pos) => {
                let mut len = 1;
                while names.get(i + len).and_then(|n| n.old_pos()) == Some(pos + len)
                    && pos + len < old_len
                {
                    len += 1;
                }
                NameRun::Old { pos, len }
            }
            None => NameRun::One(i),
        };
        i += match run {
            NameRun::Old { len, .. } => len,
            NameRun::One(_) => 1,
        };
        Some(run)
    })
}

/// [`encode_names`] for a next state whose names fit 32-bit offsets: runs of rows that name
/// consecutive rows of the previous snapshot's names are written with one copy each.
pub(super) fn encode_name_runs(
    out: &mut Vec<u8>,
    names: &[NameRef],
    old: Option<&KeyNames>,
    file: &KeyNames,
) {
    let one = |i: usize| names[i].resolve(old, file).unwrap_or_default();
    let len_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut end = 0usize;
    for run in name_runs(names, old) {
        match (run, old) {
            (NameRun::Old { pos, len }, Some(o)) => {
                let (base, _) = o.span(pos);
                for q in pos..pos + len {
                    // fits: the caller checked the total against u32
                    out.extend_from_slice(&((end + o.span(q).1 - base) as u32).to_le_bytes());
                }
                end += o.span(pos + len - 1).1 - base;
            }
            (NameRun::One(i), _) => {
                end += one(i).len();
                out.extend_from_slice(&(end as u32).to_le_bytes());
            }
            // an old run needs the old names: `name_runs` makes none without them
            (NameRun::Old { .. }, None) => {}
        }
    }
    out[len_at..len_at + 8].copy_from_slice(&(end as u64).to_le_bytes());
    for run in name_runs(names, old) {
        match (run, old) {
            (NameRun::Old { pos, len }, Some(o)) => {
                out.extend_from_slice(o.bytes_of(pos, pos + len - 1));
            }
            (NameRun::One(i), _) => out.extend_from_slice(one(i)),
            (NameRun::Old { .. }, None) => {}
        }
    }
}

/// The record keys of `rows` rows (`name(i)`), as a format 3 snapshot stores them after its
/// entries: `names_len`, the offsets, the names. Names are written while they fit 32-bit
/// offsets (4 GiB together); a row past that is written unnamed.
pub(super) fn encode_names<'a>(
    out: &mut Vec<u8>,
    rows: usize,
    name: impl Fn(usize) -> Option<&'a [u8]>,
) {
    let fitting =
        |end: usize, n: Option<&'a [u8]>| n.filter(|n| u32::try_from(end + n.len()).is_ok());
    let len_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut end = 0usize;
    for i in 0..rows {
        end += fitting(end, name(i)).map_or(0, <[u8]>::len);
        // fits: `fitting` keeps every end within u32
        out.extend_from_slice(&(end as u32).to_le_bytes());
    }
    out[len_at..len_at + 8].copy_from_slice(&(end as u64).to_le_bytes());
    let mut end = 0usize;
    for i in 0..rows {
        if let Some(n) = fitting(end, name(i)) {
            out.extend_from_slice(n);
            end += n.len();
        }
    }
}

/// The record keys of a format 3 snapshot of `rows` rows: `names_len`, the offsets, the
/// names. `None` when no row is named (then the state has no names to offer).
pub(super) fn decode_names(b: &[u8], rows: usize) -> Result<Option<KeyNames>, SnapshotError> {
    let cut = || SnapshotError::Truncated("record keys");
    let (len_b, rest) = b.split_first_chunk::<8>().ok_or_else(cut)?;
    let names_len = usize::try_from(u64::from_le_bytes(*len_b)).map_err(|_| cut())?;
    let ends_len = rows.checked_mul(4).ok_or_else(cut)?;
    if rest.len() != ends_len.checked_add(names_len).ok_or_else(cut)? {
        return Err(cut());
    }
    let (ends_b, blob) = rest.split_at(ends_len);
    if blob.is_empty() {
        return Ok(None);
    }
    let ends: Vec<u32> = ends_b
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    KeyNames::from_parts(blob.to_vec(), ends)
        .map(Some)
        .ok_or(SnapshotError::Truncated("record key offsets"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitter::state::snapshot::tests::named;
    use crate::splitter::state::{NextState, Snapshot};
    use xxhash_rust::xxh3::xxh3_64;

    #[test]
    fn names_are_found_by_row_and_an_empty_one_is_unnamed() {
        let mut n = KeyNames::default();
        assert_eq!(n.push(b"LR-1"), 0);
        assert_eq!(n.push(b""), 1);
        assert_eq!(n.push_with(|b| b.extend_from_slice(b"CA|7")), 2);
        assert_eq!(n.len(), 3);
        assert_eq!(n.get(0), Some(&b"LR-1"[..]));
        assert_eq!(n.get(1), None, "unnamed");
        assert_eq!(n.get(2), Some(&b"CA|7"[..]));
        assert_eq!(n.get(3), None, "no such row");
        let again = KeyNames::from_parts(n.blob().to_vec(), n.ends().to_vec()).unwrap();
        assert_eq!(again, n);
        // offsets that decrease or miss the blob's end are refused
        assert!(KeyNames::from_parts(b"abc".to_vec(), vec![2, 1, 3]).is_none());
        assert!(KeyNames::from_parts(b"abc".to_vec(), vec![1, 2]).is_none());
        assert!(KeyNames::from_parts(Vec::new(), Vec::new()).is_some());
    }

    #[test]
    fn a_name_ref_resolves_in_the_old_names_or_the_file_s() {
        let mut old = KeyNames::default();
        old.push(b"old-0");
        old.push(b"old-1");
        let mut file = KeyNames::default();
        file.push(b"file-0");
        assert_eq!(
            NameRef::old(1).resolve(Some(&old), &file),
            Some(&b"old-1"[..])
        );
        assert_eq!(
            NameRef::file(0).resolve(Some(&old), &file),
            Some(&b"file-0"[..])
        );
        assert_eq!(NameRef::old(0).resolve(None, &file), None);
        assert_eq!(NameRef::NONE.resolve(Some(&old), &file), None);
        assert_eq!(NameRef::old(usize::MAX), NameRef::NONE);
        assert_eq!(NameRef::file(u32::MAX), NameRef::NONE);
    }

    #[test]
    fn a_next_state_mixing_old_file_and_missing_names_encodes_as_its_names_say() {
        let d = named(100);
        let mut file_names = KeyNames::default();
        // old rows in runs (reordered, with gaps), file rows and an unnamed row between them
        let mut refs: Vec<NameRef> = Vec::new();
        refs.extend((0..40).map(NameRef::old));
        refs.push(NameRef::file(file_names.push(b"new-a")));
        refs.extend((50..60).map(NameRef::old));
        refs.push(NameRef::NONE);
        refs.extend([NameRef::old(7), NameRef::old(3), NameRef::old(4)]);
        refs.push(NameRef::file(file_names.push(b"new-b")));
        refs.push(NameRef::old(99));
        let n = refs.len() as u64;
        let state = NextState {
            keys: (0..n).collect(),
            vals: (0..n).map(|i| [i, i]).collect(),
            lines: vec![0; n as usize],
            names: refs,
            old_names: d.names().cloned(),
            file_names,
        };
        let want = Snapshot::from_state(d.header.clone(), state.clone())
            .encode()
            .unwrap();
        let got = Snapshot::encode_state(&d.header, state).unwrap();
        assert_eq!(got, want);
        let back = Snapshot::decode(&got, Some("f")).unwrap();
        let name = |p: usize| {
            back.name_at(p)
                .map(|n| String::from_utf8_lossy(n).into_owned())
        };
        let pos_of = |key: u64| back.position(key).unwrap();
        assert_eq!(name(pos_of(40)).as_deref(), Some("new-a"));
        assert_eq!(name(pos_of(51)), None);
        let sample = Snapshot::decode(&d.encode().unwrap(), Some("f")).unwrap();
        let old_name = |p: usize| {
            sample
                .name_at(p)
                .map(|n| String::from_utf8_lossy(n).into_owned())
        };
        assert_eq!(name(pos_of(52)), old_name(7));
        assert_eq!(name(pos_of(56)), old_name(99));
    }

    #[test]
    fn cut_or_inconsistent_record_keys_are_an_error() {
        let bytes = named(50).encode().unwrap();
        let resum = |mut b: Vec<u8>| {
            let n = b.len();
            let sum = xxh3_64(&b[..n - 8]);
            b[n - 8..].copy_from_slice(&sum.to_le_bytes());
            b
        };
        // one name byte short (with a valid checksum)
        let mut short = bytes[..bytes.len() - 9].to_vec();
        short.extend_from_slice(&[0; 8]);
        assert_eq!(
            Snapshot::decode(&resum(short), Some("f")).unwrap_err(),
            SnapshotError::Truncated("record keys")
        );
        // an offset past the blob's end
        let hlen = serde_json::to_vec(&named(50).header).unwrap().len();
        let ends_at = 8 + 4 + hlen + 8 + 50 * 32 + 8;
        let mut wild = bytes.clone();
        wild[ends_at..ends_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Snapshot::decode(&resum(wild), Some("f")).unwrap_err(),
            SnapshotError::Truncated("record key offsets")
        );
        // a row count larger than the file
        let mut big = bytes.clone();
        big[8 + 4 + hlen..8 + 4 + hlen + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Snapshot::decode(&resum(big), Some("f")).is_err());
    }
}
