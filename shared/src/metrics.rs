//! CloudWatch metrics as Embedded Metric Format lines on stdout (no API calls, no row values).

use crate::consumer::BatchStats;
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
        "ApiAuthFailures": stats.auth_failures,
        "CircuitOpened": u32::from(stats.circuit_opened),
    });
    if std::env::var_os("CASEFEED_NO_METRICS").is_none() {
        println!("{doc}");
    }
}
