//! `casefeed dlq inspect|replay|purge`: the operator's view of the dead-letter queue.
//! Inspect shows only message attributes (error class, status, reason, attempts, key) —
//! never bodies, which hold row values. Replay moves messages back to the work queue by
//! receive → send → delete (SQS `StartMessageMoveTask` is not available everywhere), so a
//! message is never lost: it is deleted from the DLQ only after the work queue accepted it.

use std::collections::{BTreeMap, BTreeSet};

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead-lettered messages by their attributes (bodies are not shown).
    Inspect {
        #[arg(long, env = "DLQ_URL")]
        dlq_url: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move messages back to the work queue (optionally only one error class).
    Replay {
        #[arg(long, env = "DLQ_URL")]
        dlq_url: String,
        #[arg(long, env = "WORK_QUEUE_URL")]
        work_queue_url: String,
        #[arg(long, default_value_t = 1000)]
        max: usize,
        /// Only messages with this `error_class` attribute (e.g. permanent, undecodable).
        #[arg(long)]
        error_class: Option<String>,
    },
    /// Delete every message in the dead-letter queue.
    Purge {
        #[arg(long, env = "DLQ_URL")]
        dlq_url: String,
        /// Required: purging loses the messages for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("SQS {op}: {message}")]
    Sqs { op: &'static str, message: String },
    #[error("refusing to purge without --yes")]
    NotConfirmed,
}

fn sqs<E: std::fmt::Debug>(op: &'static str) -> impl FnOnce(E) -> DlqError {
    move |e| DlqError::Sqs {
        op,
        message: format!("{e:?}"),
    }
}

/// A dead-lettered message, by its attributes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub attributes: BTreeMap<String, String>,
    pub receive_count: u64,
}

async fn receive(
    client: &aws_sdk_sqs::Client,
    url: &str,
    visibility: i32,
) -> Result<Vec<aws_sdk_sqs::types::Message>, DlqError> {
    Ok(client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(sqs("ReceiveMessage"))?
        .messages
        .unwrap_or_default())
}

fn string_attrs(m: &aws_sdk_sqs::types::Message) -> BTreeMap<String, String> {
    m.message_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
        .collect()
}

/// Read up to `max` messages without consuming them: each is hidden briefly while the
/// queue is paged, then made visible again.
pub async fn inspect(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    max: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut handles = Vec::new();
    let mut empty = 0;
    while out.len() < max && empty < 2 {
        let msgs = receive(client, dlq_url, 30).await?;
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        for m in msgs {
            let id = m.message_id.clone().unwrap_or_default();
            handles.push(m.receipt_handle.clone().unwrap_or_default());
            if !seen.insert(id.clone()) || out.len() >= max {
                continue;
            }
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.push(DeadLetter {
                message_id: id,
                attributes: string_attrs(&m),
                receive_count,
            });
        }
    }
    for h in handles {
        let _ = client
            .change_message_visibility()
            .queue_url(dlq_url)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await;
    }
    Ok(out)
}

/// Move messages back to the work queue; returns how many were moved.
pub async fn replay(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    work_queue_url: &str,
    max: usize,
    error_class: Option<&str>,
) -> Result<usize, DlqError> {
    use aws_sdk_sqs::types::MessageAttributeValue;
    let mut moved = 0;
    let mut skipped = Vec::new();
    let mut empty = 0;
    while moved < max && empty < 2 {
        let msgs = receive(client, dlq_url, 60).await?;
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        for m in msgs {
            let attrs = string_attrs(&m);
            let handle = m.receipt_handle.clone().unwrap_or_default();
            if moved >= max
                || error_class
                    .is_some_and(|c| attrs.get("error_class").map(String::as_str) != Some(c))
            {
                skipped.push(handle);
                continue;
            }
            // the work message keeps only the attributes the splitter gave it
            let mut req = client
                .send_message()
                .queue_url(work_queue_url)
                .message_body(m.body.clone().unwrap_or_default());
            for k in ["feed", "change", "idempotency_key"] {
                if let Some(v) = attrs.get(k) {
                    let a = MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v)
                        .build()
                        .map_err(sqs("SendMessage attribute"))?;
                    req = req.message_attributes(k, a);
                }
            }
            req.send().await.map_err(sqs("SendMessage"))?;
            client
                .delete_message()
                .queue_url(dlq_url)
                .receipt_handle(handle)
                .send()
                .await
                .map_err(sqs("DeleteMessage"))?;
            moved += 1;
        }
    }
    for h in skipped {
        let _ = client
            .change_message_visibility()
            .queue_url(dlq_url)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await;
    }
    Ok(moved)
}

/// Delete every message (receive → delete, so it also works where PurgeQueue is limited
/// to once a minute).
pub async fn purge(client: &aws_sdk_sqs::Client, dlq_url: &str) -> Result<usize, DlqError> {
    let mut n = 0;
    let mut empty = 0;
    while empty < 2 {
        let msgs = receive(client, dlq_url, 30).await?;
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        for m in msgs {
            client
                .delete_message()
                .queue_url(dlq_url)
                .receipt_handle(m.receipt_handle.unwrap_or_default())
                .send()
                .await
                .map_err(sqs("DeleteMessage"))?;
            n += 1;
        }
    }
    Ok(n)
}

pub async fn run(args: DlqArgs) -> Result<(), DlqError> {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let client = aws_sdk_sqs::Client::new(&conf);
    match args.command {
        DlqCommand::Inspect { dlq_url, max } => {
            let letters = inspect(&client, &dlq_url, max).await?;
            println!(
                "{:<38} {:<9} {:<12} {:<6} {:>8}  reason",
                "message id", "feed", "error_class", "status", "attempts"
            );
            for l in &letters {
                let a = |k: &str| l.attributes.get(k).cloned().unwrap_or_default();
                println!(
                    "{:<38} {:<9} {:<12} {:<6} {:>8}  {}",
                    l.message_id,
                    a("feed"),
                    a("error_class"),
                    a("http_status"),
                    a("attempts"),
                    a("reason")
                );
            }
            println!("{} message(s)", letters.len());
        }
        DlqCommand::Replay {
            dlq_url,
            work_queue_url,
            max,
            error_class,
        } => {
            let n = replay(
                &client,
                &dlq_url,
                &work_queue_url,
                max,
                error_class.as_deref(),
            )
            .await?;
            println!("replayed {n} message(s) to the work queue");
        }
        DlqCommand::Purge { dlq_url, yes } => {
            if !yes {
                return Err(DlqError::NotConfirmed);
            }
            let n = purge(&client, &dlq_url).await?;
            println!("purged {n} message(s)");
        }
    }
    Ok(())
}
