//! The SQS side of the operator commands: walk a queue without consuming it (each message is
//! received with a visibility timeout, kept hidden while the walk goes on so that it is seen
//! once, and made visible again at the end unless the command deleted it), copy messages to
//! another queue, delete them.
//!
//! A command deletes a message only after the step before it (a copy sent, an invocation
//! accepted) succeeded; a walk that stops early (an error, a crash) leaves every message it
//! did not delete in the queue — visible again at the latest when its visibility timeout ends.

use super::letters::{DeadLetter, EnvelopeMeta};
use super::sdk_message;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use std::collections::{BTreeMap, HashSet};

/// An SQS call that failed.
#[derive(Debug, thiserror::Error)]
#[error("SQS {op} on {queue}: {message}")]
pub struct SqsError {
    pub op: &'static str,
    pub queue: String,
    pub message: String,
}

fn sqs_err<E: std::error::Error>(op: &'static str, queue: &str) -> impl FnOnce(E) -> SqsError {
    let queue = queue.to_string();
    move |e| SqsError {
        op,
        queue,
        message: sdk_message(&e),
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// The String message attributes.
    pub attributes: BTreeMap<String, String>,
    pub receive_count: u64,
    /// SQS SentTimestamp (Unix epoch ms).
    pub sent_timestamp_ms: Option<i64>,
}

impl Msg {
    fn of(m: aws_sdk_sqs::types::Message) -> Msg {
        let system = m.attributes.unwrap_or_default();
        let sys = |a: MessageSystemAttributeName| system.get(&a).cloned();
        Msg {
            message_id: m.message_id.unwrap_or_default(),
            receipt_handle: m.receipt_handle.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
            attributes: m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect(),
            receive_count: sys(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            sent_timestamp_ms: sys(MessageSystemAttributeName::SentTimestamp)
                .and_then(|v| v.parse().ok()),
        }
    }

    /// The operator's view of it as a dead letter (the body is read for metadata only).
    pub fn letter(&self) -> DeadLetter {
        DeadLetter {
            message_id: self.message_id.clone(),
            attributes: self.attributes.clone(),
            receive_count: self.receive_count,
            sent_at: self.sent_timestamp_ms.and_then(rfc3339_ms),
            envelope: EnvelopeMeta::of_body(&self.body),
        }
    }
}

/// Unix epoch ms as RFC 3339 UTC.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// ApproximateNumberOfMessages (visible) of a queue: the length of a walk's progress bar.
pub async fn visible(client: &aws_sdk_sqs::Client, url: &str) -> Result<u64, SqsError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(sqs_err("GetQueueAttributes", url))?;
    Ok(out
        .attributes
        .unwrap_or_default()
        .get(&QueueAttributeName::ApproximateNumberOfMessages)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// A walk over a queue: every message once, hidden until [`Walk::finish`].
pub struct Walk<'a> {
    client: &'a aws_sdk_sqs::Client,
    url: &'a str,
    visibility: i32,
    seen: HashSet<String>,
    hidden: Vec<String>,
    empty_polls: u32,
    bar: indicatif::ProgressBar,
}

/// Consecutive empty receives (1 s long polls) that end a walk.
const EMPTY_POLLS: u32 = 2;

impl<'a> Walk<'a> {
    /// Walk `url`, each message hidden for `visibility` seconds at a time; `bar` counts them.
    pub fn new(
        client: &'a aws_sdk_sqs::Client,
        url: &'a str,
        visibility: i32,
        bar: indicatif::ProgressBar,
    ) -> Walk<'a> {
        Walk {
            client,
            url,
            visibility,
            seen: HashSet::new(),
            hidden: Vec::new(),
            empty_polls: 0,
            bar,
        }
    }

    /// The next messages not seen before in this walk; `None` once the queue shows none.
    /// A message seen before (its visibility ran out during a long walk) is hidden again.
    pub async fn next(&mut self) -> Result<Option<Vec<Msg>>, SqsError> {
        while self.empty_polls < EMPTY_POLLS {
            let out = self
                .client
                .receive_message()
                .queue_url(self.url)
                .max_number_of_messages(10)
                .visibility_timeout(self.visibility)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(sqs_err("ReceiveMessage", self.url))?;
            let msgs = out.messages.unwrap_or_default();
            if msgs.is_empty() {
                self.empty_polls += 1;
                continue;
            }
            self.empty_polls = 0;
            let mut fresh = Vec::new();
            for m in msgs.into_iter().map(Msg::of) {
                if self.seen.insert(m.message_id.clone()) {
                    fresh.push(m);
                } else {
                    self.hidden.push(m.receipt_handle);
                }
            }
            if !fresh.is_empty() {
                self.bar.inc(fresh.len() as u64);
                return Ok(Some(fresh));
            }
        }
        Ok(None)
    }

    /// Leave this message in the queue: visible again when the walk finishes.
    pub fn keep(&mut self, m: &Msg) {
        self.hidden.push(m.receipt_handle.clone());
    }

    /// Make every kept message visible again (best effort: one that fails becomes visible
    /// when its visibility timeout ends). Returns how many could not be released.
    pub async fn finish(self) -> usize {
        self.bar.finish_and_clear();
        let mut failed = 0;
        for chunk in self.hidden.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            failed += chunk.len() - entries.len();
            match self
                .client
                .change_message_visibility_batch()
                .queue_url(self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => failed += out.failed.len(),
                Err(_) => failed += chunk.len(),
            }
        }
        failed
    }
}

/// What happened to one message of a batch call.
pub type Outcomes = Vec<Result<String, String>>;

/// Send a copy of each message to `url` (SendMessageBatch), keeping only the attributes in
/// `keep`. One outcome per message, in order: the copy's message id, or why it was refused.
pub async fn send_copies(
    client: &aws_sdk_sqs::Client,
    url: &str,
    msgs: &[&Msg],
    keep: &[&str],
) -> Result<Outcomes, SqsError> {
    let mut out: Outcomes = Vec::with_capacity(msgs.len());
    for chunk in msgs.chunks(10) {
        let mut entries = Vec::with_capacity(chunk.len());
        let mut slots: Vec<Result<String, String>> = Vec::with_capacity(chunk.len());
        for (i, m) in chunk.iter().enumerate() {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body);
            for k in keep {
                if let Some(v) = m.attributes.get(*k) {
                    match MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v)
                        .build()
                    {
                        Ok(a) => e = e.message_attributes(*k, a),
                        Err(err) => {
                            return Err(SqsError {
                                op: "SendMessageBatch attribute",
                                queue: url.to_string(),
                                message: err.to_string(),
                            })
                        }
                    }
                }
            }
            match e.build() {
                Ok(e) => {
                    entries.push(e);
                    slots.push(Err("no answer for this entry".into()));
                }
                Err(err) => {
                    return Err(SqsError {
                        op: "SendMessageBatch entry",
                        queue: url.to_string(),
                        message: err.to_string(),
                    })
                }
            }
        }
        let resp = client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err("SendMessageBatch", url))?;
        for ok in resp.successful {
            if let Some(slot) = ok.id.parse::<usize>().ok().and_then(|i| slots.get_mut(i)) {
                *slot = Ok(ok.message_id);
            }
        }
        for f in resp.failed {
            if let Some(slot) = f.id.parse::<usize>().ok().and_then(|i| slots.get_mut(i)) {
                *slot = Err(format!("{}: {}", f.code, f.message.unwrap_or_default()));
            }
        }
        out.extend(slots);
    }
    Ok(out)
}

/// Delete messages (DeleteMessageBatch). One outcome per message, in order.
pub async fn delete(
    client: &aws_sdk_sqs::Client,
    url: &str,
    msgs: &[&Msg],
) -> Result<Outcomes, SqsError> {
    let mut out: Outcomes = Vec::with_capacity(msgs.len());
    for chunk in msgs.chunks(10) {
        let mut entries = Vec::with_capacity(chunk.len());
        for (i, m) in chunk.iter().enumerate() {
            let e = DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&m.receipt_handle)
                .build()
                .map_err(|err| SqsError {
                    op: "DeleteMessageBatch entry",
                    queue: url.to_string(),
                    message: err.to_string(),
                })?;
            entries.push(e);
        }
        let mut slots: Vec<Result<String, String>> = chunk
            .iter()
            .map(|_| Err("no answer for this entry".to_string()))
            .collect();
        let resp = client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err("DeleteMessageBatch", url))?;
        for ok in resp.successful {
            if let Ok(i) = ok.id.parse::<usize>() {
                if let (Some(slot), Some(m)) = (slots.get_mut(i), chunk.get(i)) {
                    *slot = Ok(m.message_id.clone());
                }
            }
        }
        for f in resp.failed {
            if let Some(slot) = f.id.parse::<usize>().ok().and_then(|i| slots.get_mut(i)) {
                *slot = Err(format!("{}: {}", f.code, f.message.unwrap_or_default()));
            }
        }
        out.extend(slots);
    }
    Ok(out)
}
