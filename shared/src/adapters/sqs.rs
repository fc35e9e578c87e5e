//! The SQS adapters: [`SqsQueue`] sends the splitter's batches (`SendMessageBatch`);
//! [`SqsWork`] backs the consumer's messages off (`ChangeMessageVisibility` on the work
//! queue), requeues them (`SendMessage` with a delay to the work queue) and dead-letters them
//! (`SendMessage` to the DLQ).

use super::sdk::describe;
use crate::ports::queue::{
    EntryFailure, MessageQueue, OutMessage, QueueError, WorkQueue, MAX_DELAY, MAX_VISIBILITY,
};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use std::time::Duration;

/// An SQS error as the queue ports know it, described by [`describe`].
fn sqs_error<E>(op: &'static str) -> impl FnOnce(SdkError<E>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| {
        let failure = describe(&e);
        QueueError::Service {
            op,
            message: failure.message,
            retryable: failure.retryable,
        }
    }
}

/// The splitter's queue: `SendMessageBatch` to the work queue.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    /// A sender to the work queue at `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }
}

impl MessageQueue for SqsQueue {
    async fn send_batch(&self, messages: &[OutMessage]) -> Result<Vec<EntryFailure>, QueueError> {
        use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body);
            for (name, value) in &m.attributes {
                let v = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| QueueError::Service {
                        op: "SendMessageBatch",
                        message: format!("building attribute {name}: {e}"),
                        retryable: false,
                    })?;
                e = e.message_attributes(*name, v);
            }
            entries.push(e.build().map_err(|e| QueueError::Service {
                op: "SendMessageBatch",
                message: format!("building entry: {e}"),
                retryable: false,
            })?);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_error("SendMessageBatch"))?;
        Ok(out
            .failed()
            .iter()
            .map(|f| EntryFailure {
                index: f.id().parse().unwrap_or(usize::MAX),
                code: f.code().to_string(),
                sender_fault: f.sender_fault(),
            })
            .collect())
    }
}

/// The SQS adapter: backoff by `ChangeMessageVisibility` on the work queue, dead letters by
/// `SendMessage` to the DLQ.
#[derive(Clone)]
pub struct SqsWork {
    /// The SDK client.
    pub client: aws_sdk_sqs::Client,
    /// The work queue's URL (where the consumer's messages come from).
    pub work_queue_url: String,
    /// The dead-letter queue's URL.
    pub dlq_url: String,
}

impl WorkQueue for SqsWork {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.work_queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(timeout.as_secs().min(MAX_VISIBILITY.as_secs()) as i32)
            .send()
            .await
            .map_err(sqs_error("ChangeMessageVisibility"))?;
        Ok(())
    }

    async fn requeue(
        &self,
        body: &str,
        attributes: &[(String, String)],
        delay: Duration,
    ) -> Result<(), QueueError> {
        send_with_attributes(
            &self.client,
            &self.work_queue_url,
            body,
            attributes,
            // whole seconds, rounded up: a copy never comes back before its time
            Some(
                delay
                    .as_millis()
                    .div_ceil(1000)
                    .min(u128::from(MAX_DELAY.as_secs())) as i32,
            ),
        )
        .await
    }

    async fn dead_letter(
        &self,
        body: &str,
        attributes: &[(String, String)],
    ) -> Result<(), QueueError> {
        send_with_attributes(&self.client, &self.dlq_url, body, attributes, None).await
    }
}

/// `SendMessage` of `body` with string attributes (empty values left out) and an optional
/// delay.
async fn send_with_attributes(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    body: &str,
    attributes: &[(String, String)],
    delay_secs: Option<i32>,
) -> Result<(), QueueError> {
    use aws_sdk_sqs::types::MessageAttributeValue;
    let mut req = client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .set_delay_seconds(delay_secs);
    for (k, v) in attributes {
        if v.is_empty() {
            continue;
        }
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .map_err(|e| QueueError::Service {
                op: "SendMessage",
                message: e.to_string(),
                retryable: false,
            })?;
        req = req.message_attributes(k, attr);
    }
    req.send().await.map_err(sqs_error("SendMessage"))?;
    Ok(())
}
