//! One CSV record as a byte buffer with field bounds, and the in-place split of a plain line
//! (SSE2 comma search on x86_64, a portable scan elsewhere).

/// One CSV record: a byte buffer and where each field's value lies in it.
///
/// [`super::RowReader`] fills it with one copy of the line: a line whose fields are plain or simply
/// quoted is split where it lies (quotes stripped, `""` unescaped in place); any other
/// record goes through `csv-core`'s state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub(super) data: Vec<u8>,
    pub(super) bounds: Vec<(usize, usize)>,
    /// Whether the record's bytes are valid UTF-8 (checked once, on the raw bytes).
    pub(super) utf8: bool,
    /// [`super::line_hash`] of the raw line when the record was one plain line, else 0.
    pub(super) line_hash: u64,
}

impl Record {
    /// An empty record (no fields).
    pub fn new() -> Record {
        Record::default()
    }

    /// A record of these field values (tests, tools).
    pub fn from_fields<I, T>(fields: I) -> Record
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut r = Record::new();
        for f in fields {
            let start = r.data.len();
            r.data.extend_from_slice(f.as_ref());
            r.bounds.push((start, r.data.len()));
        }
        r.utf8 = simdutf8::basic::from_utf8(&r.data).is_ok();
        r
    }

    /// Number of fields.
    #[inline]
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Whether the record has no fields.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The value of field `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let &(a, b) = self.bounds.get(i)?;
        self.data.get(a..b)
    }

    /// The fields' values, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.bounds.iter().map(move |&(a, b)| &self.data[a..b])
    }

    /// The hash of the record's raw line, when [`super::RowReader`] read it as one line
    /// (0 if not).
    #[inline]
    pub fn line_hash(&self) -> u64 {
        self.line_hash
    }

    /// Bytes of the record's buffer: at least the sum of its values' lengths.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The record's size as the row limit (`max_row_bytes`) counts it: its values' bytes
    /// plus one separator between each two — for a line without quotes, its length
    /// without the line ending (quotes around a value, and the second quote of an escaped
    /// one, are not counted).
    pub fn size(&self) -> usize {
        let values: usize = self.bounds.iter().map(|(a, b)| b - a).sum();
        values + self.bounds.len().saturating_sub(1)
    }

    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.bounds.clear();
        self.utf8 = false;
        self.line_hash = 0;
    }
}

impl std::ops::Index<usize> for Record {
    type Output = [u8];
    #[inline]
    fn index(&self, i: usize) -> &[u8] {
        let (a, b) = self.bounds[i];
        &self.data[a..b]
    }
}

/// Whether `b` is whitespace as key values are judged and trimmed: ASCII space, tab, line
/// feed, vertical tab, form feed or carriage return.
#[inline]
fn is_key_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r')
}

/// Whether a key value is no key: empty, or only whitespace.
#[inline]
pub fn is_blank_key(value: &[u8]) -> bool {
    value.iter().all(|&b| is_key_space(b))
}

/// A key value without its leading and trailing whitespace (a feed's `trim_keys`).
#[inline]
pub fn trim_key(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_key_space(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_key_space(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Positions of every comma of `d`, in order, into `out` (cleared first).
#[inline]
pub(super) fn comma_positions(d: &[u8], out: &mut Vec<u32>) {
    out.clear();
    let mut base = 0usize;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16 bytes inside `d`
        // (`base + 16 <= d.len()`), unaligned loads allowed.
        unsafe {
            let comma = _mm_set1_epi8(b',' as i8);
            while base + 16 <= d.len() {
                let v = _mm_loadu_si128(d.as_ptr().add(base).cast());
                let mut m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, comma)) as u32;
                while m != 0 {
                    out.push(base as u32 + m.trailing_zeros());
                    m &= m - 1;
                }
                base += 16;
            }
        }
    }
    for (j, &b) in d[base..].iter().enumerate() {
        if b == b',' {
            out.push((base + j) as u32);
        }
    }
}

/// Split a copied line in place: plain fields, and quoted fields that close on this line
/// and are followed by a comma or the end. Anything else (a quote left open — a line break
/// inside quotes —, text after a closing quote) returns false and the caller hands the
/// record to `csv-core`. `\r` never reaches here. `commas` is scratch space.
#[inline]
pub(super) fn split_line(rec: &mut Record, commas: &mut Vec<u32>) -> bool {
    let d = &mut rec.data;
    let n = d.len();
    comma_positions(d, commas);
    // the next comma not yet used or skipped
    let mut c = 0usize;
    let mut i = 0;
    loop {
        if i < n && d[i] == b'"' {
            let start = i + 1;
            let (mut r, mut w) = (start, start);
            loop {
                let Some(k) = memchr::memchr(b'"', &d[r..n]) else {
                    return false;
                };
                let q = r + k;
                if w != r {
                    d.copy_within(r..q, w);
                }
                w += q - r;
                if d.get(q + 1) == Some(&b'"') {
                    d[w] = b'"';
                    w += 1;
                    r = q + 2;
                    continue;
                }
                rec.bounds.push((start, w));
                i = q + 1;
                break;
            }
            if i == n {
                return true;
            }
            if d[i] != b',' {
                return false;
            }
            // commas inside the quotes are not separators
            while c < commas.len() && (commas[c] as usize) <= i {
                c += 1;
            }
            i += 1;
        } else {
            match commas.get(c) {
                Some(&k) => {
                    let k = k as usize;
                    rec.bounds.push((i, k));
                    c += 1;
                    i = k + 1;
                }
                None => {
                    rec.bounds.push((i, n));
                    return true;
                }
            }
        }
        if i == n {
            // a trailing comma: an empty last field
            rec.bounds.push((n, n));
            return true;
        }
    }
}
