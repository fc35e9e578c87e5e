//! Record keys by row: the record key strings of a state (the `record_key` the envelope
//! carries, see [`crate::splitter::filter::record_key`]) kept as one blob of bytes and each
//! row's end offset in it — two allocations for millions of rows, no `String` per row. A
//! name is resolved only when it is needed: to name a removed record, or to write the next
//! state.

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
    pub(crate) fn span(&self, i: usize) -> (usize, usize) {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        (start, self.ends[i] as usize)
    }

    /// The bytes of the names of rows `first..=last`, back to back.
    #[inline]
    pub(crate) fn bytes_of(&self, first: usize, last: usize) -> &[u8] {
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
    pub(crate) fn ends(&self) -> &[u32] {
        &self.ends
    }

    /// The blob of every name, in row order (the snapshot's encoding).
    #[cfg(test)]
    pub(crate) fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// Names from their encoding; `None` when the offsets do not fit the blob (they must
    /// not decrease and the last must be the blob's end).
    pub(crate) fn from_parts(blob: Vec<u8>, ends: Vec<u32>) -> Option<KeyNames> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
