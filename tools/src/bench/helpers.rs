//! Pure helpers: the median, key-set checks and the markdown results table.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

/// Median of the samples (mean of the middle two for an even count); `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Compare a tool's key set with the expected one; the error names counts and a few keys.
pub fn check_keys(what: &str, got: &HashSet<String>, want: &HashSet<String>) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let missing: BTreeSet<&String> = want.difference(got).collect();
    let extra: BTreeSet<&String> = got.difference(want).collect();
    let sample = |s: &BTreeSet<&String>| {
        s.iter()
            .take(3)
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{what}: {} keys, {} expected; {} missing (e.g. {}), {} unexpected (e.g. {})",
        got.len(),
        want.len(),
        missing.len(),
        sample(&missing),
        extra.len(),
        sample(&extra)
    ))
}

/// One line of a results table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub tool: String,
    pub cores: String,
    pub wall_s: f64,
    pub rows_per_s: f64,
    pub mb_per_s: f64,
    pub rss_mb: f64,
    /// tool time / floor time (same cores)
    pub vs_floor: Option<f64>,
    /// csv-diff time / tool time (same cores)
    pub speedup_vs_csv_diff: Option<f64>,
}

fn ratio(x: Option<f64>) -> String {
    x.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "–".into())
}

/// `1234567.8` -> `1,234,568`
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A markdown table of the rows.
pub fn render_table(rows: &[TableRow]) -> String {
    let mut s = String::from(
        "| tool | cores | median wall s | rows/s | MB/s | peak RSS MB | × floor | speed-up vs csv-diff |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {} | {:.0} | {:.0} | {} | {} |",
            r.tool,
            r.cores,
            r.wall_s,
            thousands(r.rows_per_s),
            r.mb_per_s,
            r.rss_mb,
            ratio(r.vs_floor),
            ratio(r.speedup_vs_csv_diff),
        );
    }
    s
}

pub(super) fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

pub(super) fn human_rows(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}
