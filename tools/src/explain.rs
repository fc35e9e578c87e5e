//! `casefeed explain <feed> <record key>`: one record's story, for the operator asked "what
//! happened to this case?".
//!
//! * **the state** — whether the feed's snapshot holds the record (by its record key), and
//!   which run and export the snapshot came from;
//! * **its transitions** — every message a recent run sent for it (the runs' sent lists,
//!   `sent/<feed>/<run>.jsonl`, newest `--runs` runs), each with the ledger's fate of its
//!   idempotency key: applied, superseded (a newer version was applied first),
//!   dead-lettered (with class) or not yet decided;
//! * **the ledger's record** — the highest version the API acknowledged, the run and key of
//!   that version, and any lease an attempt holds now;
//! * **dead letters** — the messages of the record in the DLQ now (when `--dlq-url` is
//!   given), with class, reason and attempts;
//! * **a verdict** — one sentence: up to date, removed, superseded, dead-lettered (and the
//!   command that replays it), pending, or unknown in the runs searched.
//!
//! Row values are printed only with `--show-values`, and only from the dead letters' bodies
//! (the state keeps fingerprints, not values); the story is otherwise keys, versions, runs
//! and times.

use crate::ops::letters::{DeadLetter, EnvelopeMeta};
use crate::ops::queue::{rfc3339_ms, SqsError, Walk};
use crate::ops::{print_json, progress, sdk_message, OutputError};
use crate::state::{self, StateError};
use crate::status::{newest_runs, StatusError};
use casefeed::adapters::dynamodb::DynamoLedger;
use casefeed::contract::report::SentRecord;
use casefeed::ports::ledger::{FateItem, LedgerError, LedgerTable, RecordItem};
use serde::Serialize;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The feed.
    pub feed: String,
    /// The record key, as the envelope and the API see it (`casefeed dlq show`, the API's
    /// record id).
    pub record_key: String,
    /// The data bucket (state/, runs/, sent/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// The consumer's ledger table.
    #[arg(long, env = "LEDGER_TABLE")]
    pub table: String,
    /// The dead-letter queue (walked for the record's messages; left out without it).
    #[arg(long, env = "DLQ_URL")]
    pub dlq_url: Option<String>,
    /// How many of the feed's newest runs to search for the record's transitions.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Also print the row values the dead letters carry (names, dates of birth, …).
    #[arg(long)]
    pub show_values: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Runs(#[from] StatusError),
    #[error("S3 GetObject {key}: {message}")]
    S3 { key: String, message: String },
    #[error("the sent list {key} line {line} does not parse: {problem}")]
    SentList {
        key: String,
        line: usize,
        problem: String,
    },
    #[error("the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Sqs(#[from] SqsError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// The record in the feed's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InState {
    /// Whether the snapshot holds the record; `None` when its rows carry no record keys.
    pub present: Option<bool>,
    pub generation: u64,
    pub run: String,
    pub source_key: String,
    pub source_version: Option<String>,
    pub written_at: String,
}

/// The ledger's fate of one transition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FateView {
    pub fate: String,
    pub detail: Option<String>,
    pub version: u64,
    pub attempts: u32,
    pub at: Option<String>,
}

impl From<FateItem> for FateView {
    fn from(f: FateItem) -> Self {
        FateView {
            fate: f.fate.to_string(),
            detail: f.detail,
            version: f.version,
            attempts: f.attempts,
            at: rfc3339_ms(f.at_ms),
        }
    }
}

/// One message a run sent for the record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Transition {
    pub run: String,
    pub run_status: String,
    pub started_at: String,
    pub change: String,
    pub idempotency_key: String,
    pub fate: Option<FateView>,
    /// In the DLQ now (its class).
    pub dead_letter: Option<String>,
}

/// The ledger's record item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LedgerView {
    pub acknowledged_version: Option<u64>,
    pub acknowledged_key: Option<String>,
    pub acknowledged_run: Option<String>,
    /// `(version, until)` of a lease an attempt holds (or held: it may have expired).
    pub lease: Option<(u64, Option<String>)>,
}

impl From<RecordItem> for LedgerView {
    fn from(r: RecordItem) -> Self {
        LedgerView {
            acknowledged_version: r.acknowledged,
            acknowledged_key: r.acknowledged_key,
            acknowledged_run: r.acknowledged_run,
            lease: r.lease.map(|l| (l.version, rfc3339_ms(l.until_ms))),
        }
    }
}

/// A dead letter of the record.
#[derive(Debug, Clone, Serialize)]
pub struct LetterView {
    pub letter: DeadLetter,
    /// The row values it carries: only with `--show-values`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
}

/// What `explain` found and concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Story {
    pub feed: String,
    pub record_key: String,
    pub state: Option<InState>,
    pub runs_searched: usize,
    /// Oldest first.
    pub transitions: Vec<Transition>,
    pub ledger: Option<LedgerView>,
    /// `None` when the DLQ was not searched.
    pub dead_letters: Option<Vec<LetterView>>,
    pub verdict: String,
}

/// PURE: the one-sentence verdict from what was found.
pub fn verdict(
    state: Option<&InState>,
    transitions: &[Transition],
    ledger: Option<&LedgerView>,
    runs_searched: usize,
) -> String {
    let acked = ledger.and_then(|l| l.acknowledged_version);
    let Some(last) = transitions.last() else {
        return match (state.and_then(|s| s.present), acked) {
            (Some(true), Some(v)) => format!(
                "in the state, not sent by the {runs_searched} newest run(s); the API acknowledged version {v}"
            ),
            (Some(true), None) => format!(
                "in the state but sent by none of the {runs_searched} newest run(s) and unknown to the ledger: it came with a baseline (a first file that sends nothing) or before the runs searched (try --runs)"
            ),
            (Some(false), _) => format!(
                "not in the feed's state and sent by none of the {runs_searched} newest run(s): check the record key, or search more runs (--runs)"
            ),
            (None, _) => format!(
                "sent by none of the {runs_searched} newest run(s); the state keeps no record keys, so it cannot tell whether it holds the record"
            ),
        };
    };
    let removed = last.change == "removed";
    let fate = last.fate.as_ref().map(|f| f.fate.as_str());
    let acked_last =
        ledger.is_some_and(|l| l.acknowledged_key.as_deref() == Some(&last.idempotency_key));
    match fate {
        Some("applied") | Some("duplicate") if removed => format!(
            "removed by run {}: the API applied the removal",
            last.run
        ),
        Some("applied") | Some("duplicate") => format!(
            "up to date: the API applied the newest change (run {}, version {})",
            last.run,
            last.fate.as_ref().map_or(0, |f| f.version)
        ),
        Some("superseded") => format!(
            "the newest change searched (run {}) was superseded: the API already held a newer version ({})",
            last.run,
            acked.map_or_else(|| "unknown".to_string(), |v| v.to_string())
        ),
        Some("dead_lettered") => format!(
            "the newest change (run {}) is dead-lettered ({}): see `casefeed dlq list --run {}`, replay with `casefeed dlq replay --run {} --reason …`",
            last.run,
            last.fate.as_ref().and_then(|f| f.detail.clone()).unwrap_or_else(|| "unknown class".into()),
            last.run,
            last.run
        ),
        _ if acked_last => format!(
            "up to date: the API acknowledged the newest change (run {})",
            last.run
        ),
        _ if last.dead_letter.is_some() => format!(
            "the newest change (run {}) is in the DLQ ({}): replay with `casefeed dlq replay --run {} --reason …`",
            last.run,
            last.dead_letter.as_deref().unwrap_or(""),
            last.run
        ),
        _ => format!(
            "pending: the newest change (run {}) has no fate yet — in the work queue, retrying or leased{}",
            last.run,
            ledger
                .and_then(|l| l.lease.as_ref())
                .map(|(v, until)| format!(" (a lease on version {v} until {})", until.as_deref().unwrap_or("?")))
                .unwrap_or_default()
        ),
    }
}

async fn sent_list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Vec<SentRecord>, ExplainError> {
    let err = |message: String| ExplainError::S3 {
        key: key.to_string(),
        message,
    };
    let obj = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| err(sdk_message(&e)))?;
    let bytes = obj
        .body
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .into_bytes();
    casefeed::contract::report::parse_json_lines(&bytes).map_err(|e| ExplainError::SentList {
        key: key.to_string(),
        line: e.line,
        problem: e.problem,
    })
}

/// The record's messages in the DLQ (their bodies kept only for `--show-values`).
async fn letters_of(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    feed: &str,
    record_key: &str,
    show_values: bool,
) -> Result<Vec<LetterView>, ExplainError> {
    let total = crate::ops::queue::visible(sqs, url).await?;
    let mut walk = Walk::new(sqs, url, 30, progress(total, "reading the DLQ"));
    let mut out = Vec::new();
    let result = loop {
        match walk.next().await {
            Ok(Some(batch)) => {
                for m in batch {
                    walk.keep(&m);
                    let letter = m.letter();
                    let ours = letter.feed() == Some(feed)
                        && letter
                            .envelope
                            .as_ref()
                            .and_then(|e: &EnvelopeMeta| e.record_key.as_deref())
                            == Some(record_key);
                    if ours {
                        let fields = show_values
                            .then(|| serde_json::from_str::<serde_json::Value>(&m.body).ok())
                            .flatten()
                            .and_then(|v| v.get("fields").cloned());
                        out.push(LetterView { letter, fields });
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    walk.finish().await;
    result?;
    Ok(out)
}

/// Gather the record's story.
pub async fn explain(args: &ExplainArgs) -> Result<Story, ExplainError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let s3 = aws_sdk_s3::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&conf),
        args.table.clone(),
        Duration::from_secs(1),
    );
    let state = match state::load(&s3, &args.bucket, &args.feed).await {
        Ok((snapshot, view)) => {
            let present = snapshot.names().map(|_| {
                (0..snapshot.len())
                    .any(|pos| snapshot.name_at(pos) == Some(args.record_key.as_bytes()))
            });
            let h = view.header;
            Some(InState {
                present,
                generation: h.generation,
                run: h.run,
                source_key: h.source.key,
                source_version: h.source.version_id,
                written_at: h.created_at,
            })
        }
        Err(StateError::NoState { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let runs = newest_runs(&s3, &args.bucket, Some(&args.feed), args.runs).await?;
    let bar = progress(runs.len() as u64, "reading the runs' sent lists");
    let mut transitions = Vec::new();
    for r in runs.iter().rev() {
        bar.inc(1);
        let Some(key) = &r.report.sent_key else {
            continue;
        };
        for s in sent_list(&s3, &args.bucket, key).await? {
            if s.record_key == args.record_key {
                transitions.push(Transition {
                    run: r.report.run.clone(),
                    run_status: r.report.status.as_str().to_string(),
                    started_at: r.report.started_at.clone(),
                    change: s.change,
                    idempotency_key: s.idempotency_key,
                    fate: None,
                    dead_letter: None,
                });
            }
        }
    }
    bar.finish_and_clear();
    for t in &mut transitions {
        t.fate = ledger
            .fate(&args.feed, &t.idempotency_key)
            .await?
            .map(FateView::from);
    }
    let record = ledger
        .record(&args.feed, &args.record_key)
        .await?
        .map(LedgerView::from);
    let dead_letters = match &args.dlq_url {
        Some(url) => {
            Some(letters_of(&sqs, url, &args.feed, &args.record_key, args.show_values).await?)
        }
        None => None,
    };
    for l in dead_letters.iter().flatten() {
        if let Some(t) = transitions
            .iter_mut()
            .find(|t| l.letter.idempotency_key() == Some(t.idempotency_key.as_str()))
        {
            t.dead_letter = Some(l.letter.class().to_string());
        }
    }
    let verdict = verdict(state.as_ref(), &transitions, record.as_ref(), runs.len());
    Ok(Story {
        feed: args.feed.clone(),
        record_key: args.record_key.clone(),
        state,
        runs_searched: runs.len(),
        transitions,
        ledger: record,
        dead_letters,
        verdict,
    })
}

fn print_story(story: &Story) {
    println!("record {} of {}", story.record_key, story.feed);
    println!("  {}", story.verdict);
    match &story.state {
        None => println!("state: the feed has no state yet"),
        Some(s) => println!(
            "state: {} (generation {}, run {}, export {}{})",
            match s.present {
                Some(true) => "holds the record",
                Some(false) => "does not hold the record",
                None => "keeps no record keys",
            },
            s.generation,
            s.run,
            s.source_key,
            s.source_version
                .as_deref()
                .map(|v| format!(" version {v}"))
                .unwrap_or_default()
        ),
    }
    println!(
        "transitions (the {} newest runs searched): {}",
        story.runs_searched,
        story.transitions.len()
    );
    for t in &story.transitions {
        let fate = match &t.fate {
            Some(f) => format!(
                "{} v{}{} after {} attempt(s){}",
                f.fate,
                f.version,
                f.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                f.attempts,
                f.at.as_deref()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default()
            ),
            None => "no fate yet".to_string(),
        };
        println!(
            "  {} run {} ({}): {} {} → {}{}",
            t.started_at,
            t.run,
            t.run_status,
            t.change,
            t.idempotency_key,
            fate,
            t.dead_letter
                .as_deref()
                .map(|c| format!("; in the DLQ ({c})"))
                .unwrap_or_default()
        );
    }
    match &story.ledger {
        None => println!("ledger: no record item (never delivered, or expired)"),
        Some(l) => println!(
            "ledger: the API acknowledged {}{}",
            match (&l.acknowledged_version, &l.acknowledged_run) {
                (Some(v), Some(r)) => format!("version {v} (run {r})"),
                (Some(v), None) => format!("version {v}"),
                _ => "nothing yet".to_string(),
            },
            l.lease
                .as_ref()
                .map(|(v, until)| format!(
                    "; a lease on version {v} until {}",
                    until.as_deref().unwrap_or("?")
                ))
                .unwrap_or_default()
        ),
    }
    match &story.dead_letters {
        None => println!("dead letters: not searched (give --dlq-url or DLQ_URL)"),
        Some(ls) => {
            println!("dead letters: {}", ls.len());
            for l in ls {
                let a = |k: &str| l.letter.attributes.get(k).cloned().unwrap_or_default();
                println!(
                    "  {} {} run {} attempts {} {}",
                    l.letter.message_id,
                    l.letter.class(),
                    l.letter.run().unwrap_or("?"),
                    a("attempts"),
                    a("reason")
                );
                if let Some(f) = &l.fields {
                    println!("    values: {f}");
                }
            }
        }
    }
}

/// `casefeed explain`.
pub async fn run(args: ExplainArgs) -> Result<(), ExplainError> {
    let story = explain(&args).await?;
    if args.json {
        print_json(&story)?;
    } else {
        print_story(&story);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(run: &str, change: &str, fate: Option<(&str, u64)>) -> Transition {
        Transition {
            run: run.into(),
            run_status: "applied".into(),
            started_at: "2026-12-02T00:00:00Z".into(),
            change: change.into(),
            idempotency_key: format!("k-{run}"),
            fate: fate.map(|(f, v)| FateView {
                fate: f.into(),
                detail: (f == "dead_lettered").then(|| "permanent".to_string()),
                version: v,
                attempts: 1,
                at: None,
            }),
            dead_letter: None,
        }
    }

    fn acked(v: u64, run: &str) -> LedgerView {
        LedgerView {
            acknowledged_version: Some(v),
            acknowledged_key: Some(format!("k-{run}")),
            acknowledged_run: Some(run.into()),
            lease: None,
        }
    }

    fn in_state(present: Option<bool>) -> InState {
        InState {
            present,
            generation: 3,
            run: "r3".into(),
            source_key: "incoming/labs/x.csv".into(),
            source_version: None,
            written_at: String::new(),
        }
    }

    #[test]
    fn a_record_whose_newest_change_was_applied_is_up_to_date_even_after_a_superseded_one() {
        let ts = [
            t("r1", "new", Some(("applied", 1))),
            t("r2", "changed", Some(("superseded", 2))),
            t("r3", "changed", Some(("applied", 3))),
        ];
        let v = verdict(Some(&in_state(Some(true))), &ts, Some(&acked(3, "r3")), 10);
        assert!(v.starts_with("up to date"), "{v}");
        assert!(v.contains("run r3, version 3"), "{v}");
    }

    #[test]
    fn a_superseded_newest_change_names_the_version_the_api_holds() {
        let ts = [t("r2", "changed", Some(("superseded", 2)))];
        let v = verdict(None, &ts, Some(&acked(5, "r9")), 10);
        assert!(v.contains("superseded") && v.contains("(5)"), "{v}");
    }

    #[test]
    fn a_dead_lettered_change_says_how_to_replay_it() {
        let ts = [t("r4", "changed", Some(("dead_lettered", 4)))];
        let v = verdict(None, &ts, None, 10);
        assert!(v.contains("dead-lettered (permanent)"), "{v}");
        assert!(v.contains("casefeed dlq replay --run r4"), "{v}");
    }

    #[test]
    fn a_change_without_a_fate_is_pending_unless_the_ledger_acknowledged_it() {
        let ts = [t("r5", "changed", None)];
        assert!(verdict(None, &ts, None, 10).starts_with("pending"));
        assert!(verdict(None, &ts, Some(&acked(5, "r5")), 10).starts_with("up to date"));
        let mut d = ts.clone();
        d[0].dead_letter = Some("redrive".into());
        assert!(verdict(None, &d, None, 10).contains("in the DLQ (redrive)"));
    }

    #[test]
    fn a_removal_applied_says_removed_and_an_unknown_key_says_where_to_look() {
        let ts = [t("r6", "removed", Some(("applied", 6)))];
        assert!(verdict(None, &ts, None, 10).starts_with("removed by run r6"));
        let v = verdict(Some(&in_state(Some(false))), &[], None, 7);
        assert!(
            v.contains("not in the feed's state") && v.contains("7 newest"),
            "{v}"
        );
        let v = verdict(Some(&in_state(Some(true))), &[], None, 7);
        assert!(v.contains("baseline"), "{v}");
    }
}
