//! Line prints: a row's raw line hashed, so that the next file's identical lines are known
//! unchanged without splitting or fingerprinting them.

use super::record::comma_positions;

const LINE_SEED: u64 = 0x6c69_6e65_0000_0001;

/// The hash of a row's raw line (without its line ending); never 0 (0 means "no line").
#[inline]
pub fn line_hash(line: &[u8]) -> u64 {
    match xxhash_rust::xxh3::xxh3_64_with_seed(line, LINE_SEED) {
        0 => 1,
        h => h,
    }
}

/// The hash a plain line (without its terminator) is known by: [`line_hash`] of the line
/// with the values of the `ignored` fields (sorted file positions) cut out, their commas
/// kept. 0 when the line cannot be known that way: longer than the row limit allows, fewer
/// fields than an ignored position, or quoting that the fields up to the last ignored one do
/// not close. Two lines with the same print have the same bytes in every other field — so,
/// read with the same header, the same key and the same content fingerprint. An ignored
/// value must still be valid UTF-8 (the full path would reject the row otherwise), and
/// `len <= max_row_bytes` bounds the row's size ([`super::Record::size`]: values and
/// separators, at most the line's length) whatever the cut-out values were.
///
/// `fields` is the header's column count. When the only ignored column is the last one (an
/// export timestamp at the end of the row, the usual case), a line whose text after its last
/// comma holds no quote is printed as the bytes up to and including that comma: for a row
/// of `fields` fields that is what the field walk gives, and a line that prints the same as
/// an accepted row's line is that row's leading fields plus one plain last field — so it has
/// exactly `fields` fields too. Anything else takes the walk.
pub fn line_print(
    line: &[u8],
    ignored: &[usize],
    fields: usize,
    max_row_bytes: usize,
    scratch: &mut PrintScratch,
) -> u64 {
    if line.len() > max_row_bytes {
        return 0;
    }
    let Some(&last) = ignored.last() else {
        return line_hash(line);
    };
    if ignored.len() == 1 && last + 1 == fields {
        if let Some(p) = memchr::memrchr(b',', line) {
            let tail = &line[p + 1..];
            if memchr::memchr(b'"', tail).is_none() {
                if simdutf8::basic::from_utf8(tail).is_err() {
                    return 0;
                }
                return line_hash(&line[..p + 1]);
            }
        }
    }
    let n = line.len();
    let PrintScratch { commas, kept } = scratch;
    comma_positions(line, commas);
    kept.clear();
    // as `split_line` walks fields: the next comma not yet used or skipped
    let mut c = 0usize;
    let (mut i, mut field, mut kept_from) = (0usize, 0usize, 0usize);
    let mut next = ignored.iter().copied().peekable();
    loop {
        let start = i;
        let end = if line.get(i) == Some(&b'"') {
            let mut r = i + 1;
            let end = loop {
                let Some(k) = memchr::memchr(b'"', &line[r..]) else {
                    return 0;
                };
                let q = r + k;
                if line.get(q + 1) == Some(&b'"') {
                    r = q + 2;
                    continue;
                }
                break q + 1;
            };
            if end < n && line[end] != b',' {
                return 0;
            }
            // commas inside the quotes are not separators
            while c < commas.len() && (commas[c] as usize) <= end {
                c += 1;
            }
            end
        } else {
            match commas.get(c) {
                Some(&k) => {
                    c += 1;
                    k as usize
                }
                None => n,
            }
        };
        if next.peek() == Some(&field) {
            next.next();
            if simdutf8::basic::from_utf8(&line[start..end]).is_err() {
                return 0;
            }
            kept.extend_from_slice(&line[kept_from..start]);
            kept_from = end;
            if field == last {
                kept.extend_from_slice(&line[kept_from..]);
                return line_hash(kept);
            }
        }
        if end >= n {
            return 0;
        }
        i = end + 1;
        field += 1;
    }
}

/// Scratch space for [`line_print`].
#[derive(Debug, Default)]
pub struct PrintScratch {
    commas: Vec<u32>,
    kept: Vec<u8>,
}
