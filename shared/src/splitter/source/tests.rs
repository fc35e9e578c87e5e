//! The source stage's tests: the reader against the CSV rules and the `csv` crate, gzip,
//! whole-file rejections, line prints and known lines.

use super::reader::Read1;
use super::record::comma_positions;
use super::*;
use crate::splitter::state::KnownLines;
use std::io::Read;
use std::sync::Arc;

type Parsed = (Vec<String>, Vec<(u64, Vec<String>)>, Vec<Rejected>);

fn rows(data: &[u8]) -> Parsed {
    let s = open_stream(std::io::Cursor::new(data.to_vec()), 64, u64::MAX).unwrap();
    let mut r = RowReader::new(s, &["id".into()], &["id".into()], 100, 200).unwrap();
    let mut rec = Record::new();
    let mut ok = vec![];
    let mut bad = vec![];
    while let Some(row) = r.next_row(&mut rec).unwrap() {
        match row {
            Row::Ok { line, record } => ok.push((
                line,
                record
                    .iter()
                    .map(|f| String::from_utf8(f.to_vec()).unwrap())
                    .collect(),
            )),
            Row::Rejected { rejected, .. } => bad.push(rejected),
            Row::Known { .. } => unreachable!("no known lines were set"),
        }
    }
    (r.header().to_vec(), ok, bad)
}

#[test]
fn quoted_commas_newlines_crlf_bom() {
    let data = b"\xEF\xBB\xBFid,name,addr\r\n1,\"Zo\xC3\xAB, Jr\",\"12 Main St\r\nApt 4\"\r\n2,\"say \"\"hi\"\"\",\r\n";
    let (h, ok, bad) = rows(data);
    assert_eq!(h, vec!["id", "name", "addr"]);
    assert!(bad.is_empty());
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[0].1, vec!["1", "Zoë, Jr", "12 Main St\r\nApt 4"]);
    assert_eq!(ok[0].0, 2);
    assert_eq!(ok[1].1, vec!["2", "say \"hi\"", ""]);
    assert_eq!(ok[1].0, 4, "line numbers count embedded newlines");
}

#[test]
fn gzip_is_transparent() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b"\xEF\xBB\xBFid,v\n1,a\n2,b\n").unwrap();
    let gz = enc.finish().unwrap();
    let (h, ok, bad) = rows(&gz);
    assert_eq!(h, vec!["id", "v"]);
    assert_eq!(ok.len(), 2);
    assert!(bad.is_empty());
}

#[test]
fn corrupt_gzip_is_a_file_rejection() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    writeln!(enc, "id,v").unwrap();
    for i in 0..5000 {
        writeln!(enc, "{i},value-{i}").unwrap();
    }
    let gz = enc.finish().unwrap();
    let mut cut = b"".to_vec();
    cut.extend_from_slice(&gz[..gz.len() / 2]);
    let s = open_stream(std::io::Cursor::new(cut), 64, u64::MAX).unwrap();
    let mut r = RowReader::new(s, &[], &["id".into()], 10, 100).unwrap_or_else(|e| panic!("{e}"));
    let mut rec = Record::new();
    let err = loop {
        match r.next_row(&mut rec) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a truncated gzip read to the end"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, ReadError::Rejected(FileRejection::CorruptCompression)),
        "{err}"
    );
    assert!(!err.retryable());
}

#[test]
fn source_failures_stay_retryable() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("connection reset"))
        }
    }
    let err = open_stream(Broken, 64, u64::MAX).err().unwrap();
    assert!(err.retryable(), "{err}");
}

#[test]
fn bad_rows_are_rejected_with_lines() {
    let data = b"id,v\n1,a\n2\n3,\xFF\xFE\n,x\n4,b,c\n5,ok\n";
    let (_, ok, bad) = rows(data);
    assert_eq!(ok.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 7]);
    let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6]);
    assert!(bad[0].reason.contains("ragged"));
    assert!(bad[1].reason.contains("UTF-8") && bad[1].reason.contains("`v`"));
    assert!(bad[2].reason.contains("empty key"));
    assert!(bad[3].reason.contains("ragged"));
    for b in &bad {
        assert!(!b.reason.contains('\u{FFFD}') && !b.reason.contains("x"));
    }
}

#[test]
fn huge_row_is_rejected_without_values() {
    let mut data = b"id,v\n1,".to_vec();
    data.extend(std::iter::repeat_n(b'x', 500));
    data.extend(b"\n2,y\n");
    let (_, ok, bad) = rows(&data);
    assert_eq!(ok.len(), 1);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].reason.contains("over the feed's limit"));
    assert!(bad[0].fields.is_empty());
}

#[test]
fn whole_file_rejections() {
    let open = |d: &[u8]| {
        let s = open_stream(std::io::Cursor::new(d.to_vec()), 64, u64::MAX).unwrap();
        RowReader::new(s, &["id".into(), "v".into()], &["id".into()], 3, 100)
            .err()
            .map(|e| e.to_string())
    };
    assert!(open(b"").unwrap().contains("empty"));
    assert!(open(b"\xEF\xBB\xBF").unwrap().contains("empty"));
    assert!(open(b"\n\n").unwrap().contains("empty"));
    assert!(open(b"id,w\n1,2\n").unwrap().contains("missing: v"));
    assert!(open(b"id,v,id\n").unwrap().contains("positions 1 and 3"));
    assert!(open(b"id,,v\n").unwrap().contains("empty column name"));
    assert!(open(b"id,v,a,b\n").unwrap().contains("limit of 3"));
    assert!(open(b"id,\xFF\n").unwrap().contains("UTF-8"));
    assert!(
        open(b"id,v\n").is_none(),
        "header only is a valid empty export"
    );
}

/// Hands out at most `n` bytes per read: every buffer boundary gets exercised.
struct Trickle(std::io::Cursor<Vec<u8>>, usize);
impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.1);
        self.0.read(&mut buf[..n])
    }
}

fn all_records(data: &[u8], per_read: usize, max_row: usize) -> Vec<(u64, Vec<Vec<u8>>)> {
    let src = Trickle(std::io::Cursor::new(data.to_vec()), per_read);
    let mut r = match RowReader::new(src, &[], &[], 1_000_000, max_row) {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    let mut out = vec![(
        1,
        r.header().iter().map(|h| h.as_bytes().to_vec()).collect(),
    )];
    let mut rec = Record::new();
    while let Ok(Read1::Record { line, .. }) = r.read_record(&mut rec) {
        out.push((line, rec.iter().map(|f| f.to_vec()).collect()));
    }
    out
}

/// A seeded xorshift64 generator: the random inputs of these tests, reproducible.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// The two paths of the reader give what the `csv` crate gives, record by record, on
/// random input made of CSV's special bytes, whatever the read sizes.
#[test]
fn same_records_as_the_csv_crate_on_random_input() {
    let alphabet: &[&[u8]] = &[
        b"a",
        b"bc",
        b",",
        b",",
        b"\"",
        b"\n",
        b"\r\n",
        b"\r",
        b" ",
        "é".as_bytes(),
        b"\"\"",
    ];
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    for case in 0..2000 {
        let len = (next() % 60) as usize;
        let mut data = b"h1,h2\n".to_vec();
        for _ in 0..len {
            data.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let mut want = Vec::new();
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&data[..]);
        let mut rec = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut rec).unwrap_or(false) {
            want.push(rec.iter().map(|f| f.to_vec()).collect::<Vec<_>>());
        }
        for per_read in [1, 2, 3, 7, 4096] {
            let got: Vec<Vec<Vec<u8>>> = all_records(&data, per_read, 1 << 16)
                .into_iter()
                .map(|(_, f)| f)
                .collect();
            assert_eq!(
                got,
                want,
                "case {case}, reads of {per_read}: {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }
}

/// With a snapshot's line hashes set, exactly the plain lines it has come back as known
/// (at their line numbers, with the row that has them), and every other record comes
/// back as it did without — whatever the read sizes and wherever the buffer ends.
#[test]
fn known_lines_change_nothing_else() {
    use crate::splitter::state::{Entry, Snapshot, SnapshotHeader, FORMAT_VERSION};
    let alphabet: &[&[u8]] = &[
        b"a", b"bc", b",", b",", b"\"", b"\n", b"\n", b"\n", b"\r\n", b"\r", b"x,y",
    ];
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    type Got = Vec<(u64, Result<Vec<Vec<u8>>, u32>)>;
    let read =
        |data: &[u8], per_read: usize, ignored: &[String], known: Option<Arc<KnownLines>>| -> Got {
            let src = Trickle(std::io::Cursor::new(data.to_vec()), per_read);
            let mut r = RowReader::new(src, &[], &[], 1_000_000, 1 << 16).unwrap();
            r.set_line_ignored(ignored);
            r.set_known(known);
            let mut rec = Record::new();
            let mut out = Vec::new();
            loop {
                match r.read_record(&mut rec).unwrap() {
                    Read1::End => return out,
                    Read1::Record { line, .. } => {
                        out.push((line, Ok(rec.iter().map(|f| f.to_vec()).collect())))
                    }
                    Read1::Known { line, pos } => out.push((line, Err(pos))),
                }
            }
        };
    for case in 0..300 {
        // no column, the last or the first left out of line prints
        let ignored = [vec![], vec!["h2".to_string()], vec!["h1".to_string()]][case % 3].clone();
        let mut data = b"h1,h2\n".to_vec();
        for _ in 0..(next() % 400) {
            data.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        // the plain lines as the reader hashes them, and a random half of them known
        let plain: Vec<(u64, Vec<Vec<u8>>, u64)> = {
            let src = std::io::Cursor::new(data.clone());
            let mut r = RowReader::new(src, &[], &[], 1_000_000, 1 << 16).unwrap();
            r.set_line_ignored(&ignored);
            let mut rec = Record::new();
            let mut v = Vec::new();
            while let Ok(Read1::Record { line, .. }) = r.read_record(&mut rec) {
                v.push((
                    line,
                    rec.iter().map(|f| f.to_vec()).collect(),
                    rec.line_hash(),
                ));
            }
            v
        };
        let mut chosen = std::collections::BTreeSet::new();
        for (_, _, h) in &plain {
            if *h != 0 && next().is_multiple_of(2) {
                chosen.insert(*h);
            }
        }
        let entries: Vec<Entry> = chosen
            .iter()
            .enumerate()
            .map(|(i, &h)| Entry {
                key: i as u64,
                content: 0,
                chain: 0,
                line: h,
            })
            .collect();
        let header = SnapshotHeader {
            format: FORMAT_VERSION,
            feed: "f".into(),
            key_columns: vec![],
            hashed_columns: vec![],
            source: Default::default(),
            row_count: 0,
            created_at: String::new(),
            run: String::new(),
            line_context: None,
            generation: 0,
        };
        let snap = Arc::new(Snapshot::from_entries(header, entries));
        let known = KnownLines::new(snap.clone()).map(Arc::new);
        let want: Got = plain
            .iter()
            .map(|(line, fields, h)| {
                let pos = (*h != 0 && chosen.contains(h))
                    .then(|| (0..snap.len()).find(|&p| snap.line_at(p) == *h).unwrap());
                match pos {
                    Some(p) => (*line, Err(p as u32)),
                    None => (*line, Ok(fields.clone())),
                }
            })
            .collect();
        for per_read in [1, 2, 7, 64, 4096] {
            let got = read(&data, per_read, &ignored, known.clone());
            assert_eq!(
                got,
                want,
                "case {case}, reads of {per_read}, {ignored:?} left out: {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }
}

#[test]
fn line_prints_leave_out_ignored_values_and_nothing_else() {
    // the field walk only (no column count known)
    fn p(line: impl AsRef<[u8]>, ig: &[usize]) -> u64 {
        line_print(
            line.as_ref(),
            ig,
            usize::MAX,
            100,
            &mut PrintScratch::default(),
        )
    }
    // with the column count: the last column's shortcut
    fn pf(line: impl AsRef<[u8]>, ig: &[usize], fields: usize) -> u64 {
        line_print(line.as_ref(), ig, fields, 100, &mut PrintScratch::default())
    }
    assert_eq!(pf("1,a,TS1", &[2], 3), p("1,a,TS1", &[2]));
    assert_eq!(pf("1,\"a,b\",TS1", &[2], 3), p("1,\"a,b\",TS2", &[2]));
    assert_eq!(pf("1,a,\"T,S\"", &[2], 3), p("1,a,TS2", &[2]));
    assert_eq!(pf(b"1,a,\xff", &[2], 3), 0);
    assert_ne!(pf("1,a,TS,x", &[2], 3), p("1,a,TS", &[2]), "a ragged row");
    // the last column ignored (an export timestamp)
    assert_eq!(p("1,a,TS1", &[2]), p("1,a,TS2", &[2]));
    assert_eq!(p("1,a,TS1", &[2]), p("1,a,\"T,\"\"S\"", &[2]));
    assert_ne!(p("1,a,TS1", &[2]), p("1,b,TS1", &[2]));
    assert_ne!(
        p("1,a,TS1", &[2]),
        p("1,a,TS1,x", &[2]),
        "an extra field counts"
    );
    assert_ne!(p("1,a,TS1", &[2]), p("1,a,", &[1]));
    // in the middle, quoted fields around it
    let a = p("\"1,2\",TS,\"x\"\"y\"", &[1]);
    assert_ne!(a, 0);
    assert_eq!(a, p("\"1,2\",\"TS,TS\",\"x\"\"y\"", &[1]));
    assert_ne!(a, p("\"1,2\",TS,\"x\"\"z\"", &[1]));
    assert_ne!(a, p("\"1\",TS,\"x\"\"y\"", &[1]));
    // several ignored
    assert_eq!(p("k,1,v,2,w", &[1, 3]), p("k,9,v,8,w", &[1, 3]));
    assert_ne!(p("k,1,v,2,w", &[1, 3]), p("k,1,v,2,x", &[1, 3]));
    // nothing ignored: the plain line hash
    assert_eq!(p("1,a,TS1", &[]), line_hash(b"1,a,TS1"));
    assert_ne!(p("1,a,TS1", &[]), p("1,a,TS2", &[]));
    // not known by a print: too few fields, unclosed or odd quoting up to the ignored
    // field, an ignored value that is not UTF-8, a line too long for the limit
    assert_eq!(p("1,a", &[2]), 0);
    assert_eq!(p("1,\"a,TS", &[2]), 0);
    assert_eq!(p("1,\"a\"b,TS", &[2]), 0);
    assert_eq!(p("1,a,\"TS", &[2]), 0);
    assert_eq!(p(b"1,a,\xff", &[2]), 0);
    assert_ne!(p(b"1,\xff,a", &[2]), 0, "the full path checks kept values");
    assert_eq!(p([b'a'; 101], &[]), 0);
    assert_ne!(
        p([b'a'; 100], &[]),
        0,
        "a line of exactly the limit is a row"
    );
    assert_eq!(p([b'a'; 101], &[0]), 0);
    // commas inside quotes before the ignored field are not separators
    assert_eq!(p("\"a,b\",x,TS", &[2]), p("\"a,b\",x,\"T,S\"", &[2]));
    assert_eq!(p("\"a,b\",x,TS", &[2]), p("\"a,b\",x,", &[2]));
    assert_eq!(p("\"a,b\",x", &[2]), 0);
}

/// The last column's shortcut prints every row of the right width as the field walk
/// does (stored prints and looked-up prints must agree, whichever way each was made).
#[test]
fn the_last_column_shortcut_agrees_with_the_field_walk() {
    let alphabet: &[&[u8]] = &[
        b"a",
        b"bc",
        b",",
        b",",
        b"\"",
        b"\"\"",
        b" ",
        "é".as_bytes(),
    ];
    let mut next = xorshift(0x1234_5678_9ABC_DEF1);
    let mut agreed = 0;
    for _ in 0..20_000 {
        let mut line = Vec::new();
        for _ in 0..(next() % 16) {
            line.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&line[..]);
        let mut rec = csv::ByteRecord::new();
        let fields = match rdr.read_byte_record(&mut rec) {
            Ok(true) if rdr.read_byte_record(&mut csv::ByteRecord::new()).ok() == Some(false) => {
                rec.len()
            }
            _ => continue,
        };
        let walk = line_print(
            &line,
            &[fields - 1],
            usize::MAX,
            1 << 20,
            &mut PrintScratch::default(),
        );
        let short = line_print(
            &line,
            &[fields - 1],
            fields,
            1 << 20,
            &mut PrintScratch::default(),
        );
        if walk != 0 {
            assert_eq!(short, walk, "{:?}", String::from_utf8_lossy(&line));
            agreed += 1;
        }
    }
    assert!(agreed > 1000, "{agreed}");
}

#[test]
fn line_numbers_count_every_line_feed() {
    let data = b"id,v\n1,a\n\n2,\"x\ny\"\r\n3,b\r\n\r\n4,\"q\"\n5,c";
    for per_read in [1, 5, 4096] {
        let got = all_records(data, per_read, 1000);
        let lines: Vec<u64> = got.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 2, 4, 6, 8, 9], "reads of {per_read}");
        assert_eq!(got[2].1, vec![b"2".to_vec(), b"x\ny".to_vec()]);
        assert_eq!(got[5].1, vec![b"5".to_vec(), b"c".to_vec()]);
    }
}

/// A record far over the limit (a quote never closed, say) is read with bounded memory,
/// rejected with its size, its key still readable, and the rows after it are intact.
#[test]
fn oversized_records_are_bounded_and_keep_their_key() {
    for quoted in [false, true] {
        let mut data = b"id,v,w\n1,a,b\n2,".to_vec();
        if quoted {
            data.push(b'"');
        }
        data.extend(std::iter::repeat_n(b'x', 300_000));
        if quoted {
            data.extend_from_slice(b"\n\"");
        }
        data.extend_from_slice(b",z\n3,c,d\n");
        let src = Trickle(std::io::Cursor::new(data), 1000);
        let mut r = RowReader::new(src, &[], &["id".into()], 10, 100).unwrap();
        let mut rec = Record::new();
        let mut seen = Vec::new();
        while let Some(row) = r.next_row(&mut rec).unwrap() {
            match row {
                Row::Ok { line, record } => seen.push((line, record[0].to_vec(), None)),
                Row::Rejected { rejected, record } => {
                    assert!(record.data.len() <= 1000, "kept {}", record.data.len());
                    seen.push((rejected.line, record[0].to_vec(), Some(rejected.reason)))
                }
                Row::Known { .. } => unreachable!("no known lines were set"),
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[1].1, b"2");
        let reason = seen[1].2.as_deref().unwrap_or_default();
        assert!(reason.contains("over the feed's limit of 100"), "{reason}");
        assert_eq!(seen[2].1, b"3");
        assert_eq!(seen[2].0, if quoted { 5 } else { 4 });
    }
}

#[test]
fn comma_positions_match_a_plain_scan() {
    let mut out = Vec::new();
    for len in 0..100usize {
        let d: Vec<u8> = (0..len)
            .map(|i| if (i * 7 + len) % 5 == 0 { b',' } else { b'a' })
            .collect();
        comma_positions(&d, &mut out);
        let want: Vec<u32> = (0..len as u32).filter(|&i| d[i as usize] == b',').collect();
        assert_eq!(out, want, "length {len}");
    }
}

/// A row's line and its fields, or the reason it was rejected.
type LineRow = (u64, Result<Vec<Vec<u8>>, String>);

/// Every row of `data` (key column `id`) read with this row limit and read size.
fn read_limited(data: &[u8], max_row: usize, per_read: usize) -> Vec<LineRow> {
    let src = Trickle(std::io::Cursor::new(data.to_vec()), per_read);
    let mut r = RowReader::new(src, &[], &["id".into()], 10, max_row).unwrap();
    let mut rec = Record::new();
    let mut out = Vec::new();
    while let Some(row) = r.next_row(&mut rec).unwrap() {
        match row {
            Row::Ok { line, record } => {
                out.push((line, Ok(record.iter().map(|f| f.to_vec()).collect())))
            }
            Row::Rejected { rejected, .. } => out.push((rejected.line, Err(rejected.reason))),
            Row::Known { .. } => unreachable!("no known lines were set"),
        }
    }
    out
}

#[test]
fn record_size_counts_values_and_the_commas_between_them() {
    assert_eq!(Record::from_fields(["ab", "", "c"]).size(), "ab,,c".len());
    assert_eq!(Record::from_fields(["abc"]).size(), 3);
    assert_eq!(Record::from_fields([""]).size(), 0);
    assert_eq!(Record::new().size(), 0);
}

/// A row's size is its values' bytes plus the commas between them (an unquoted line's
/// length without its line ending; quotes are not counted): a row of exactly the limit is
/// accepted, one byte more is rejected, on the plain path and the state machine's alike.
#[test]
fn a_row_of_exactly_max_row_bytes_is_accepted_and_one_byte_more_is_rejected() {
    for quoted in [false, true] {
        // `1,` and a value: `size` bytes of values and separators
        let row = |size: usize| {
            let v = "x".repeat(size - 2);
            if quoted {
                format!("1,\"{v}\"")
            } else {
                format!("1,{v}")
            }
        };
        let data = format!("id,v\n{}\n{}\r\n2,y\n", row(100), row(101));
        for per_read in [1, 7, 4096] {
            let got = read_limited(data.as_bytes(), 100, per_read);
            let what = format!("quoted: {quoted}, reads of {per_read}");
            assert_eq!(got.len(), 3, "{what}: {got:?}");
            assert_eq!(got[0].0, 2);
            assert_eq!(
                got[0].1,
                Ok(vec![b"1".to_vec(), vec![b'x'; 98]]),
                "{what}: a row of exactly the limit"
            );
            assert_eq!(got[1].0, 3);
            assert_eq!(
                got[1].1,
                Err("row is 101 bytes, over the feed's limit of 100".to_string()),
                "{what}: one byte over the limit"
            );
            assert_eq!(got[2], (4, Ok(vec![b"2".to_vec(), b"y".to_vec()])));
        }
    }
}

/// A row far over the limit, read with bounded memory, is measured as the rows within it
/// are: values plus separators.
#[test]
fn an_oversized_row_is_reported_with_its_values_and_separators_counted() {
    for quoted in [false, true] {
        let v = "x".repeat(5000);
        let v = if quoted { format!("\"{v}\"") } else { v };
        let data = format!("id,v,w\n1,{v},z\n2,a,b\n");
        for per_read in [3, 4096] {
            let got = read_limited(data.as_bytes(), 100, per_read);
            assert_eq!(
                got[0],
                (
                    2,
                    Err("row is 5004 bytes, over the feed's limit of 100".to_string())
                ),
                "quoted: {quoted}, reads of {per_read}"
            );
            assert!(got[1].1.is_ok());
        }
    }
}

/// The names `c0`, `c1`, … of an `n`-column header, and the header line.
fn wide_header(n: usize) -> (Vec<String>, Vec<u8>) {
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut line = names.join(",").into_bytes();
    line.push(b'\n');
    (names, line)
}

/// A header of 100,000 columns (the most `max_columns` allows) is validated in one pass
/// over its names: they are kept in order, the required and key columns are found, and the
/// columns left out of line prints are placed. (Only that it runs: no time is measured.)
#[test]
fn a_header_of_100000_columns_is_validated() {
    let n = 100_000;
    let (names, mut data) = wide_header(n);
    let row: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    data.extend_from_slice(row.join(",").as_bytes());
    data.push(b'\n');
    let s = open_stream(std::io::Cursor::new(data), 1 << 16, u64::MAX).unwrap();
    let required: Vec<String> = vec!["c99999".into(), "c50000".into(), "c0".into()];
    let mut r = RowReader::new(s, &required, &["c50000".into()], n, 1 << 20).unwrap();
    assert_eq!(r.header(), &names[..]);
    r.set_line_ignored(&["c99999".into(), "c50000".into(), "c3".into(), "gone".into()]);
    let mut rec = Record::new();
    match r.next_row(&mut rec).unwrap() {
        Some(Row::Ok { line, record }) => {
            assert_eq!(line, 2);
            assert_eq!(record.len(), n);
            assert_eq!(&record[50000], b"v50000");
        }
        _ => panic!("the row is not read"),
    }
}

/// The sanity check of the one-pass header validation: in a wide header, a repeated name
/// is reported at its first and second positions, and missing columns are named.
#[test]
fn a_repeated_name_in_a_wide_header_is_reported_with_both_positions() {
    let n = 100_000;
    let open = |names: &[String], required: &[String], key: &[String]| {
        let mut data = names.join(",").into_bytes();
        data.push(b'\n');
        let s = open_stream(std::io::Cursor::new(data), 1 << 16, u64::MAX).unwrap();
        RowReader::new(s, required, key, n, 1 << 16)
            .err()
            .map(|e| e.to_string())
    };
    let (mut names, _) = wide_header(n);
    names[n - 1] = "c7".into();
    names[n - 2] = "c7".into();
    assert_eq!(
        open(&names, &[], &[]).as_deref(),
        Some("the header row names the same column at positions 8 and 99999")
    );
    let (names, _) = wide_header(n);
    assert_eq!(
        open(
            &names,
            &["c1".into(), "nope".into(), "c2".into()],
            &["c3".into()]
        )
        .as_deref(),
        Some("required column(s) missing: nope")
    );
    assert_eq!(
        open(&names, &[], &["c3".into(), "nokey".into()]).as_deref(),
        Some("required column(s) missing: nokey")
    );
}

/// The gzip of `data`.
fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Counts the bytes a source hands out: how much of an object was read.
struct Counted(std::io::Cursor<Vec<u8>>, Arc<std::sync::atomic::AtomicU64>);
impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1
            .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
}

/// Every row of `data` read with this inflation limit, up to the error that ended it.
fn read_inflated(data: Vec<u8>, limit: u64) -> (Vec<u64>, Option<ReadError>) {
    let s = match open_stream(std::io::Cursor::new(data), 64, limit) {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut r = match RowReader::new(s, &[], &["id".into()], 10, 100) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut rec = Record::new();
    let mut lines = Vec::new();
    loop {
        match r.next_row(&mut rec) {
            Ok(Some(Row::Ok { line, .. })) => lines.push(line),
            Ok(Some(_)) => {}
            Ok(None) => return (lines, None),
            Err(e) => return (lines, Some(e)),
        }
    }
}

/// A small gzip that inflates far past the feed's limit — repeated rows, or one endless
/// run of zero bytes — is refused as a file (permanent, the limit named), having read only
/// the start of the object, never its end.
#[test]
fn a_gzip_that_inflates_past_the_limit_is_rejected_before_its_end() {
    let limit = 1 << 20;
    // a header, then `chunk` again and again: 128 MiB inflated, streamed into the encoder
    let bomb = |chunk: &[u8]| {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"id,v\n").unwrap();
        let block = chunk.repeat((1 << 20) / chunk.len());
        for _ in 0..128 {
            enc.write_all(&block).unwrap();
        }
        enc.finish().unwrap()
    };
    for (what, compressed) in [
        ("repeated rows", bomb(b"1234567,some repeated value\n")),
        ("zero bytes", bomb(&[0])),
    ] {
        assert!(compressed.len() < 1 << 20, "{what}: a small object");
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let src = Counted(std::io::Cursor::new(compressed.clone()), read.clone());
        let s = open_stream(src, 64, limit).unwrap();
        let mut r = RowReader::new(s, &[], &["id".into()], 10, 100).unwrap();
        let mut rec = Record::new();
        let err = loop {
            match r.next_row(&mut rec) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{what}: read to the end"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err,
                ReadError::Rejected(FileRejection::InflatedTooLarge { limit: 1048576 })
            ),
            "{what}: {err}"
        );
        assert!(!err.retryable(), "{what}: the same bytes fail the same way");
        let reason = err.to_string();
        assert!(
            reason.contains("1048576") && reason.contains("max_inflated_bytes"),
            "{reason}"
        );
        let read = read.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            read < compressed.len() as u64 / 4,
            "{what}: {read} of {} compressed bytes read",
            compressed.len()
        );
    }
}

/// A gzip that inflates to exactly the limit is read whole, one byte over it is refused;
/// a plain object is not counted against it.
#[test]
fn a_gzip_that_inflates_to_exactly_the_limit_is_read_whole() {
    let data = b"id,v\n1,a\n2,b\n";
    let limit = data.len() as u64;
    let (lines, err) = read_inflated(gz(data), limit);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(lines, [2, 3]);
    let (_, err) = read_inflated(gz(data), limit - 1);
    assert!(
        matches!(
            err,
            Some(ReadError::Rejected(FileRejection::InflatedTooLarge {
                limit: 12
            }))
        ),
        "{err:?}"
    );
    // more than one gzip member: their bytes together
    let mut two = gz(b"id,v\n1,a\n");
    two.extend_from_slice(&gz(b"2,b\n"));
    assert_eq!(read_inflated(two.clone(), limit).0, [2, 3]);
    assert!(read_inflated(two, limit - 1).1.is_some());
    // a plain object: no inflation to count
    let (lines, err) = read_inflated(data.to_vec(), 1);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(lines, [2, 3]);
}

/// A key value of only whitespace is no key: its row is rejected like an empty key's,
/// with its line and the key column's name (never the value), in a single and in a
/// composite key, on the plain path and the state machine's.
#[test]
fn a_key_of_only_whitespace_is_rejected_with_its_line() {
    // line 5 simply quoted (split in place), lines 8-9 one record of the state machine
    let data = b"id,v\n1,a\n ,b\n\t,c\n\" \t \",d\n\x0b\x0c,e\n 2 ,f\n\"\n\",g\n3,h\n";
    let (_, ok, bad) = rows(data);
    assert_eq!(
        ok.iter()
            .map(|r| (r.0, r.1[0].as_str()))
            .collect::<Vec<_>>(),
        [(2, "1"), (7, " 2 "), (10, "3")],
        "a key with whitespace around it is still a key (trimmed only with trim_keys)"
    );
    let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 8], "{bad:?}");
    for b in &bad {
        assert_eq!(
            b.reason, "empty key column `id` (only whitespace)",
            "line {}",
            b.line
        );
    }
    // a composite key: either value of only whitespace
    let s = open_stream(
        std::io::Cursor::new(b"j,id,v\nca,1,a\n  ,2,b\nny,\t,c\n".to_vec()),
        64,
        u64::MAX,
    )
    .unwrap();
    let mut r = RowReader::new(s, &[], &["j".into(), "id".into()], 10, 100).unwrap();
    let mut rec = Record::new();
    let mut got = Vec::new();
    while let Some(row) = r.next_row(&mut rec).unwrap() {
        match row {
            Row::Ok { line, .. } => got.push((line, String::new())),
            Row::Rejected { rejected, .. } => got.push((rejected.line, rejected.reason)),
            Row::Known { .. } => unreachable!("no known lines were set"),
        }
    }
    assert_eq!(
        got,
        [
            (2, String::new()),
            (3, "empty key column `j` (only whitespace)".to_string()),
            (4, "empty key column `id` (only whitespace)".to_string()),
        ]
    );
}
