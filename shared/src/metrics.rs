//! CloudWatch metrics as Embedded Metric Format lines on stdout (no API calls, no row values).

use crate::consumer::{Aged, BatchStats};
use crate::contract::report::{RunReport, RunStatus};

/// One EMF document per run: counts by feed and status.
pub fn emit_run(report: &RunReport) {
    let doc = run_doc(report);
    if std::env::var_os("CASEFEED_NO_METRICS").is_none() {
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
                "Dimensions": [["feed"], ["feed", "status"]],
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
        "RunMillis": report.timings.total_ms,
    })
}

/// One EMF document per consumer batch.
pub fn emit_batch(stats: &BatchStats) {
    let doc = serde_json::json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": "casefeed",
                "Dimensions": [[]],
                "Metrics": [
                    {"Name": "Applied", "Unit": "Count"},
                    {"Name": "Duplicates", "Unit": "Count"},
                    {"Name": "Superseded", "Unit": "Count"},
                    {"Name": "DeadLettered", "Unit": "Count"},
                    {"Name": "Retried", "Unit": "Count"},
                    {"Name": "Unfinished", "Unit": "Count"},
                    {"Name": "ApiAuthFailures", "Unit": "Count"},
                    {"Name": "CircuitOpened", "Unit": "Count"}
                ]
            }]
        },
        "Applied": stats.applied,
        "Duplicates": stats.duplicates,
        "Superseded": stats.superseded,
        "DeadLettered": stats.dead_lettered,
        "Retried": stats.retried,
        "Unfinished": stats.unfinished,
        "ApiAuthFailures": stats.auth_failures,
        "CircuitOpened": u32::from(stats.circuit_opened),
    });
    if std::env::var_os("CASEFEED_NO_METRICS").is_none() {
        println!("{doc}");
    }
}

/// The most values one EMF metric may carry in a document.
const EMF_MAX_VALUES: usize = 100;

/// The latency metrics of a batch, one EMF document per feed (and per 100 values):
/// `SentToAppliedMillis` and `UploadToAppliedMillis` (the row's sending and its export's
/// upload to the API's acknowledgement), `SupersededAgeMillis`, `DeadLetteredAgeMillis`.
pub fn emit_ages(ages: &[Aged]) {
    for doc in age_docs(ages) {
        if std::env::var_os("CASEFEED_NO_METRICS").is_none() {
            println!("{doc}");
        }
    }
}

pub(crate) fn age_docs(ages: &[Aged]) -> Vec<serde_json::Value> {
    use std::collections::BTreeMap;
    type Series = BTreeMap<&'static str, Vec<i64>>;
    let mut by_feed: BTreeMap<&str, Series> = BTreeMap::new();
    for a in ages {
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
    let mut docs = Vec::new();
    for (feed, series) in by_feed {
        let chunks = series
            .values()
            .map(|v| v.len().div_ceil(EMF_MAX_VALUES))
            .max()
            .unwrap_or(0);
        for i in 0..chunks {
            let mut doc = serde_json::Map::new();
            let mut defs = Vec::new();
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
                defs.push(serde_json::json!({"Name": name, "Unit": "Milliseconds"}));
                doc.insert(name.to_string(), serde_json::json!(part));
            }
            doc.insert("feed".into(), serde_json::json!(feed));
            doc.insert(
                "_aws".into(),
                serde_json::json!({
                    "Timestamp": chrono::Utc::now().timestamp_millis(),
                    "CloudWatchMetrics": [{
                        "Namespace": "casefeed",
                        "Dimensions": [["feed"]],
                        "Metrics": defs,
                    }]
                }),
            );
            docs.push(serde_json::Value::Object(doc));
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(feed: &str, fate: &'static str, sent: i64, upload: Option<i64>) -> Aged {
        Aged {
            feed: feed.into(),
            fate,
            sent_age_ms: Some(sent),
            upload_age_ms: upload,
        }
    }

    #[test]
    fn ages_become_one_emf_document_per_feed_with_every_value() {
        let mut ages = vec![
            aged("labs", "applied", 120, Some(900)),
            aged("labs", "superseded", 50, Some(70)),
            aged("cases", "dead_lettered", 7_000, None),
        ];
        for i in 0..150 {
            ages.push(aged("labs", "applied", i, Some(i + 1)));
        }
        let docs = age_docs(&ages);
        // cases: one document; labs: 151 applied values need two
        assert_eq!(docs.len(), 3);
        let cases = &docs[0];
        assert_eq!(cases["feed"], "cases");
        assert_eq!(cases["DeadLetteredAgeMillis"], serde_json::json!([7000]));
        let dims = &cases["_aws"]["CloudWatchMetrics"][0]["Dimensions"];
        assert_eq!(dims, &serde_json::json!([["feed"]]));
        let labs: Vec<&serde_json::Value> = docs.iter().filter(|d| d["feed"] == "labs").collect();
        let applied: usize = labs
            .iter()
            .map(|d| d["SentToAppliedMillis"].as_array().map_or(0, Vec::len))
            .sum();
        let upload: usize = labs
            .iter()
            .map(|d| d["UploadToAppliedMillis"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!((applied, upload), (151, 151));
        assert_eq!(labs[0]["SentToAppliedMillis"][0], 120);
        assert_eq!(labs[0]["SupersededAgeMillis"], serde_json::json!([50]));
        // every metric named in a document's definitions is in it, and only those
        for d in &docs {
            for def in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
            {
                let name = def["Name"].as_str().unwrap();
                assert!(
                    d[name]
                        .as_array()
                        .is_some_and(|v| !v.is_empty() && v.len() <= 100),
                    "{name}"
                );
            }
        }
        assert!(age_docs(&[]).is_empty());
    }
}
