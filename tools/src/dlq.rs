//! `casefeed dlq list|show|replay|purge`: the operator's view of the dead-letter queue.
//!
//! What is shown is a message's attributes (error class, HTTP status, reason, attempts, age,
//! idempotency key …) and its envelope's metadata (feed, run, change, record key, version) —
//! never the envelope's `fields`, which hold row values. A message the consumer did not
//! dead-letter (SQS moved it by redrive after `maxReceiveCount` receives) has no
//! `error_class`: its class shows as `redrive`.
//!
//! Listing consumes nothing: each message is hidden for 30 s while the queue is walked, then
//! made visible again. Replay moves messages back to the work queue by receive → send → delete
//! (SQS `StartMessageMoveTask` is not available everywhere): a message is deleted from the DLQ
//! only after the work queue accepted its copy, so it is never lost; a replay that stops half
//! way leaves the rest in the DLQ, and running it again finds only what is left (a row whose
//! copy was sent but whose DLQ message survived is sent again, and the consumer's ledger makes
//! that a no-op). The copy keeps only the attributes the splitter gave the message (feed,
//! change, idempotency_key). Purge deletes the matching messages, only with `--yes`.
//!
//! Replay and purge write an audit record to the data bucket ([`crate::audit`]); a dry run
//! changes nothing and writes none.

use crate::audit::{AuditError, AuditLog, AuditRecord, Counts, MessageEntry};
use crate::ops::letters::{by_class, group, WORK_ATTRIBUTES};
pub use crate::ops::letters::{DeadLetter, Filter, Group, REDRIVE};
use crate::ops::queue::{self, Msg, SqsError, Walk};
use crate::ops::{caller, print_json, progress, reason, OutputError};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// Which messages a command acts on (every one given must match).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only this error class: permanent, retry_window, undecodable, or redrive (moved by
    /// SQS's redrive: no error_class attribute).
    #[arg(long = "class", alias = "error-class", value_name = "CLASS")]
    pub class: Option<String>,
    /// Only this feed.
    #[arg(long)]
    pub feed: Option<String>,
    /// Only rows of this splitter run.
    #[arg(long)]
    pub run: Option<String>,
    /// Only this HTTP status (e.g. 422).
    #[arg(long)]
    pub status: Option<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            class: self.class.clone(),
            feed: self.feed.clone(),
            run: self.run.clone(),
            status: self.status.clone(),
        }
    }
}

/// What replay and purge share.
#[derive(clap::Args, Debug, Clone)]
pub struct ActArgs {
    #[arg(long, env = "DLQ_URL")]
    pub dlq_url: String,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// At most this many messages.
    #[arg(long, alias = "max")]
    pub limit: Option<usize>,
    /// Change nothing; say what would be done (no audit record).
    #[arg(long)]
    pub dry_run: bool,
    /// Why (written to the audit record).
    #[arg(long)]
    pub reason: String,
    /// The data bucket the audit record goes to.
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: Option<String>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Count the dead letters by error class, HTTP status, feed and run (nothing is consumed;
    /// bodies are never shown).
    #[command(alias = "inspect")]
    List {
        #[arg(long, env = "DLQ_URL")]
        dlq_url: String,
        #[command(flatten)]
        filters: FilterArgs,
        /// At most this many messages.
        #[arg(long, alias = "max", default_value_t = 10_000)]
        limit: usize,
        /// Also list every message (readable output; --json always lists them).
        #[arg(long)]
        messages: bool,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// One message's attributes and envelope metadata (never its fields).
    Show {
        /// The message id (`casefeed dlq list --messages` shows them).
        message_id: String,
        #[arg(long, env = "DLQ_URL")]
        dlq_url: String,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Send the matching messages back to the work queue, then delete them from the DLQ.
    Replay {
        #[command(flatten)]
        act: ActArgs,
        #[arg(long, env = "WORK_QUEUE_URL")]
        work_queue_url: String,
    },
    /// Delete the matching messages for good (only with --yes).
    Purge {
        #[command(flatten)]
        act: ActArgs,
        /// Required: purging loses the messages for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Sqs(#[from] SqsError),
    #[error("refusing to purge without --yes (try --dry-run to see what would go)")]
    NotConfirmed,
    #[error("--reason must say why (it goes to the audit record)")]
    NoReason,
    #[error("{command} writes an audit record: give the data bucket with --bucket or DATA_BUCKET")]
    NoAuditBucket { command: &'static str },
    #[error("no message {0} in the dead-letter queue")]
    NotFound(String),
    #[error("{command} stopped after {done} of {matched} message(s), {failed} failed: {error}{}", audit_note(.audit_key))]
    Stopped {
        command: &'static str,
        done: usize,
        matched: usize,
        failed: usize,
        error: String,
        audit_key: Option<String>,
    },
    #[error(
        "{command} did its work ({done} message(s)) but its audit record was not written: {source}"
    )]
    AuditNotWritten {
        command: &'static str,
        done: usize,
        #[source]
        source: AuditError,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn audit_note(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" (audit record {k})"))
        .unwrap_or_default()
}

/// Read the dead letters matching `filter` (at most `limit`) without consuming them.
pub async fn list_letters(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let total = queue::visible(client, dlq_url).await?;
    let mut walk = Walk::new(client, dlq_url, 30, progress(total, "reading the DLQ"));
    let mut out = Vec::new();
    let result = loop {
        if out.len() >= limit {
            break Ok(());
        }
        match walk.next().await {
            Ok(Some(batch)) => {
                for m in batch {
                    walk.keep(&m);
                    let l = m.letter();
                    if out.len() < limit && filter.matches(&l) {
                        out.push(l);
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

/// Read up to `max` messages without consuming them (the attributes of each).
pub async fn inspect(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    max: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    list_letters(client, dlq_url, &Filter::default(), max).await
}

/// One message by id, without consuming it.
pub async fn find(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    message_id: &str,
) -> Result<Option<DeadLetter>, DlqError> {
    let total = queue::visible(client, dlq_url).await?;
    let mut walk = Walk::new(
        client,
        dlq_url,
        30,
        progress(total, "looking for the message"),
    );
    let found = loop {
        match walk.next().await {
            Ok(Some(batch)) => {
                let mut hit = None;
                for m in batch {
                    walk.keep(&m);
                    if m.message_id == message_id {
                        hit = Some(m.letter());
                    }
                }
                if hit.is_some() {
                    break Ok(hit);
                }
            }
            Ok(None) => break Ok(None),
            Err(e) => break Err(e),
        }
    };
    walk.finish().await;
    Ok(found?)
}

/// What replay or purge does to each matching message.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Send a copy to this work queue, then delete it from the DLQ.
    Replay { work_queue_url: &'a str },
    /// Delete it.
    Purge,
}

/// One message replay or purge handled (or would handle, in a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Handled {
    pub message_id: String,
    pub error_class: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The copy's message id in the work queue (replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_message_id: Option<String>,
    /// Why it failed (it stays in the DLQ, or — sent but not deleted — in both queues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Handled {
    fn of(l: &DeadLetter) -> Handled {
        Handled {
            message_id: l.message_id.clone(),
            error_class: l.class().to_string(),
            http_status: l.http_status().map(str::to_string),
            feed: l.feed().map(str::to_string),
            run: l.run().map(str::to_string),
            idempotency_key: l.idempotency_key().map(str::to_string),
            new_message_id: None,
            error: None,
        }
    }

    fn failed(l: &DeadLetter, error: String) -> Handled {
        Handled {
            error: Some(error),
            ..Handled::of(l)
        }
    }
}

/// What a replay or purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActReport {
    /// Messages the filters selected (in a dry run: what would be handled).
    pub matched: usize,
    /// Done: replayed (copy sent, then deleted) or purged.
    pub done: Vec<Handled>,
    /// Failed; also, in a dry run, what would be handled.
    pub failed: Vec<Handled>,
    /// A dry run: what would be handled.
    pub would: Vec<Handled>,
    /// The error that stopped the walk early, if one did.
    pub stopped: Option<String>,
}

/// Replay or purge the messages matching `filter` (at most `limit`). Never fails as a whole:
/// what went wrong is in the report, so that the caller can audit what was done.
pub async fn act(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    action: Action<'_>,
    filter: &Filter,
    limit: Option<usize>,
    dry_run: bool,
) -> ActReport {
    let mut rep = ActReport::default();
    let total = queue::visible(client, dlq_url).await.unwrap_or(0);
    let what = match action {
        Action::Replay { .. } => "replaying",
        Action::Purge => "purging",
    };
    // long enough for a batch's send and delete; kept messages are released at the end
    let visibility = if dry_run { 30 } else { 120 };
    let mut walk = Walk::new(client, dlq_url, visibility, progress(total, what));
    loop {
        if limit.is_some_and(|n| rep.matched >= n) {
            break;
        }
        let batch = match walk.next().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                rep.stopped = Some(e.to_string());
                break;
            }
        };
        let mut chosen: Vec<(Msg, DeadLetter)> = Vec::new();
        for m in batch {
            let l = m.letter();
            if filter.matches(&l) && limit.is_none_or(|n| rep.matched + chosen.len() < n) {
                chosen.push((m, l));
            } else {
                walk.keep(&m);
            }
        }
        rep.matched += chosen.len();
        if dry_run {
            for (m, l) in &chosen {
                walk.keep(m);
                rep.would.push(Handled::of(l));
            }
            continue;
        }
        if let Err(e) = handle_batch(client, dlq_url, action, &mut walk, &chosen, &mut rep).await {
            rep.stopped = Some(e);
            break;
        }
    }
    walk.finish().await;
    rep
}

/// Replay or purge one received batch; `Err` stops the walk.
async fn handle_batch(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    action: Action<'_>,
    walk: &mut Walk<'_>,
    chosen: &[(Msg, DeadLetter)],
    rep: &mut ActReport,
) -> Result<(), String> {
    if chosen.is_empty() {
        return Ok(());
    }
    // 1. replay: the copies first; only a message whose copy was accepted may be deleted
    let mut to_delete: Vec<(&Msg, &DeadLetter, Option<String>)> = Vec::new();
    match action {
        Action::Replay { work_queue_url } => {
            let msgs: Vec<&Msg> = chosen.iter().map(|(m, _)| m).collect();
            let sent =
                match queue::send_copies(client, work_queue_url, &msgs, &WORK_ATTRIBUTES).await {
                    Ok(o) => o,
                    Err(e) => {
                        for (m, l) in chosen {
                            walk.keep(m);
                            rep.failed.push(Handled::failed(
                                l,
                                format!("not sent (kept in the DLQ): {e}"),
                            ));
                        }
                        return Err(e.to_string());
                    }
                };
            for ((m, l), outcome) in chosen.iter().zip(sent) {
                match outcome {
                    Ok(id) => to_delete.push((m, l, Some(id))),
                    Err(why) => {
                        walk.keep(m);
                        rep.failed.push(Handled::failed(
                            l,
                            format!("not sent (kept in the DLQ): {why}"),
                        ));
                    }
                }
            }
        }
        Action::Purge => to_delete.extend(chosen.iter().map(|(m, l)| (m, l, None))),
    }
    // 2. delete what was sent (or everything chosen, for purge)
    let msgs: Vec<&Msg> = to_delete.iter().map(|(m, _, _)| *m).collect();
    let not_deleted = |copy: &Option<String>, why: &str| match copy {
        Some(id) => format!(
            "sent to the work queue as {id}, but not deleted from the DLQ (a second replay \
             sends it again; the consumer's ledger makes that a no-op): {why}"
        ),
        None => format!("not deleted: {why}"),
    };
    let deleted = match queue::delete(client, dlq_url, &msgs).await {
        Ok(o) => o,
        Err(e) => {
            for (m, l, copy) in &to_delete {
                walk.keep(m);
                let mut h = Handled::failed(l, not_deleted(copy, &e.to_string()));
                h.new_message_id = copy.clone();
                rep.failed.push(h);
            }
            return Err(e.to_string());
        }
    };
    for ((m, l, copy), outcome) in to_delete.iter().zip(deleted) {
        let mut h = Handled::of(l);
        h.new_message_id = copy.clone();
        match outcome {
            Ok(_) => rep.done.push(h),
            Err(why) => {
                walk.keep(m);
                h.error = Some(not_deleted(copy, &why));
                rep.failed.push(h);
            }
        }
    }
    if rep.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} message(s) failed", rep.failed.len()))
    }
}

/// Move messages back to the work queue (optionally only one error class); returns how many
/// were moved.
pub async fn replay(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    work_queue_url: &str,
    max: usize,
    error_class: Option<&str>,
) -> Result<usize, DlqError> {
    let filter = Filter {
        class: error_class.map(str::to_string),
        ..Filter::default()
    };
    let rep = act(
        client,
        dlq_url,
        Action::Replay { work_queue_url },
        &filter,
        Some(max),
        false,
    )
    .await;
    finished("dlq replay", &rep, None)?;
    Ok(rep.done.len())
}

/// Delete every message; returns how many.
pub async fn purge(client: &aws_sdk_sqs::Client, dlq_url: &str) -> Result<usize, DlqError> {
    let rep = act(
        client,
        dlq_url,
        Action::Purge,
        &Filter::default(),
        None,
        false,
    )
    .await;
    finished("dlq purge", &rep, None)?;
    Ok(rep.done.len())
}

/// `Err(Stopped)` when the report says the command stopped early or something failed.
fn finished(
    command: &'static str,
    rep: &ActReport,
    audit_key: Option<String>,
) -> Result<(), DlqError> {
    match (&rep.stopped, rep.failed.is_empty()) {
        (None, true) => Ok(()),
        (stopped, _) => Err(DlqError::Stopped {
            command,
            done: rep.done.len(),
            matched: rep.matched,
            failed: rep.failed.len(),
            error: stopped
                .clone()
                .unwrap_or_else(|| format!("{} message(s) failed", rep.failed.len())),
            audit_key,
        }),
    }
}

/// The audit record of a replay or purge.
pub fn audit_record(
    command: &str,
    who: crate::ops::caller::Caller,
    reason: &str,
    filter: &Filter,
    limit: Option<usize>,
    targets: BTreeMap<String, String>,
    rep: &ActReport,
) -> AuditRecord {
    let mut rec = AuditRecord::new(command, who, reason);
    rec.filters = filter.as_map();
    if let Some(n) = limit {
        rec.filters.insert("limit".into(), n.to_string());
    }
    rec.targets = targets;
    let done = if command == "dlq purge" {
        "purged"
    } else {
        "replayed"
    };
    let entry = |h: &Handled, outcome: String| MessageEntry {
        message_id: h.message_id.clone(),
        idempotency_key: h.idempotency_key.clone(),
        outcome,
        new_message_id: h.new_message_id.clone(),
        objects: Vec::new(),
    };
    rec.messages = rep
        .done
        .iter()
        .map(|h| entry(h, done.to_string()))
        .chain(rep.failed.iter().map(|h| {
            entry(
                h,
                format!("failed: {}", h.error.as_deref().unwrap_or("unknown")),
            )
        }))
        .collect();
    rec.counts = Counts {
        matched: rep.matched as u64,
        done: rep.done.len() as u64,
        failed: rep.failed.len() as u64,
        ..Counts::default()
    };
    let error = rep.stopped.clone().or_else(|| {
        (!rep.failed.is_empty()).then(|| format!("{} message(s) failed", rep.failed.len()))
    });
    rec.finish(error);
    rec
}

#[derive(Serialize)]
struct ListOutput<'a> {
    queue: &'a str,
    filters: BTreeMap<String, String>,
    total: usize,
    by_class: BTreeMap<String, u64>,
    groups: Vec<Group>,
    messages: &'a [DeadLetter],
}

#[derive(Serialize)]
struct ActOutput<'a> {
    command: &'a str,
    dry_run: bool,
    queue: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    work_queue: Option<&'a str>,
    filters: BTreeMap<String, String>,
    matched: usize,
    done: usize,
    failed: usize,
    messages: Vec<&'a Handled>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

fn print_groups(groups: &[Group]) {
    println!(
        "{:<13} {:<6} {:<16} {:<36} {:>7}",
        "error class", "status", "feed", "run", "count"
    );
    for g in groups {
        println!(
            "{:<13} {:<6} {:<16} {:<36} {:>7}",
            g.error_class,
            dash(g.http_status.as_deref()),
            dash(g.feed.as_deref()),
            dash(g.run.as_deref()),
            g.count
        );
    }
}

fn print_letters(letters: &[DeadLetter]) {
    println!(
        "{:<38} {:<13} {:<6} {:>8}  {:<26} reason",
        "message id", "error class", "status", "attempts", "failed at"
    );
    for l in letters {
        let a = |k: &str| l.attributes.get(k).map(String::as_str).unwrap_or("-");
        println!(
            "{:<38} {:<13} {:<6} {:>8}  {:<26} {}",
            l.message_id,
            l.class(),
            dash(l.http_status()),
            a("attempts"),
            a("failed_at"),
            a("reason")
        );
    }
}

fn print_handled(items: &[Handled]) {
    for h in items {
        println!(
            "  {:<38} {:<13} {:<6} {:<16} {:<36} {}{}",
            h.message_id,
            h.error_class,
            dash(h.http_status.as_deref()),
            dash(h.feed.as_deref()),
            dash(h.run.as_deref()),
            dash(h.idempotency_key.as_deref()),
            h.error
                .as_deref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        );
    }
}

fn filters_note(f: &Filter) -> String {
    if f.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = f.as_map().iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" (filters: {})", parts.join(", "))
}

pub async fn run(args: DlqArgs) -> Result<(), DlqError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let client = aws_sdk_sqs::Client::new(&conf);
    match args.command {
        DlqCommand::List {
            dlq_url,
            filters,
            limit,
            messages,
            json,
        } => {
            let filter = filters.filter();
            let letters = list_letters(&client, &dlq_url, &filter, limit).await?;
            let groups = group(&letters);
            if json {
                print_json(&ListOutput {
                    queue: &dlq_url,
                    filters: filter.as_map(),
                    total: letters.len(),
                    by_class: by_class(&letters),
                    groups,
                    messages: &letters,
                })?;
                return Ok(());
            }
            print_groups(&groups);
            if messages {
                println!();
                print_letters(&letters);
            }
            println!(
                "total {} message(s){}",
                letters.len(),
                filters_note(&filter)
            );
        }
        DlqCommand::Show {
            message_id,
            dlq_url,
            json,
        } => {
            let l = find(&client, &dlq_url, &message_id)
                .await?
                .ok_or(DlqError::NotFound(message_id))?;
            if json {
                print_json(&l)?;
                return Ok(());
            }
            println!("message id       {}", l.message_id);
            println!("error class      {}", l.class());
            println!("receive count    {}", l.receive_count);
            if let Some(t) = &l.sent_at {
                println!("in the DLQ since {t}");
            }
            println!("attributes");
            for (k, v) in &l.attributes {
                println!("  {k:<18} {v}");
            }
            match &l.envelope {
                Some(e) => {
                    println!("envelope (fields not shown)");
                    let rows: [(&str, Option<String>); 8] = [
                        ("v", e.v.map(|v| v.to_string())),
                        ("feed", e.feed.clone()),
                        ("run", e.run.clone()),
                        ("change", e.change.clone()),
                        ("record_key", e.record_key.clone()),
                        ("version", e.version.map(|v| v.to_string())),
                        ("idempotency_key", e.idempotency_key.clone()),
                        ("source", e.source_key.clone()),
                    ];
                    for (k, v) in rows {
                        if let Some(v) = v {
                            println!("  {k:<18} {v}");
                        }
                    }
                }
                None => println!("envelope         (the body is not a JSON envelope)"),
            }
        }
        DlqCommand::Replay {
            act: a,
            work_queue_url,
        } => {
            operate(
                &conf,
                &client,
                a,
                Action::Replay {
                    work_queue_url: &work_queue_url,
                },
            )
            .await?
        }
        DlqCommand::Purge { act: a, yes } => {
            if !yes && !a.dry_run {
                return Err(DlqError::NotConfirmed);
            }
            operate(&conf, &client, a, Action::Purge).await?
        }
    }
    Ok(())
}

/// `dlq replay` / `dlq purge`: check, act, audit, print.
async fn operate(
    conf: &aws_config::SdkConfig,
    client: &aws_sdk_sqs::Client,
    a: ActArgs,
    action: Action<'_>,
) -> Result<(), DlqError> {
    let (command, verb) = match action {
        Action::Replay { .. } => ("dlq replay", "replay"),
        Action::Purge => ("dlq purge", "purge"),
    };
    let why = reason(&a.reason).ok_or(DlqError::NoReason)?;
    let filter = a.filters.filter();
    let log = match (&a.bucket, a.dry_run) {
        (_, true) => None,
        (Some(b), false) => Some(AuditLog::new(crate::audit::s3_client(conf), b)),
        (None, false) => return Err(DlqError::NoAuditBucket { command }),
    };
    let who = match log {
        Some(_) => Some(caller::caller(conf).await),
        None => None,
    };
    let rep = act(client, &a.dlq_url, action, &filter, a.limit, a.dry_run).await;
    let work_queue = match action {
        Action::Replay { work_queue_url } => Some(work_queue_url),
        Action::Purge => None,
    };
    let mut audit_key = None;
    if let (Some(log), Some(who)) = (&log, who) {
        let mut targets = BTreeMap::from([("dlq".to_string(), a.dlq_url.clone())]);
        if let Some(w) = work_queue {
            targets.insert("work_queue".into(), w.to_string());
        }
        targets.insert("audit_bucket".into(), log.bucket().to_string());
        let rec = audit_record(command, who, &why, &filter, a.limit, targets, &rep);
        match log.write(&rec).await {
            Ok(k) => audit_key = Some(k),
            Err(source) => {
                return Err(DlqError::AuditNotWritten {
                    command,
                    done: rep.done.len(),
                    source,
                })
            }
        }
    }
    if a.json {
        let messages: Vec<&Handled> = if a.dry_run {
            rep.would.iter().collect()
        } else {
            rep.done.iter().chain(rep.failed.iter()).collect()
        };
        print_json(&ActOutput {
            command,
            dry_run: a.dry_run,
            queue: &a.dlq_url,
            work_queue,
            filters: filter.as_map(),
            matched: rep.matched,
            done: rep.done.len(),
            failed: rep.failed.len(),
            messages,
            audit_key: audit_key.as_deref(),
            error: rep.stopped.as_deref(),
        })?;
    } else if a.dry_run {
        println!(
            "dry run: would {verb} {} message(s){}{}; nothing changed, no audit record",
            rep.would.len(),
            work_queue
                .map(|w| format!(" to the work queue {w}"))
                .unwrap_or_default(),
            filters_note(&filter)
        );
        print_handled(&rep.would);
    } else {
        let done = match action {
            Action::Replay { .. } => "replayed",
            Action::Purge => "purged",
        };
        println!(
            "{done} {} of {} matching message(s){}{}",
            rep.done.len(),
            rep.matched,
            work_queue
                .map(|w| format!(" to the work queue {w}"))
                .unwrap_or_default(),
            filters_note(&filter)
        );
        print_handled(&rep.done);
        print_handled(&rep.failed);
        if let (Some(k), Some(log)) = (&audit_key, &log) {
            println!("audit record s3://{}/{k}", log.bucket());
        }
    }
    finished(command, &rep, audit_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::caller::Caller;
    use crate::ops::letters::EnvelopeMeta;

    fn letter(id: &str) -> DeadLetter {
        DeadLetter {
            message_id: id.into(),
            attributes: BTreeMap::from([
                ("error_class".to_string(), "permanent".to_string()),
                ("http_status".to_string(), "422".to_string()),
                ("idempotency_key".to_string(), format!("ik-{id}")),
            ]),
            receive_count: 1,
            sent_at: None,
            envelope: EnvelopeMeta::of_body(
                r#"{"v":2,"feed":"lab_results","run":"r1","record_key":"R-1","fields":{"first_name":"Zebulon"}}"#,
            ),
        }
    }

    fn who() -> Caller {
        Caller {
            identity: "arn:aws:sts::123456789012:user/moto".into(),
            account: Some("123456789012".into()),
            source: "sts:GetCallerIdentity".into(),
            profile: None,
            os_user: None,
        }
    }

    #[test]
    fn a_replay_audit_record_names_every_message_id_and_key_and_no_row_value() {
        let mut rep = ActReport {
            matched: 3,
            ..ActReport::default()
        };
        let mut ok = Handled::of(&letter("m1"));
        ok.new_message_id = Some("w1".into());
        rep.done.push(ok);
        rep.done.push(Handled::of(&letter("m2")));
        rep.failed
            .push(Handled::failed(&letter("m3"), "not sent: throttled".into()));
        rep.stopped = Some("1 message(s) failed".into());
        let filter = Filter {
            class: Some("permanent".into()),
            ..Filter::default()
        };
        let rec = audit_record(
            "dlq replay",
            who(),
            "mapping fixed",
            &filter,
            Some(10),
            BTreeMap::new(),
            &rep,
        );
        assert_eq!(rec.counts.matched, 3);
        assert_eq!((rec.counts.done, rec.counts.failed), (2, 1));
        assert_eq!(rec.result.status, crate::audit::Status::Partial);
        let ids: Vec<&str> = rec.messages.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);
        assert_eq!(rec.messages[0].outcome, "replayed");
        assert_eq!(rec.messages[0].new_message_id.as_deref(), Some("w1"));
        assert_eq!(rec.messages[0].idempotency_key.as_deref(), Some("ik-m1"));
        assert!(rec.messages[2].outcome.starts_with("failed: not sent"));
        assert_eq!(rec.filters["class"], "permanent");
        assert_eq!(rec.filters["limit"], "10");
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("Zebulon") && !text.contains("R-1"), "{text}");
    }

    #[test]
    fn a_purge_that_did_everything_is_ok() {
        let rep = ActReport {
            matched: 1,
            done: vec![Handled::of(&letter("m1"))],
            ..ActReport::default()
        };
        let rec = audit_record(
            "dlq purge",
            who(),
            "r",
            &Filter::default(),
            None,
            BTreeMap::new(),
            &rep,
        );
        assert_eq!(rec.result.status, crate::audit::Status::Ok);
        assert_eq!(rec.messages[0].outcome, "purged");
        assert!(finished("dlq purge", &rep, None).is_ok());
    }

    #[test]
    fn a_stopped_run_is_an_error_that_names_its_audit_record() {
        let rep = ActReport {
            matched: 2,
            done: vec![Handled::of(&letter("m1"))],
            stopped: Some("SQS ReceiveMessage: timeout".into()),
            ..ActReport::default()
        };
        let e = finished("dlq replay", &rep, Some("audit/2026/12/01/x.json".into()))
            .expect_err("stopped");
        let text = e.to_string();
        assert!(text.contains("after 1 of 2"), "{text}");
        assert!(text.contains("audit/2026/12/01/x.json"), "{text}");
    }

    #[test]
    fn handled_shows_the_class_and_run_but_no_fields() {
        let h = Handled::of(&letter("m1"));
        assert_eq!(h.error_class, "permanent");
        assert_eq!(h.run.as_deref(), Some("r1"));
        let text = serde_json::to_string(&h).unwrap();
        assert!(
            !text.contains("Zebulon") && !text.contains("fields"),
            "{text}"
        );
    }
}
