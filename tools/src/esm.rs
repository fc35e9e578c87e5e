//! A local SQS → Lambda event source mapping, with AWS's semantics: long-poll the queue,
//! invoke the function with a batch, delete every message not reported in
//! `batchItemFailures` (none when the invocation itself fails), and never run more than
//! the configured maximum concurrency — one Runtime Interface Emulator per slot.

use crate::local::{LocalError, Rie, REGION};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct EsmConfig {
    pub queue_url: String,
    pub batch_size: i32,
    /// Long-poll wait per ReceiveMessage (seconds).
    pub wait_secs: i32,
    /// Give up after this long even if the queue is not empty.
    pub max_duration: Duration,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct EsmStats {
    pub invocations: u64,
    pub received: u64,
    pub deleted: u64,
    pub reported_failures: u64,
    pub failed_invocations: u64,
    pub peak_concurrency: usize,
    pub drained: bool,
    pub elapsed_ms: u64,
}

/// The queue's ARN as moto names it, from its URL.
pub fn queue_arn(url: &str) -> String {
    let name = url.rsplit('/').next().unwrap_or("queue");
    format!("arn:aws:sqs:{REGION}:123456789012:{name}")
}

/// The SQS event Lambda's event source mapping would send for `msgs`.
pub fn sqs_event(msgs: &[aws_sdk_sqs::types::Message], arn: &str) -> Value {
    use aws_sdk_sqs::types::MessageSystemAttributeName as A;
    let records: Vec<Value> = msgs
        .iter()
        .map(|m| {
            let sys = m.attributes.clone().unwrap_or_default();
            let get = |a: A| sys.get(&a).cloned().unwrap_or_default();
            let attrs: serde_json::Map<String, Value> = m
                .message_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        json!({"stringValue": v.string_value, "stringListValues": [], "binaryListValues": [], "dataType": v.data_type}),
                    )
                })
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {
                    "ApproximateReceiveCount": get(A::ApproximateReceiveCount),
                    "SentTimestamp": get(A::SentTimestamp),
                    "SenderId": get(A::SenderId),
                    "ApproximateFirstReceiveTimestamp": get(A::ApproximateFirstReceiveTimestamp),
                },
                "messageAttributes": attrs,
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// A queue's messages, by state (SQS's approximate counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

/// A queue's messages: visible, in flight (not visible) and delayed, in all.
pub async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<u64, LocalError> {
    let d = queue_depth(sqs, url).await?;
    Ok(d.visible + d.in_flight + d.delayed)
}

/// A queue's messages: visible, in flight (not visible) and delayed.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<QueueDepth, LocalError> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| LocalError::Aws(format!("GetQueueAttributes: {e:?}")))?;
    let a = out.attributes.unwrap_or_default();
    let n = |k: A| a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(QueueDepth {
        visible: n(A::ApproximateNumberOfMessages),
        in_flight: n(A::ApproximateNumberOfMessagesNotVisible),
        delayed: n(A::ApproximateNumberOfMessagesDelayed),
    })
}

/// Poll until the queue is empty (nothing visible, in flight or delayed) or `max_duration`
/// passes; one worker per emulator, so concurrency never exceeds `functions.len()`.
pub async fn drain(
    sqs: &aws_sdk_sqs::Client,
    functions: &[Rie],
    cfg: &EsmConfig,
) -> Result<EsmStats, LocalError> {
    poll(sqs, functions, cfg, None).await
}

/// Like [`drain`], but an empty queue does not end it: the mapping keeps polling (as Lambda's
/// does) until `stop` is set or `max_duration` passes. A worker notices `stop` between
/// batches, so a batch in progress is finished.
pub async fn pump(
    sqs: &aws_sdk_sqs::Client,
    functions: &[Rie],
    cfg: &EsmConfig,
    stop: Arc<AtomicBool>,
) -> Result<EsmStats, LocalError> {
    poll(sqs, functions, cfg, Some(stop)).await
}

async fn poll(
    sqs: &aws_sdk_sqs::Client,
    functions: &[Rie],
    cfg: &EsmConfig,
    stop: Option<Arc<AtomicBool>>,
) -> Result<EsmStats, LocalError> {
    let start = Instant::now();
    let arn = queue_arn(&cfg.queue_url);
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(tokio::sync::Mutex::new(EsmStats::default()));
    let deadline = start + cfg.max_duration;
    let workers = functions.iter().map(|rie| {
        let (active, peak, stats, arn) = (active.clone(), peak.clone(), stats.clone(), arn.clone());
        let stop = stop.clone();
        async move {
            loop {
                if Instant::now() >= deadline
                    || stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
                {
                    return Ok::<(), LocalError>(());
                }
                let r = sqs
                    .receive_message()
                    .queue_url(&cfg.queue_url)
                    .max_number_of_messages(cfg.batch_size)
                    .wait_time_seconds(cfg.wait_secs)
                    .message_system_attribute_names(
                        aws_sdk_sqs::types::MessageSystemAttributeName::All,
                    )
                    .message_attribute_names("All")
                    .send()
                    .await
                    .map_err(|e| LocalError::Aws(format!("ReceiveMessage: {e:?}")))?;
                let msgs = r.messages.unwrap_or_default();
                if msgs.is_empty() {
                    if stop.is_none() && depth(sqs, &cfg.queue_url).await? == 0 {
                        return Ok(());
                    }
                    continue;
                }
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let resp = rie.invoke(&sqs_event(&msgs, &arn)).await;
                active.fetch_sub(1, Ordering::SeqCst);
                let resp = resp?;
                let mut st = stats.lock().await;
                st.invocations += 1;
                st.received += msgs.len() as u64;
                if resp.get("errorMessage").is_some() || !resp.is_object() {
                    // a failed invocation: every message returns after its visibility timeout
                    st.failed_invocations += 1;
                    continue;
                }
                let failed: std::collections::HashSet<String> = resp
                    .get("batchItemFailures")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| {
                                f.get("itemIdentifier")
                                    .and_then(Value::as_str)
                                    .map(str::to_string)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                st.reported_failures += failed.len() as u64;
                drop(st);
                let mut entries = Vec::new();
                for (i, m) in msgs.iter().enumerate() {
                    if m.message_id
                        .as_deref()
                        .is_some_and(|id| failed.contains(id))
                    {
                        continue;
                    }
                    entries.push(
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                            .build()
                            .map_err(|e| {
                                LocalError::Aws(format!("DeleteMessageBatch entry: {e}"))
                            })?,
                    );
                }
                if !entries.is_empty() {
                    let n = entries.len() as u64;
                    sqs.delete_message_batch()
                        .queue_url(&cfg.queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| LocalError::Aws(format!("DeleteMessageBatch: {e:?}")))?;
                    stats.lock().await.deleted += n;
                }
            }
        }
    });
    let results = futures_util::future::join_all(workers).await;
    for r in results {
        r?;
    }
    let mut st = stats.lock().await.clone();
    st.peak_concurrency = peak.load(Ordering::SeqCst);
    st.drained = depth(sqs, &cfg.queue_url).await? == 0;
    st.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(st)
}
