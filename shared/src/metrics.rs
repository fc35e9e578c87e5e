//! CloudWatch metrics as Embedded Metric Format lines on stdout (no API calls, no row values).

use crate::consumer::BatchResult;
use crate::contract::report::{RunReport, RunStatus};
use std::collections::BTreeMap;

static SILENCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// No metrics from this process: for the `casefeed` CLI, which runs the splitter in process
/// (`approve`, `diff`). EMF on stdout becomes metrics only inside Lambda; elsewhere it would
/// be noise in the command's output (or break its `--json`).
pub fn silence() {
    SILENCED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `CASEFEED_NO_METRICS` set (and not `0`), or [`silence`]d: no metrics on stdout.
fn quiet() -> bool {
    SILENCED.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var("CASEFEED_NO_METRICS").is_ok_and(|v| v != "0")
}

/// One EMF document per run: counts by feed and status.
pub fn emit_run(report: &RunReport) {
    let doc = run_doc(report);
    if !quiet() {
        println!("{doc}");
    }
}

pub(crate) fn run_doc(report: &RunReport) -> serde_json::Value {
    let c = &report.counts;
    serde_json::json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": "casefeed",
                "Dimensions": [["feed"], ["feed", "status"], []],
                "Metrics": [
                    {"Name": "RowsRead", "Unit": "Count"},
                    {"Name": "RowsNew", "Unit": "Count"},
                    {"Name": "RowsChanged", "Unit": "Count"},
                    {"Name": "RowsRemoved", "Unit": "Count"},
                    {"Name": "RowsRejected", "Unit": "Count"},
                    {"Name": "RowsDuplicate", "Unit": "Count"},
                    {"Name": "RowsKnown", "Unit": "Count"},
                    {"Name": "MessagesSent", "Unit": "Count"},
                    {"Name": "FilesHeld", "Unit": "Count"},
                    {"Name": "RunsApplied", "Unit": "Count"},
                    {"Name": "RunMillis", "Unit": "Milliseconds"}
                ]
            }]
        },
        "feed": report.feed,
        "status": report.status.as_str(),
        "guards_tripped": report
            .guards
            .iter()
            .filter(|g| g.tripped)
            .map(|g| g.guard.as_str())
            .collect::<Vec<_>>(),
        "RowsRead": c.read,
        "RowsNew": c.new,
        "RowsChanged": c.changed,
        "RowsRemoved": c.removed,
        "RowsRejected": c.rejected,
        "RowsDuplicate": c.duplicate,
        "RowsKnown": c.known,
        "MessagesSent": c.sent,
        "FilesHeld": u64::from(report.status == RunStatus::Held),
        "RunsApplied": u64::from(matches!(report.status, RunStatus::Applied | RunStatus::Baseline)),
        "RunMillis": report.timings.total_ms,
    })
}

/// Every metric name casefeed emits (namespace `casefeed`). The template's alarms and
/// dashboard may name only these (tests/template checks it against this list).
pub const EMITTED: [&str; 25] = [
    // the splitter, per run: dimension sets [feed], [feed, status], []
    "RowsRead",
    "RowsNew",
    "RowsChanged",
    "RowsRemoved",
    "RowsRejected",
    "RowsDuplicate",
    "RowsKnown",
    "MessagesSent",
    "FilesHeld",
    "RunsApplied",
    "RunMillis",
    // the consumer, per batch and feed: [feed], []
    "Applied",
    "Duplicates",
    "Superseded",
    "Retried",
    "Unfinished",
    "ApiCalls",
    "ApiLatencyMillis",
    "SentToAppliedMillis",
    "UploadToAppliedMillis",
    "SupersededAgeMillis",
    "DeadLetteredAgeMillis",
    // the consumer, per batch, feed and class: [feed], [feed, class], []
    "DeadLettered",
    // the consumer, per invocation: [] (CircuitOpen: the fleet's breaker, 1 when open)
    "ApiAuthFailures",
    "CircuitOpen",
];

/// A consumer batch's metrics, as EMF documents on stdout: per invocation (auth failures,
/// the breaker), per feed (fates, API calls and latency, ages), per feed and dead-letter
/// class.
pub fn emit_batch(result: &BatchResult) {
    if quiet() {
        return;
    }
    for doc in batch_docs(result) {
        println!("{doc}");
    }
}

fn emf(dimensions: serde_json::Value, metrics: &[(&str, &str)]) -> serde_json::Value {
    let defs: Vec<serde_json::Value> = metrics
        .iter()
        .map(|(name, unit)| serde_json::json!({"Name": name, "Unit": unit}))
        .collect();
    serde_json::json!({
        "Timestamp": chrono::Utc::now().timestamp_millis(),
        "CloudWatchMetrics": [{
            "Namespace": "casefeed",
            "Dimensions": dimensions,
            "Metrics": defs,
        }]
    })
}

pub(crate) fn batch_docs(result: &BatchResult) -> Vec<serde_json::Value> {
    let s = &result.stats;
    let mut docs = vec![serde_json::json!({
        "_aws": emf(serde_json::json!([[]]), &[("ApiAuthFailures", "Count"), ("CircuitOpen", "None")]),
        "ApiAuthFailures": s.auth_failures,
        "CircuitOpen": u32::from(s.circuit_opened),
    })];
    for (feed, f) in &result.by_feed {
        docs.push(serde_json::json!({
            "_aws": emf(
                serde_json::json!([["feed"], []]),
                &[
                    ("Applied", "Count"),
                    ("Duplicates", "Count"),
                    ("Superseded", "Count"),
                    ("Retried", "Count"),
                    ("Unfinished", "Count"),
                    ("ApiCalls", "Count"),
                ],
            ),
            "feed": feed,
            "Applied": f.applied,
            "Duplicates": f.duplicates,
            "Superseded": f.superseded,
            "Retried": f.retried,
            "Unfinished": f.unfinished,
            "ApiCalls": f.api_latency_ms.len(),
        }));
        for (class, n) in &f.dead_lettered {
            docs.push(serde_json::json!({
                "_aws": emf(serde_json::json!([["feed"], ["feed", "class"], []]), &[("DeadLettered", "Count")]),
                "feed": feed,
                "class": class,
                "DeadLettered": n,
            }));
        }
    }
    docs.extend(series_docs(result));
    docs
}

/// The most values one EMF metric may carry in a document.
const EMF_MAX_VALUES: usize = 100;

/// A batch's value series, one EMF document per feed (and per 100 values):
/// `ApiLatencyMillis` (each call), `SentToAppliedMillis` and `UploadToAppliedMillis` (the
/// row's sending and its export's upload to the API's acknowledgement),
/// `SupersededAgeMillis`, `DeadLetteredAgeMillis`.
pub(crate) fn series_docs(result: &BatchResult) -> Vec<serde_json::Value> {
    type Series = BTreeMap<&'static str, Vec<i64>>;
    let mut by_feed: BTreeMap<&str, Series> = BTreeMap::new();
    for a in &result.ages {
        let series = by_feed.entry(a.feed.as_str()).or_default();
        let (sent, upload) = match a.fate {
            "applied" => ("SentToAppliedMillis", Some("UploadToAppliedMillis")),
            "superseded" => ("SupersededAgeMillis", None),
            _ => ("DeadLetteredAgeMillis", None),
        };
        if let Some(v) = a.sent_age_ms {
            series.entry(sent).or_default().push(v);
        }
        if let (Some(name), Some(v)) = (upload, a.upload_age_ms) {
            series.entry(name).or_default().push(v);
        }
    }
    for (feed, f) in &result.by_feed {
        if !f.api_latency_ms.is_empty() {
            by_feed
                .entry(feed.as_str())
                .or_default()
                .entry("ApiLatencyMillis")
                .or_default()
                .extend(&f.api_latency_ms);
        }
    }
    let mut docs = Vec::new();
    for (feed, series) in by_feed {
        let chunks = series
            .values()
            .map(|v| v.len().div_ceil(EMF_MAX_VALUES))
            .max()
            .unwrap_or(0);
        for i in 0..chunks {
            let mut doc = serde_json::Map::new();
            let mut names = Vec::new();
            for (name, values) in &series {
                let part: Vec<i64> = values
                    .iter()
                    .skip(i * EMF_MAX_VALUES)
                    .take(EMF_MAX_VALUES)
                    .copied()
                    .collect();
                if part.is_empty() {
                    continue;
                }
                names.push((*name, "Milliseconds"));
                doc.insert(name.to_string(), serde_json::json!(part));
            }
            doc.insert("feed".into(), serde_json::json!(feed));
            doc.insert(
                "_aws".into(),
                emf(serde_json::json!([["feed"], []]), &names),
            );
            docs.push(serde_json::Value::Object(doc));
        }
    }
    docs
}

/// Whether `doc` is a well-formed EMF document as CloudWatch reads it: a timestamp, one or
/// more directives with a namespace, dimension sets naming string members of the document
/// (at most 30 each), and metrics that are in the document as a number or 1–100 numbers,
/// each named once. Checks casefeed's own output (tests) and what the logs hold.
pub fn validate_emf(doc: &serde_json::Value) -> Result<(), String> {
    let aws = doc.get("_aws").ok_or("no _aws")?;
    if !aws.get("Timestamp").is_some_and(serde_json::Value::is_i64) {
        return Err("_aws.Timestamp is not an integer".into());
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(serde_json::Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or("no CloudWatchMetrics directive")?;
    let mut seen = std::collections::BTreeSet::new();
    for d in directives {
        if !d.get("Namespace").is_some_and(serde_json::Value::is_string) {
            return Err("a directive has no Namespace".into());
        }
        let sets = d
            .get("Dimensions")
            .and_then(serde_json::Value::as_array)
            .ok_or("a directive has no Dimensions")?;
        for set in sets {
            let keys = set.as_array().ok_or("a dimension set is not an array")?;
            if keys.len() > 30 {
                return Err("a dimension set has more than 30 dimensions".into());
            }
            for k in keys {
                let k = k.as_str().ok_or("a dimension is not a string")?;
                if !doc.get(k).is_some_and(serde_json::Value::is_string) {
                    return Err(format!("dimension {k} is not a string member"));
                }
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(serde_json::Value::as_array)
            .filter(|m| !m.is_empty())
            .ok_or("a directive has no Metrics")?;
        for m in metrics {
            let name = m
                .get("Name")
                .and_then(serde_json::Value::as_str)
                .ok_or("a metric has no Name")?;
            if !seen.insert(name.to_string()) {
                return Err(format!("metric {name} is defined twice"));
            }
            match doc.get(name) {
                Some(v) if v.is_number() => {}
                Some(serde_json::Value::Array(vs))
                    if (1..=EMF_MAX_VALUES).contains(&vs.len())
                        && vs.iter().all(serde_json::Value::is_number) => {}
                _ => return Err(format!("metric {name} has no number or 1-100 numbers")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{Aged, FeedStats};

    fn aged(feed: &str, fate: &'static str, sent: i64, upload: Option<i64>) -> Aged {
        Aged {
            feed: feed.into(),
            fate,
            sent_age_ms: Some(sent),
            upload_age_ms: upload,
        }
    }

    fn sum(docs: &[serde_json::Value], name: &str) -> u64 {
        docs.iter().filter_map(|d| d[name].as_u64()).sum()
    }

    fn values(docs: &[&serde_json::Value], name: &str) -> usize {
        docs.iter()
            .map(|d| d[name].as_array().map_or(0, Vec::len))
            .sum()
    }

    #[test]
    fn a_batch_becomes_valid_emf_per_feed_and_class_and_its_counts_add_up() {
        let mut r = BatchResult::default();
        r.stats.auth_failures = 2;
        r.stats.circuit_opened = true;
        let mut labs = FeedStats {
            applied: 151,
            superseded: 1,
            retried: 3,
            api_latency_ms: (0..160).collect(),
            ..FeedStats::default()
        };
        labs.dead_lettered.insert("permanent", 2);
        labs.dead_lettered.insert("retry_window", 1);
        let mut cases = FeedStats {
            duplicates: 4,
            unfinished: 1,
            ..FeedStats::default()
        };
        cases.dead_lettered.insert("undecodable", 1);
        r.by_feed.insert("labs".into(), labs);
        r.by_feed.insert("cases".into(), cases);
        r.ages = vec![
            aged("labs", "applied", 120, Some(900)),
            aged("labs", "superseded", 50, Some(70)),
            aged("cases", "dead_lettered", 7_000, None),
        ];
        for i in 0..150 {
            r.ages.push(aged("labs", "applied", i, Some(i + 1)));
        }
        let docs = batch_docs(&r);
        for d in &docs {
            validate_emf(d).unwrap_or_else(|e| panic!("{e}: {d}"));
            for def in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
            {
                let name = def["Name"].as_str().unwrap();
                assert!(EMITTED.contains(&name), "{name} is not in EMITTED");
            }
        }
        assert_eq!(docs[0]["ApiAuthFailures"], 2);
        assert_eq!(docs[0]["CircuitOpen"], 1);
        assert_eq!(sum(&docs, "Applied"), 151);
        assert_eq!(sum(&docs, "Duplicates"), 4);
        assert_eq!(sum(&docs, "DeadLettered"), 4);
        assert_eq!(sum(&docs, "ApiCalls"), 160);
        let permanent: Vec<_> = docs.iter().filter(|d| d["class"] == "permanent").collect();
        assert_eq!(permanent.len(), 1);
        assert_eq!(permanent[0]["feed"], "labs");
        assert_eq!(permanent[0]["DeadLettered"], 2);
        assert_eq!(
            permanent[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["feed"], ["feed", "class"], []])
        );
        // value series: every value, at most 100 per document
        let labs: Vec<&serde_json::Value> = docs
            .iter()
            .filter(|d| {
                d["feed"] == "labs" && d.get("Applied").is_none() && d.get("class").is_none()
            })
            .collect();
        assert_eq!(labs.len(), 2);
        assert_eq!(values(&labs, "SentToAppliedMillis"), 151);
        assert_eq!(values(&labs, "UploadToAppliedMillis"), 151);
        assert_eq!(values(&labs, "ApiLatencyMillis"), 160);
        assert_eq!(labs[0]["SupersededAgeMillis"], serde_json::json!([50]));
        let cases_ages: Vec<&serde_json::Value> = docs
            .iter()
            .filter(|d| d.get("DeadLetteredAgeMillis").is_some())
            .collect();
        assert_eq!(
            cases_ages[0]["DeadLetteredAgeMillis"],
            serde_json::json!([7000])
        );
        // an empty batch: only the invocation's document
        assert_eq!(batch_docs(&BatchResult::default()).len(), 1);
    }

    #[test]
    fn malformed_emf_is_refused_with_a_reason() {
        let good = serde_json::json!({
            "_aws": emf(serde_json::json!([["feed"]]), &[("Applied", "Count")]),
            "feed": "labs",
            "Applied": 3,
        });
        assert_eq!(validate_emf(&good), Ok(()));
        let mut no_dim = good.clone();
        no_dim.as_object_mut().unwrap().remove("feed");
        assert!(validate_emf(&no_dim).unwrap_err().contains("feed"));
        let mut no_value = good.clone();
        no_value["Applied"] = serde_json::json!("3");
        assert!(validate_emf(&no_value).unwrap_err().contains("Applied"));
        let mut too_many = good.clone();
        too_many["Applied"] = serde_json::json!((0..101).collect::<Vec<_>>());
        assert!(validate_emf(&too_many).is_err());
        assert!(validate_emf(&serde_json::json!({"Applied": 1})).is_err());
    }
}
