//! Tests of the generator: determinism, file shape, expected.json against a real diff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::baseline::baseline;
use super::cli::{BaselineOpts, ColumnOpts, NextOpts};
use super::columns::{COLUMNS, KEY_COLUMN, TS_COLUMN};
use super::errors::expected_path;
use super::next::{is_valid_row, next};
use super::plan::Arena;
use super::row::{
    civil_from_days, days_from_civil, format_timestamp, parse_index, parse_timestamp, record_id,
    EXPORT_BASE_SECS,
};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("casefeed-gen-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn cleanup(paths: &[&Path]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(expected_path(p));
        if let Some(dir) = p.parent() {
            // Succeeds only once the last test has cleaned up.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn base_opts(rows: u64, seed: u64, out: &Path) -> BaselineOpts {
    BaselineOpts {
        rows,
        seed,
        out: out.to_path_buf(),
        malformed: 0,
        columns: ColumnOpts::default(),
    }
}

fn next_opts(prev: &Path, out: &Path) -> NextOpts {
    NextOpts {
        prev: prev.to_path_buf(),
        out: out.to_path_buf(),
        new_rows: 0,
        changed: 0,
        removed: 0,
        seed: Some(99),
        shuffle: false,
        malformed: 0,
        columns: ColumnOpts::default(),
    }
}

struct Parsed {
    header: Vec<String>,
    /// record_id -> column -> value (export_timestamp excluded), valid rows only.
    rows: HashMap<String, BTreeMap<String, String>>,
    /// record_ids in file order, valid rows only.
    order: Vec<String>,
    timestamps: BTreeSet<String>,
    /// (start line, record_id if readable) of every ragged or non-UTF-8 record.
    malformed: Vec<(u64, Vec<u8>)>,
    /// Malformed records whose line number differs from "record number + 1", i.e. an
    /// embedded newline came before them.
    malformed_after_newline: usize,
    embedded_newline_records: usize,
}

fn parse(path: &Path) -> Parsed {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .expect("open");
    let header: Vec<String> = rdr
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let key = header.iter().position(|h| h == KEY_COLUMN).expect("key");
    let mut p = Parsed {
        header: header.clone(),
        rows: HashMap::new(),
        order: Vec::new(),
        timestamps: BTreeSet::new(),
        malformed: Vec::new(),
        malformed_after_newline: 0,
        embedded_newline_records: 0,
    };
    let mut rec = csv::ByteRecord::new();
    while rdr.read_byte_record(&mut rec).expect("read") {
        let line = rec.position().expect("position").line();
        if rec.iter().any(|f| f.contains(&b'\n')) {
            p.embedded_newline_records += 1;
        }
        if !is_valid_row(&rec, header.len()) {
            let record_no = rec.position().expect("position").record();
            if line != record_no + 1 {
                p.malformed_after_newline += 1;
            }
            p.malformed
                .push((line, rec.get(key).unwrap_or_default().to_vec()));
            continue;
        }
        let mut m = BTreeMap::new();
        let mut id = String::new();
        for (h, v) in header.iter().zip(rec.iter()) {
            let v = String::from_utf8(v.to_vec()).expect("utf8");
            if h == TS_COLUMN {
                p.timestamps.insert(v);
            } else {
                if h == KEY_COLUMN {
                    id = v.clone();
                }
                m.insert(h.clone(), v);
            }
        }
        p.order.push(id.clone());
        assert!(p.rows.insert(id, m).is_none(), "duplicate record_id");
    }
    p
}

fn expected(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(expected_path(path)).expect("expected.json");
    serde_json::from_str(&text).expect("json")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

/// Diff two parsed files by record_id over the columns both have (timestamp excluded).
fn diff(a: &Parsed, b: &Parsed) -> (Vec<String>, Vec<String>, Vec<String>) {
    let common: BTreeSet<&String> = a
        .header
        .iter()
        .filter(|h| b.header.contains(h) && *h != TS_COLUMN)
        .collect();
    let project = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter()
            .filter(|(k, _)| common.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut new = Vec::new();
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for (id, row) in &b.rows {
        match a.rows.get(id) {
            None => new.push(id.clone()),
            Some(old) if project(old) != project(row) => changed.push(id.clone()),
            Some(_) => {}
        }
    }
    for id in a.rows.keys() {
        if !b.rows.contains_key(id) {
            removed.push(id.clone());
        }
    }
    new.sort();
    changed.sort();
    removed.sort();
    (new, changed, removed)
}

#[test]
fn same_seed_gives_identical_bytes() {
    let a = tmp("same-a.csv");
    let b = tmp("same-b.csv");
    let c = tmp("same-c.csv");
    baseline(&base_opts(3000, 42, &a)).expect("a");
    baseline(&base_opts(3000, 42, &b)).expect("b");
    baseline(&base_opts(3000, 43, &c)).expect("c");
    let read = |p: &Path| std::fs::read(p).expect("read");
    assert_eq!(read(&a), read(&b));
    assert_eq!(read(&expected_path(&a)), read(&expected_path(&b)));
    assert_ne!(read(&a), read(&c));

    let n1 = tmp("same-n1.csv");
    let n2 = tmp("same-n2.csv");
    let mut o = next_opts(&a, &n1);
    o.new_rows = 20;
    o.changed = 15;
    o.removed = 10;
    o.shuffle = true;
    o.malformed = 3;
    o.columns.reorder = true;
    o.columns.add.push("ordering_provider".into());
    next(&o).expect("n1");
    o.out = n2.clone();
    next(&o).expect("n2");
    assert_eq!(read(&n1), read(&n2));
    assert_eq!(read(&expected_path(&n1)), read(&expected_path(&n2)));
    cleanup(&[&a, &b, &c, &n1, &n2]);
}

#[test]
fn baseline_shape() {
    let a = tmp("shape.csv");
    let s = baseline(&base_opts(20_000, 5, &a)).expect("baseline");
    assert_eq!(s.rows, 20_000);
    let p = parse(&a);
    assert_eq!(p.header, COLUMNS.to_vec());
    assert_eq!(p.rows.len(), 20_000);
    assert_eq!(p.timestamps.len(), 1);
    assert!(p.malformed.is_empty());
    assert_eq!(p.order.first().map(String::as_str), Some("LR-00000001"));
    assert_eq!(p.order.last().map(String::as_str), Some("LR-00020000"));
    let e = expected(&a);
    assert_eq!(e["rows"], 20_000);
    assert_eq!(strings(&e["new"]).len(), 20_000);
    assert!(strings(&e["changed"]).is_empty());
    assert!(strings(&e["removed"]).is_empty());
    // Realism: non-ASCII names, quoted commas in streets, empty notes and zips,
    // quotes and (rarely) embedded newlines in notes.
    let vals = |c: &'static str| p.rows.values().map(move |r| r[c].clone());
    assert!(vals("first_name").any(|v| !v.is_ascii()));
    assert!(vals("last_name").any(|v| v.contains('\'')));
    assert!(vals("street").any(|v| v.contains(',')));
    assert!(vals("notes").filter(String::is_empty).count() > 10_000);
    assert!(vals("zip").any(|v| v.is_empty()));
    assert!(vals("notes").any(|v| v.contains('"')));
    assert!(vals("notes").any(|v| v.contains(',')));
    assert!(p.embedded_newline_records > 0);
    assert!(p.embedded_newline_records < 100);
    cleanup(&[&a]);
}

#[test]
fn next_changes_match_expected() {
    let a = tmp("chg-a.csv");
    let b = tmp("chg-b.csv");
    let c = tmp("chg-c.csv");
    baseline(&base_opts(5000, 11, &a)).expect("baseline");
    let mut o = next_opts(&a, &b);
    o.new_rows = 50;
    o.changed = 40;
    o.removed = 30;
    let s = next(&o).expect("next");
    assert_eq!(s.rows, 5000 - 30 + 50);

    let (pa, pb) = (parse(&a), parse(&b));
    let e = expected(&b);
    let (new, changed, removed) = diff(&pa, &pb);
    assert_eq!(new, strings(&e["new"]));
    assert_eq!(changed, strings(&e["changed"]));
    assert_eq!(removed, strings(&e["removed"]));
    assert_eq!((new.len(), changed.len(), removed.len()), (50, 40, 30));
    assert_eq!(e["rows"], pb.rows.len());
    assert_eq!(strings(&e["columns"]), pb.header);
    // New ids continue above the previous maximum.
    assert_eq!(new.first().map(String::as_str), Some("LR-00005001"));
    // One timestamp per file, different between files.
    assert_eq!(pb.timestamps.len(), 1);
    assert_ne!(pa.timestamps, pb.timestamps);

    // A second step with schema drift: an added and a dropped column change no row.
    let mut o2 = next_opts(&b, &c);
    o2.seed = None;
    o2.new_rows = 5;
    o2.changed = 7;
    o2.removed = 3;
    o2.columns.add.push("ordering_provider".into());
    o2.columns.drop.push("notes".into());
    next(&o2).expect("next 2");
    let pc = parse(&c);
    let e2 = expected(&c);
    let (new, changed, removed) = diff(&pb, &pc);
    assert_eq!(new, strings(&e2["new"]));
    assert_eq!(changed, strings(&e2["changed"]));
    assert_eq!(removed, strings(&e2["removed"]));
    assert_eq!((new.len(), changed.len(), removed.len()), (5, 7, 3));
    assert!(pc.header.contains(&"ordering_provider".to_string()));
    assert!(!pc.header.contains(&"notes".to_string()));
    assert!(pc.rows.values().all(|r| r["ordering_provider"].len() == 8));
    assert_ne!(pb.timestamps, pc.timestamps);
    cleanup(&[&a, &b, &c]);
}

#[test]
fn shuffle_and_reorder_without_changes_keep_rows() {
    let a = tmp("shuf-a.csv");
    let b = tmp("shuf-b.csv");
    baseline(&base_opts(4000, 3, &a)).expect("baseline");
    let mut o = next_opts(&a, &b);
    o.shuffle = true;
    o.columns.reorder = true;
    next(&o).expect("next");
    let (pa, pb) = (parse(&a), parse(&b));
    assert_eq!(pa.rows, pb.rows);
    assert_ne!(pa.order, pb.order);
    assert_ne!(pa.header, pb.header);
    let (mut ha, mut hb) = (pa.header.clone(), pb.header.clone());
    ha.sort();
    hb.sort();
    assert_eq!(ha, hb);
    let e = expected(&b);
    assert!(strings(&e["new"]).is_empty());
    assert!(strings(&e["changed"]).is_empty());
    assert!(strings(&e["removed"]).is_empty());
    assert_eq!(strings(&e["columns"]), pb.header);
    assert_ne!(pa.timestamps, pb.timestamps);
    cleanup(&[&a, &b]);
}

#[test]
fn malformed_lines_point_at_malformed_rows() {
    let a = tmp("mal-a.csv");
    let b = tmp("mal-b.csv");
    let c = tmp("mal-c.csv");
    let mut bo = base_opts(20_000, 8, &a);
    bo.malformed = 2;
    baseline(&bo).expect("baseline");
    let mut o = next_opts(&a, &b);
    o.new_rows = 100;
    o.changed = 20;
    o.removed = 10;
    o.malformed = 9;
    let s = next(&o).expect("next");
    assert_eq!(s.skipped_prev, 2);
    assert_eq!(s.malformed, 9);

    for path in [&a, &b] {
        let p = parse(path);
        let e = expected(path);
        let lines: Vec<u64> = e["malformed_lines"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_u64().expect("u64"))
            .collect();
        let found: Vec<u64> = p.malformed.iter().map(|(l, _)| *l).collect();
        assert_eq!(found, lines, "{}", path.display());
        assert_eq!(e["rows"], p.rows.len());
        // Physical lines: each listed line starts with its malformed record's id.
        let bytes = std::fs::read(path).expect("read");
        let physical: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        for (line, id) in &p.malformed {
            assert!(id.starts_with(b"LR-"));
            assert!(physical[(*line - 1) as usize].starts_with(id));
            assert!(!p
                .rows
                .contains_key(&String::from_utf8_lossy(id).into_owned()));
        }
    }
    // Both kinds are present, and the numbering had to count embedded newlines.
    let pb = parse(&b);
    let physical_lines = std::fs::read(&b)
        .expect("read")
        .iter()
        .filter(|&&x| x == b'\n')
        .count();
    assert!(pb.embedded_newline_records > 0);
    assert!(pb.malformed_after_newline > 0);
    assert!(physical_lines > pb.rows.len() + pb.malformed.len() + 1);
    let e = expected(&b);
    let (new, changed, removed) = diff(&parse(&a), &pb);
    assert_eq!(new, strings(&e["new"]));
    assert_eq!(changed, strings(&e["changed"]));
    assert_eq!(removed, strings(&e["removed"]));

    // Ragged and invalid-UTF-8 rows alternate.
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&b)
        .expect("open");
    let mut kinds = Vec::new();
    let mut rec = csv::ByteRecord::new();
    while rdr.read_byte_record(&mut rec).expect("read") {
        if rec.len() != COLUMNS.len() {
            kinds.push('r');
        } else if !is_valid_row(&rec, COLUMNS.len()) {
            kinds.push('u');
        }
    }
    assert_eq!(kinds.iter().collect::<String>(), "rurururur");

    // Reordered columns plus shuffle keep the numbering right too.
    let mut o3 = next_opts(&b, &c);
    o3.malformed = 4;
    o3.shuffle = true;
    o3.columns.reorder = true;
    next(&o3).expect("next 3");
    let pc = parse(&c);
    let lines: Vec<u64> = expected(&c)["malformed_lines"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("u64"))
        .collect();
    assert_eq!(
        pc.malformed.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        lines
    );
    cleanup(&[&a, &b, &c]);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let a = tmp("err-a.csv");
    let b = tmp("err-b.csv");
    baseline(&base_opts(10, 1, &a)).expect("baseline");

    let mut o = next_opts(&a, &b);
    o.removed = 6;
    o.changed = 5;
    let msg = next(&o).expect_err("too many").to_string();
    assert!(msg.contains("exceeds the 10 data rows"), "{msg}");

    let gz = tmp("err.csv.gz");
    assert!(baseline(&base_opts(10, 1, &gz)).is_err());

    let mut o = next_opts(&a, &b);
    o.columns.drop.push("record_id".into());
    assert!(next(&o).is_err());

    let mut o = next_opts(&a, &b);
    o.columns.add.push("city".into());
    assert!(next(&o).is_err());

    let mut o = next_opts(&a, &a);
    o.new_rows = 1;
    assert!(next(&o).is_err());

    let missing = tmp("does-not-exist.csv");
    let o = next_opts(&missing, &b);
    let msg = next(&o).expect_err("missing").to_string();
    assert!(msg.contains("does-not-exist.csv"), "{msg}");

    let no_key = tmp("err-nokey.csv");
    std::fs::write(&no_key, "a,b\n1,2\n").expect("write");
    assert!(next(&next_opts(&no_key, &b)).is_err());
    cleanup(&[&a, &b, &no_key]);
}

#[test]
fn helpers() {
    assert_eq!(record_id(1), "LR-00000001");
    assert_eq!(record_id(123_456_789), "LR-123456789");
    assert_eq!(parse_index(b"LR-00000042"), Some(42));
    assert_eq!(parse_index(b"LR-"), None);
    assert_eq!(parse_index(b"XX-1"), None);
    for d in [-1000, 0, 1, 59, 60, 18_000, 20_000, 100_000] {
        let (y, m, dd) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, dd), d);
    }
    assert_eq!(format_timestamp(EXPORT_BASE_SECS), "2025-06-01T00:00:00Z");
    assert_eq!(
        parse_timestamp(b"2025-06-01T00:00:00Z"),
        Some(EXPORT_BASE_SECS)
    );
    let mut arena = Arena::default();
    let row = vec![b"a".to_vec(), Vec::new(), vec![b'x'; 300]];
    arena.push(&row);
    arena.push(&vec![row[0].clone(); 3]);
    let mut out = vec![Vec::new(); 3];
    arena.load(0, &mut out);
    assert_eq!(out, row);
    arena.load(1, &mut out);
    assert_eq!(out, vec![row[0].clone(); 3]);
}
