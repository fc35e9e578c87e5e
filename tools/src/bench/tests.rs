//! Tests of the bench's pure helpers, the floor and the file store.

use std::collections::HashSet;

use casefeed::ports::store::{ObjectStore, PutCondition, StoreError};

use super::child::floor_hash;
use super::cli::{parse_rows, parse_rows_or_none};
use super::helpers::{check_keys, human_rows, median, render_table, thousands, TableRow};
use super::store::FileStore;

#[test]
fn median_of_odd_even_and_empty() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

#[test]
fn parses_row_counts() {
    assert_eq!(parse_rows("500k"), Ok(500_000));
    assert_eq!(parse_rows("5M"), Ok(5_000_000));
    assert_eq!(parse_rows("20_000"), Ok(20_000));
    assert!(parse_rows("0").is_err());
    assert!(parse_rows("lots").is_err());
    assert_eq!(parse_rows_or_none("none"), Ok(0));
    assert_eq!(human_rows(500_000), "500k");
    assert_eq!(human_rows(5_000_000), "5M");
    assert_eq!(human_rows(1234), "1234");
}

#[test]
fn key_sets_are_checked_both_ways() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    assert!(check_keys("x", &set(&["a", "b"]), &set(&["b", "a"])).is_ok());
    let e = check_keys("x", &set(&["a", "c"]), &set(&["a", "b"])).unwrap_err();
    assert!(e.contains("1 missing (e.g. b)"), "{e}");
    assert!(e.contains("1 unexpected (e.g. c)"), "{e}");
}

#[test]
fn table_is_markdown() {
    let t = render_table(&[TableRow {
        tool: "floor".into(),
        cores: "1".into(),
        wall_s: 0.25,
        rows_per_s: 2_000_000.0,
        mb_per_s: 556.2,
        rss_mb: 12.4,
        vs_floor: Some(1.0),
        speedup_vs_csv_diff: None,
    }]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("| tool | cores |"));
    assert_eq!(
        lines[2],
        "| floor | 1 | 0.250 | 2,000,000 | 556 | 12 | 1.00x | – |"
    );
    assert_eq!(thousands(999.0), "999");
    assert_eq!(thousands(1000.0), "1,000");
}

#[test]
fn floor_counts_lines_with_and_without_final_newline() {
    let dir = std::env::temp_dir().join(format!("casefeed-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.csv");
    std::fs::write(&a, b"h\n1\n2\n").unwrap();
    let b = dir.join("b.csv");
    std::fs::write(&b, b"h\n1\n2").unwrap();
    let (la, ha) = floor_hash(&a).unwrap();
    let (lb, hb) = floor_hash(&b).unwrap();
    assert_eq!((la, lb), (3, 3));
    assert_eq!(ha, hb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn file_store_conditional_puts() {
    let dir = std::env::temp_dir().join(format!("casefeed-fstore-{}", std::process::id()));
    let s = FileStore::new(&dir);
    assert!(s.get_bytes("b", "k/x").await.unwrap().is_none());
    let e1 = s
        .put("b", "k/x", b"one".to_vec(), "t", PutCondition::IfAbsent)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        s.put("b", "k/x", b"two".to_vec(), "t", PutCondition::IfAbsent)
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    let e2 = s
        .put(
            "b",
            "k/x",
            b"two".to_vec(),
            "t",
            PutCondition::IfMatch(e1.clone()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_ne!(e1, e2);
    assert!(matches!(
        s.put("b", "k/x", b"3".to_vec(), "t", PutCondition::IfMatch(e1))
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    let f = s.get_bytes("b", "k/x").await.unwrap().unwrap();
    assert_eq!(f.bytes, b"two");
    assert_eq!(s.list("b", "k/").await.unwrap(), vec!["k/x".to_string()]);
    assert!(s.path("b", "../x").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
