//! The filter stage's tests: fingerprints, the column plan under schema drift, and the
//! differ's classes and next state.

use super::*;
use crate::config::FeedConfig;
use crate::contract::envelope::next_chain;
use crate::contract::source::SourceObject;
use crate::splitter::source::Record;
use crate::splitter::state::{Entry, Snapshot, SnapshotHeader, FORMAT_VERSION};

fn feed() -> FeedConfig {
    let mut f = FeedConfig::new("f", &["id"]);
    f.ignore_columns = vec!["ts".into()];
    f
}
fn hdr(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|s| s.to_string()).collect()
}
fn rec(vals: &[&str]) -> Record {
    Record::from_fields(vals)
}
fn fingerprints(cols: &[&str], vals: &[&str], prev: Option<&[String]>) -> Fingerprints {
    let plan = ColumnPlan::new(&hdr(cols), &feed(), prev).unwrap();
    Fingerprinter::default().fingerprints(&plan, &rec(vals))
}
fn snap(entries: Vec<(u64, u64)>, hashed: Vec<String>) -> Snapshot {
    let entries: Vec<Entry> = entries.into_iter().map(Entry::from).collect();
    Snapshot::from_entries(
        SnapshotHeader {
            format: FORMAT_VERSION,
            feed: "f".into(),
            key_columns: vec!["id".into()],
            hashed_columns: hashed,
            source: SourceObject::default(),
            row_count: 0,
            created_at: String::new(),
            run: String::new(),
            line_context: None,
            generation: 0,
        },
        entries,
    )
}

#[test]
fn reordered_columns_and_ignored_columns_change_nothing() {
    let a = fingerprints(&["id", "a", "b", "ts"], &["1", "x", "y", "t1"], None);
    let b = fingerprints(&["b", "ts", "id", "a"], &["y", "t2", "1", "x"], None);
    assert_eq!(a, b);
    let c = fingerprints(&["id", "a", "b", "ts"], &["1", "x", "z", "t1"], None);
    assert_eq!(a.key, c.key);
    assert_ne!(a.compare, c.compare);
}

#[test]
fn field_boundaries_matter() {
    let a = fingerprints(&["id", "a", "b"], &["1", "ab", "c"], None);
    let b = fingerprints(&["id", "a", "b"], &["1", "a", "bc"], None);
    assert_ne!(a.compare, b.compare);
    // swapping values between columns is a change
    let c = fingerprints(&["id", "a", "b"], &["1", "c", "ab"], None);
    assert_ne!(a.compare, c.compare);
}

#[test]
fn composite_keys() {
    let mut f = FeedConfig::new("f", &["j", "id"]);
    f.ignore_columns.clear();
    let plan = ColumnPlan::new(&hdr(&["id", "j", "v"]), &f, None).unwrap();
    let mut fp = Fingerprinter::default();
    let a = fp.fingerprints(&plan, &rec(&["1", "ca", "v"]));
    let b = fp.fingerprints(&plan, &rec(&["1", "ny", "v"]));
    assert_ne!(a.key, b.key);
    assert_eq!(record_key(&plan, &rec(&["1", "ca", "v"])), "ca|1");
    // separators inside values are escaped: distinct keys, distinct record keys
    let ra = record_key(&plan, &rec(&["7", "CA|LA", "v"]));
    let rb = record_key(&plan, &rec(&["LA|7", "CA", "v"]));
    assert_ne!(ra, rb);
    assert_eq!(ra, "CA\\|LA|7");
    // the bytes the state's table keeps are the same record keys
    for r in [["7", "CA|LA", "v"], ["1", "ca", "v"], ["x\\", "Zoë", "v"]] {
        let mut b = Vec::new();
        write_record_key(&plan, &rec(&r), &mut b);
        assert_eq!(b, record_key(&plan, &rec(&r)).into_bytes());
    }
    let plan2 = ColumnPlan::new(&hdr(&["v", "j", "id"]), &f, None).unwrap();
    assert_eq!(fp.fingerprints(&plan2, &rec(&["v", "ca", "1"])), a);
}

#[test]
fn added_column_is_not_a_change() {
    let cols = ["id", "a", "ts"];
    let base = ColumnPlan::new(&hdr(&cols), &feed(), None).unwrap();
    let p0 = fingerprints(&cols, &["1", "x", "t"], None);
    let plan = ColumnPlan::new(
        &hdr(&["id", "a", "new", "ts"]),
        &feed(),
        Some(&base.hashed_columns),
    )
    .unwrap();
    assert_eq!(plan.added, vec!["new"]);
    let p1 = Fingerprinter::default().fingerprints(&plan, &rec(&["1", "x", "n", "t"]));
    assert_eq!(p1.compare, p0.compare);
    assert_ne!(p1.store, p0.store);
    assert_eq!(plan.hashed_columns, vec!["a", "new"]);
}

#[test]
fn removed_column_rebaselines_known_keys_and_finds_new_ones() {
    // the snapshot hashed a and b; the file has lost b (removed or renamed to c)
    let old_cols = ["id", "a", "b"];
    let s = snap(
        vec![
            (
                fingerprints(&old_cols, &["1", "x", "y"], None).key,
                fingerprints(&old_cols, &["1", "x", "y"], None).compare,
            ),
            (
                fingerprints(&old_cols, &["2", "x", "y"], None).key,
                fingerprints(&old_cols, &["2", "x", "y"], None).compare,
            ),
        ],
        hdr(&["a", "b"]),
    );
    let plan = ColumnPlan::new(
        &hdr(&["id", "a", "c"]),
        &feed(),
        Some(&s.header.hashed_columns),
    )
    .unwrap();
    assert_eq!(plan.removed, vec!["b"]);
    assert_eq!(plan.added, vec!["c"]);
    assert!(!plan.comparable());
    let mut d = Differ::new(Some(&s), 0, plan.comparable(), false);
    let mut fp = Fingerprinter::default();
    assert_eq!(
        d.classify(fp.fingerprints(&plan, &rec(&["1", "z", "q"]))),
        Class::Unchanged
    );
    assert_eq!(
        d.classify(fp.fingerprints(&plan, &rec(&["3", "x", "q"]))),
        Class::New
    );
    let (entries, c, _) = d.finish();
    let entries = entries.to_entries();
    assert_eq!(
        (c.new, c.changed, c.unchanged, c.rebaselined, c.removed),
        (1, 0, 1, 1, 1)
    );
    // the re-baselined row now carries the fingerprint over the file's columns
    let e1 = entries
        .iter()
        .find(|e| e.key == fingerprints(&old_cols, &["1", "x", "y"], None).key)
        .unwrap();
    assert_eq!(
        e1.content,
        fp.fingerprints(&plan, &rec(&["1", "z", "q"])).store
    );
}

#[test]
fn classification() {
    let cols = ["id", "a"];
    let p = |id: &str, a: &str| fingerprints(&cols, &[id, a], None);
    let s = snap(
        vec![
            (p("1", "x").key, p("1", "x").compare),
            (p("2", "x").key, p("2", "x").compare),
            (p("3", "x").key, p("3", "x").compare),
        ],
        hdr(&["a"]),
    );
    let mut d = Differ::new(Some(&s), 0, true, false);
    assert_eq!(d.classify(p("1", "x")), Class::Unchanged);
    assert_eq!(
        d.classify(p("2", "y")),
        Class::Changed {
            previous: p("2", "x").compare,
            chain: next_chain(None, p("2", "x").compare),
        }
    );
    assert_eq!(d.classify(p("4", "x")), Class::New);
    assert_eq!(d.classify(p("4", "z")), Class::Duplicate);
    assert_eq!(d.classify(p("1", "q")), Class::Duplicate);
    let (entries, c, _) = d.finish();
    let entries = entries.to_entries();
    assert_eq!(
        c,
        DiffCounts {
            new: 1,
            changed: 1,
            unchanged: 1,
            removed: 1,
            duplicate: 2,
            rebaselined: 0,
            known: 0,
        }
    );
    assert_eq!(entries.len(), 3);
    let has = |k: u64, c: u64| entries.iter().any(|e| e.key == k && e.content == c);
    assert!(has(p("4", "x").key, p("4", "x").store));
    assert!(has(p("1", "x").key, p("1", "x").store));
    let two = entries.iter().find(|e| e.key == p("2", "y").key).unwrap();
    assert_eq!(
        two.chain,
        next_chain(
            Some(next_chain(None, p("2", "x").compare)),
            p("2", "y").store
        )
    );
}

#[test]
fn carried_rows_are_not_removed() {
    let cols = ["id", "a"];
    let p = |id: &str, a: &str| fingerprints(&cols, &[id, a], None);
    let s = snap(vec![(p("1", "x").key, p("1", "x").compare)], hdr(&["a"]));
    let mut d = Differ::new(Some(&s), 0, true, false);
    d.carry(p("1", "x").key, |_| {});
    d.carry(p("1", "x").key, |_| {});
    d.carry(p("9", "x").key, |_| {});
    let (entries, c, _) = d.finish();
    let entries = entries.to_entries();
    assert_eq!(c.removed, 0);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0], s.entry(p("1", "x").key).unwrap());
}

#[test]
fn no_snapshot_everything_new() {
    let cols = ["id", "a"];
    let mut d = Differ::new(None, 2, true, false);
    assert_eq!(
        d.classify(fingerprints(&cols, &["1", "x"], None)),
        Class::New
    );
    assert_eq!(
        d.classify(fingerprints(&cols, &["2", "x"], None)),
        Class::New
    );
    let (_, c, _) = d.finish();
    assert_eq!(c.new, 2);
    assert_eq!(c.removed, 0);
}

#[test]
fn batch_classification_matches_one_by_one() {
    let cols = ["id", "a"];
    let base: Vec<(u64, u64)> = (0..2000)
        .map(|i| {
            let p = fingerprints(&cols, &[&i.to_string(), "x"], None);
            (p.key, p.compare)
        })
        .collect();
    let s = snap(base, hdr(&["a"]));
    // known unchanged, changed, new, and duplicates of each, in a scrambled order
    let rows: Vec<Fingerprints> = (0..2300u64)
        .chain(0..200)
        .map(|n| {
            let i = (n * 7919) % 2600;
            let v = if i % 5 == 0 { "y" } else { "x" };
            fingerprints(&cols, &[&i.to_string(), v], None)
        })
        .collect();
    let mut one = Differ::new(Some(&s), 0, true, false);
    let a: Vec<Class> = rows.iter().map(|&p| one.classify(p)).collect();
    let mut batched = Differ::new(Some(&s), 0, true, false);
    let mut b = Vec::new();
    let mut out = Vec::new();
    for chunk in rows.chunks(256) {
        batched.classify_batch(chunk, &mut out);
        b.extend_from_slice(&out);
    }
    assert_eq!(a, b);
    let (ea, ca, ra) = one.finish();
    let (eb, cb, rb) = batched.finish();
    assert!(ea.keys.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    assert_eq!(ca, cb);
    assert_eq!(ea, eb);
    assert_eq!((ra.len() as u64, &ra), (ca.removed, &rb));
    assert!(ca.new > 0 && ca.changed > 0 && ca.duplicate > 0 && ca.removed > 0);
}

/// A column plan over 100,000 columns against a previous state of almost the same columns
/// is made in one pass over each list (only that it runs: no time is measured), and its
/// drift is exact: the added columns in name order, the removed ones in the state's order.
#[test]
fn a_plan_over_100000_columns_with_a_previous_state_is_made() {
    let n = 100_000;
    let mut f = FeedConfig::new("f", &["c7", "c0"]);
    f.ignore_columns = vec!["c1".into(), "c99999".into()];
    let header: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let first = ColumnPlan::new(&header, &f, None).unwrap();
    assert_eq!(first.hashed_columns.len(), n - 4);
    assert_eq!(first.key_idx, [7, 0]);
    // the next file: c5 and c6 gone, x1 and x0 new
    let mut next: Vec<String> = header
        .iter()
        .filter(|c| *c != "c5" && *c != "c6")
        .cloned()
        .collect();
    next.push("x1".into());
    next.push("x0".into());
    let plan = ColumnPlan::new(&next, &f, Some(&first.hashed_columns)).unwrap();
    assert_eq!(plan.key_idx, [5, 0]);
    assert_eq!(plan.added, ["x0", "x1"]);
    assert_eq!(plan.removed, ["c5", "c6"]);
    assert_eq!(plan.hashed_columns.len(), n - 4);
    assert!(!plan.comparable());
    // a key column the file lacks is named
    let mut lacking = next.clone();
    lacking.retain(|c| c != "c7");
    match ColumnPlan::new(&lacking, &f, None) {
        Err(crate::splitter::source::FileRejection::MissingRequired(m)) => assert_eq!(m, ["c7"]),
        other => panic!("{other:?}"),
    }
}

/// A row rejected for another reason whose key value is only whitespace has no readable
/// key: it keeps no record's state.
#[test]
fn a_key_of_only_whitespace_is_no_readable_key() {
    let plan = ColumnPlan::new(&hdr(&["id", "a", "ts"]), &feed(), None).unwrap();
    let mut fp = Fingerprinter::default();
    assert!(key_fp(&plan, &rec(&["1", "x"]), &mut fp).is_some());
    assert!(key_fp(&plan, &rec(&[" 1 ", "x"]), &mut fp).is_some());
    for blank in ["", " ", "\t", " \r\n\t\x0b\x0c "] {
        assert_eq!(
            key_fp(&plan, &rec(&[blank, "x"]), &mut fp),
            None,
            "{blank:?}"
        );
    }
    assert_eq!(key_fp(&plan, &rec(&[]), &mut fp), None);
}

/// With `trim_keys`, whitespace around a key value is not part of the key: the key
/// fingerprint (also of a row rejected otherwise) and the record key are the bare value's,
/// in a single and a composite key; whitespace inside stays. Without it they differ.
#[test]
fn with_trim_keys_a_padded_key_is_the_same_record_as_the_bare_one() {
    let cols = hdr(&["id", "j", "v"]);
    let mut single = FeedConfig::new("f", &["id"]);
    let mut composite = FeedConfig::new("f", &["j", "id"]);
    for trim in [false, true] {
        single.trim_keys = trim;
        composite.trim_keys = trim;
        let plan = ColumnPlan::new(&cols, &single, None).unwrap();
        let mut fp = Fingerprinter::default();
        let bare = fp.fingerprints(&plan, &rec(&["42", "ca", "v"]));
        let padded = fp.fingerprints(&plan, &rec(&[" \t42\r\n ", "ca", "v"]));
        assert_eq!(padded.key == bare.key, trim, "trim_keys = {trim}");
        assert_eq!(padded.compare, bare.compare, "the key is not content");
        assert_eq!(
            key_fp(&plan, &rec(&[" 42 ", "ca"]), &mut fp) == Some(bare.key),
            trim
        );
        assert_eq!(
            record_key(&plan, &rec(&[" 42 ", "ca", "v"])),
            if trim { "42" } else { " 42 " }
        );
        assert_ne!(
            fp.fingerprints(&plan, &rec(&["4 2", "ca", "v"])).key,
            bare.key,
            "whitespace inside a value is kept"
        );
        let plan = ColumnPlan::new(&cols, &composite, None).unwrap();
        let bare = fp.fingerprints(&plan, &rec(&["42", "ca", "v"]));
        let padded = fp.fingerprints(&plan, &rec(&["42 ", " ca", "v"]));
        assert_eq!(
            padded.key == bare.key,
            trim,
            "composite, trim_keys = {trim}"
        );
        assert_eq!(
            record_key(&plan, &rec(&["42 ", " ca", "v"])),
            if trim { "ca|42" } else { " ca|42 " }
        );
    }
}

#[test]
fn the_next_state_names_known_records_by_the_snapshot_and_new_ones_by_the_file() {
    let cols = ["id", "a"];
    let p = |id: &str, a: &str| fingerprints(&cols, &[id, a], None);
    let entry = |id: &str| Entry::from((p(id, "x").key, p(id, "x").compare));
    let s = Snapshot::from_named_entries(
        snap(Vec::new(), hdr(&["a"])).header,
        ["1", "2", "3"].map(|id| (entry(id), format!("name-{id}"))),
    );
    let mut d = Differ::new(Some(&s), 0, true, false);
    let mut out = Vec::new();
    // 1 unchanged, 2 changed, 4 new; 3 removed
    d.classify_batch(&[p("1", "x"), p("2", "y"), p("4", "x")], &mut out);
    let mut asked = Vec::new();
    d.name_rows(|row, b| {
        asked.push(row);
        b.extend_from_slice(format!("file-{row}").as_bytes());
    });
    assert_eq!(asked, [2], "only the new row is asked for its record key");
    let (next, c, removed) = d.finish();
    assert_eq!(c.removed, 1);
    assert_eq!(removed, [s.position(p("3", "x").key).unwrap() as u32]);
    let name_of = |id: &str| {
        let i = next.keys.iter().position(|&k| k == p(id, "x").key).unwrap();
        next.name(i)
            .map(|n| String::from_utf8_lossy(n).into_owned())
    };
    assert_eq!(name_of("1").as_deref(), Some("name-1"));
    assert_eq!(name_of("2").as_deref(), Some("name-2"));
    assert_eq!(name_of("4").as_deref(), Some("file-2"));
}

#[test]
fn a_state_without_record_keys_asks_the_file_for_every_known_record_s() {
    let cols = ["id", "a"];
    let p = |id: &str, a: &str| fingerprints(&cols, &[id, a], None);
    let s = snap(
        ["1", "2", "3"]
            .map(|id| (p(id, "x").key, p(id, "x").compare))
            .to_vec(),
        hdr(&["a"]),
    );
    assert!(s.names().is_none(), "a state as format 2 wrote it");
    let mut d = Differ::new(Some(&s), 0, true, false);
    let mut out = Vec::new();
    d.classify_batch(&[p("1", "x"), p("2", "y"), p("1", "x")], &mut out);
    let mut asked = Vec::new();
    d.name_rows(|row, b| {
        asked.push(row);
        b.extend_from_slice(format!("row-{row}").as_bytes());
    });
    assert_eq!(asked, [0, 1], "each known record once, not its duplicate");
    // a rejected row of record 3 names it too
    d.carry(p("3", "x").key, |b| b.extend_from_slice(b"carried-3"));
    let (next, c, removed) = d.finish();
    assert_eq!((c.removed, removed.len()), (0, 0));
    let names: Vec<_> = (0..next.len())
        .map(|i| {
            next.name(i)
                .map(|n| String::from_utf8_lossy(n).into_owned())
        })
        .collect();
    let mut names: Vec<String> = names.into_iter().map(|n| n.unwrap()).collect();
    names.sort();
    assert_eq!(names, ["carried-3", "row-0", "row-1"]);
}
