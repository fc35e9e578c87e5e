//! Fan-out to SQS: batches of up to 10 messages (and at most 1 MiB together), several
//! SendMessageBatch calls in flight, every failed entry retried with backoff. A row SQS
//! refuses for good (too large, sender fault) is reported back as rejected; anything that
//! cannot be sent after retries fails the run so Lambda retries the file.

use crate::backoff::Backoff;
use crate::contract::report::{SentRecord, MAX_SENT_LISTED};
use crate::ports::queue::{MessageQueue, OutMessage, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Why sending failed the run (Lambda retries the file).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Messages SQS did not accept within the attempts (or refused with an error not worth
    /// retrying).
    #[error("{count} message(s) could not be sent after {attempts} attempts (last error: {last})")]
    Exhausted {
        /// How many messages were left unsent.
        count: usize,
        /// Attempts made at their batch.
        attempts: u32,
        /// The last error SQS gave.
        last: String,
    },
    /// A send task panicked or was cancelled.
    #[error("the sender task failed: {0}")]
    Task(String),
}

/// A row SQS would not take.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The row's 1-based line in the file.
    pub line: u64,
    /// The row's key fingerprint (its record keeps its previous state).
    pub key_fp: u64,
    /// Why SQS would not take it (or that it is over the size limit).
    pub reason: String,
}

/// What a run's sending did.
#[derive(Debug, Default, Clone)]
pub struct SendStats {
    /// Messages SQS accepted.
    pub sent: u64,
    /// `SendMessageBatch` calls made.
    pub calls: u64,
    /// Entries sent again after SQS failed them (each retry counts).
    pub retried_entries: u64,
    /// Rows SQS would not take, for the rejects report.
    pub refused: Vec<Refused>,
    /// The most `SendMessageBatch` calls that were in flight at once.
    pub max_in_flight: usize,
    /// The accepted messages' keys, in no particular order (at most
    /// [`MAX_SENT_LISTED`]; `unlisted` counts the rest): the run's sent list.
    pub accepted: Vec<SentRecord>,
    /// Accepted messages left out of `accepted`.
    pub unlisted: u64,
}

/// How messages are batched and sent.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// `SendMessageBatch` calls in flight at most.
    pub concurrency: usize,
    /// The largest message sent, in bytes as SQS counts them; a larger row is refused.
    pub max_message_bytes: usize,
    /// Attempts at one batch before the run fails.
    pub max_attempts: u32,
    /// The waits between attempts.
    pub backoff: Backoff,
}

impl Default for SenderSettings {
    fn default() -> Self {
        SenderSettings {
            concurrency: 8,
            max_message_bytes: 1024 * 1024,
            max_attempts: 8,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
        }
    }
}

struct BatchSent {
    sent: u64,
    retried: u64,
    refused: Vec<Refused>,
    accepted: Vec<SentRecord>,
}

async fn send_one_batch<Q: MessageQueue>(
    queue: Q,
    mut batch: Vec<OutMessage>,
    settings: SenderSettings,
) -> Result<BatchSent, SendError> {
    let mut result = BatchSent {
        sent: 0,
        retried: 0,
        refused: Vec::new(),
        accepted: Vec::new(),
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = queue.send_batch(&batch).await;
        let failures = match outcome {
            Ok(f) => f,
            Err(e) => {
                if !e.retryable() || attempt >= settings.max_attempts {
                    return Err(SendError::Exhausted {
                        count: batch.len(),
                        attempts: attempt,
                        last: e.to_string(),
                    });
                }
                tokio::time::sleep(settings.backoff.delay(attempt)).await;
                continue;
            }
        };
        let mut retry = Vec::new();
        let mut last = String::new();
        let mut failed_idx = vec![false; batch.len()];
        for f in &failures {
            if f.index < batch.len() {
                failed_idx[f.index] = true;
            }
        }
        result.sent += failed_idx.iter().filter(|f| !**f).count() as u64;
        for (m, failed) in batch.iter().zip(&failed_idx) {
            if !failed {
                result.accepted.push(m.sent_record());
            }
        }
        let mut msgs: Vec<Option<OutMessage>> = batch.into_iter().map(Some).collect();
        for f in failures {
            let Some(m) = msgs.get_mut(f.index).and_then(Option::take) else {
                continue;
            };
            if f.sender_fault {
                result.refused.push(Refused {
                    line: m.line,
                    key_fp: m.key_fp,
                    reason: format!("SQS refused the message: {}", f.code),
                });
            } else {
                last = f.code.clone();
                retry.push(m);
            }
        }
        if retry.is_empty() {
            return Ok(result);
        }
        if attempt >= settings.max_attempts {
            return Err(SendError::Exhausted {
                count: retry.len(),
                attempts: attempt,
                last,
            });
        }
        result.retried += retry.len() as u64;
        batch = retry;
        tokio::time::sleep(settings.backoff.delay(attempt)).await;
    }
}

/// Add accepted messages to the run's sent list, up to [`MAX_SENT_LISTED`].
pub(crate) fn list_sent(stats: &mut SendStats, accepted: Vec<SentRecord>) {
    let room = MAX_SENT_LISTED.saturating_sub(stats.accepted.len());
    let n = accepted.len();
    stats.accepted.extend(accepted.into_iter().take(room));
    stats.unlisted += n.saturating_sub(room) as u64;
}

/// Add one finished batch's outcome to the run's.
fn absorb(
    stats: &mut SendStats,
    r: Result<Result<BatchSent, SendError>, tokio::task::JoinError>,
) -> Result<(), SendError> {
    let r = r.map_err(|e| SendError::Task(e.to_string()))??;
    stats.sent += r.sent;
    stats.retried_entries += r.retried;
    stats.refused.extend(r.refused);
    list_sent(stats, r.accepted);
    Ok(())
}

/// Start one SendMessageBatch call for `batch` (never empty: SQS refuses an empty batch),
/// first waiting until fewer than `concurrency` are in flight.
async fn spawn_batch<Q: MessageQueue>(
    queue: &Q,
    inflight: &mut JoinSet<Result<BatchSent, SendError>>,
    batch: Vec<OutMessage>,
    settings: &SenderSettings,
    stats: &mut SendStats,
) -> Result<(), SendError> {
    if batch.is_empty() {
        return Ok(());
    }
    while inflight.len() >= settings.concurrency.max(1) {
        if let Some(r) = inflight.join_next().await {
            absorb(stats, r)?;
        }
    }
    stats.calls += 1;
    inflight.spawn(send_one_batch(queue.clone(), batch, settings.clone()));
    stats.max_in_flight = stats.max_in_flight.max(inflight.len());
    Ok(())
}

/// Drain `rx` into SendMessageBatch calls, at most `settings.concurrency` in flight. A
/// message larger than `settings.max_message_bytes` (or than a whole batch may carry) is
/// refused without being sent and without cutting the batch being filled short.
pub async fn run_sender<Q: MessageQueue>(
    queue: Q,
    mut rx: mpsc::Receiver<OutMessage>,
    settings: SenderSettings,
) -> Result<SendStats, SendError> {
    let mut stats = SendStats::default();
    let mut inflight: JoinSet<Result<BatchSent, SendError>> = JoinSet::new();
    let mut batch: Vec<OutMessage> = Vec::with_capacity(MAX_BATCH_ENTRIES);
    let mut batch_bytes = 0usize;
    // a message must fit a batch on its own
    let limit = settings.max_message_bytes.min(MAX_BATCH_BYTES);

    while let Some(m) = rx.recv().await {
        let size = m.size();
        if size > limit {
            stats.refused.push(Refused {
                line: m.line,
                key_fp: m.key_fp,
                reason: format!(
                    "row is too large for one SQS message ({size} bytes, limit {limit})"
                ),
            });
            continue;
        }
        if batch.len() == MAX_BATCH_ENTRIES || batch_bytes + size > MAX_BATCH_BYTES {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH_ENTRIES));
            batch_bytes = 0;
            spawn_batch(&queue, &mut inflight, full, &settings, &mut stats).await?;
        }
        batch_bytes += size;
        batch.push(m);
    }
    spawn_batch(&queue, &mut inflight, batch, &settings, &mut stats).await?;
    while let Some(r) = inflight.join_next().await {
        absorb(&mut stats, r)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::queue::{EntryFailure, QueueError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct FakeQueue {
        got: Arc<Mutex<Vec<String>>>,
        /// The number of entries of every call, in call order.
        batch_lens: Arc<Mutex<Vec<usize>>>,
        calls: Arc<AtomicUsize>,
        inflight: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        /// fail every entry whose body contains this, this many times
        flaky: Arc<Mutex<(String, usize)>>,
        refuse: Option<String>,
    }

    impl MessageQueue for FakeQueue {
        async fn send_batch(
            &self,
            messages: &[OutMessage],
        ) -> Result<Vec<EntryFailure>, QueueError> {
            assert!(messages.len() <= MAX_BATCH_ENTRIES);
            assert!(messages.iter().map(|m| m.size()).sum::<usize>() <= MAX_BATCH_BYTES);
            self.batch_lens.lock().unwrap().push(messages.len());
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut fails = vec![];
            for (i, m) in messages.iter().enumerate() {
                let mut fl = self.flaky.lock().unwrap();
                if !fl.0.is_empty() && m.body.contains(&fl.0) && fl.1 > 0 {
                    fl.1 -= 1;
                    fails.push(EntryFailure {
                        index: i,
                        code: "InternalError".into(),
                        sender_fault: false,
                    });
                    continue;
                }
                if self.refuse.as_deref().is_some_and(|r| m.body.contains(r)) {
                    fails.push(EntryFailure {
                        index: i,
                        code: "InvalidMessageContents".into(),
                        sender_fault: true,
                    });
                    continue;
                }
                self.got.lock().unwrap().push(m.body.clone());
            }
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            Ok(fails)
        }
    }

    fn msg(i: usize, size: usize) -> OutMessage {
        OutMessage {
            body: format!("m{i:05}-{}", "x".repeat(size)),
            attributes: vec![("feed", "f".into())],
            line: i as u64 + 2,
            key_fp: i as u64,
            record_key: format!("r{i}"),
        }
    }

    fn fast() -> SenderSettings {
        SenderSettings {
            concurrency: 3,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
            ..Default::default()
        }
    }

    async fn drive(
        q: FakeQueue,
        msgs: Vec<OutMessage>,
        s: SenderSettings,
    ) -> Result<SendStats, SendError> {
        let (tx, rx) = mpsc::channel(16);
        let h = tokio::spawn(run_sender(q, rx, s));
        for m in msgs {
            tx.send(m).await.unwrap();
        }
        drop(tx);
        h.await.unwrap()
    }

    #[tokio::test]
    async fn batches_of_ten_with_bounded_concurrency() {
        let q = FakeQueue::default();
        let stats = drive(q.clone(), (0..95).map(|i| msg(i, 10)).collect(), fast())
            .await
            .unwrap();
        assert_eq!(stats.sent, 95);
        assert_eq!(stats.calls, 10, "ceil(95/10) calls");
        assert_eq!(q.calls.load(Ordering::SeqCst), 10);
        assert!(q.peak.load(Ordering::SeqCst) <= 3);
        let mut got = q.got.lock().unwrap().clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 95);
    }

    #[tokio::test]
    async fn batches_respect_total_size() {
        let q = FakeQueue::default();
        let stats = drive(
            q.clone(),
            (0..6).map(|i| msg(i, 300 * 1024)).collect(),
            fast(),
        )
        .await
        .unwrap();
        assert_eq!(stats.sent, 6);
        assert_eq!(stats.calls, 2, "three 300 KiB messages per 1 MiB batch");
    }

    #[tokio::test]
    async fn failed_entries_are_retried() {
        let q = FakeQueue::default();
        *q.flaky.lock().unwrap() = ("m00007".into(), 3);
        let stats = drive(q.clone(), (0..20).map(|i| msg(i, 1)).collect(), fast())
            .await
            .unwrap();
        assert_eq!(stats.sent, 20);
        assert_eq!(stats.retried_entries, 3);
        assert_eq!(q.got.lock().unwrap().len(), 20);
    }

    #[tokio::test]
    async fn exhausted_retries_fail_the_run() {
        let q = FakeQueue::default();
        *q.flaky.lock().unwrap() = ("m00003".into(), 1000);
        let mut s = fast();
        s.max_attempts = 4;
        let e = drive(q, (0..10).map(|i| msg(i, 1)).collect(), s)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SendError::Exhausted {
                    count: 1,
                    attempts: 4,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn oversized_and_refused_rows_are_reported() {
        let q = FakeQueue {
            refuse: Some("m00002".into()),
            ..Default::default()
        };
        let mut s = fast();
        s.max_message_bytes = 1000;
        let mut msgs: Vec<OutMessage> = (0..5).map(|i| msg(i, 1)).collect();
        msgs.push(msg(9, 2000));
        let stats = drive(q, msgs, s).await.unwrap();
        assert_eq!(stats.sent, 4);
        assert_eq!(stats.refused.len(), 2);
        assert!(stats
            .refused
            .iter()
            .any(|r| r.line == 11 && r.reason.contains("too large")));
        assert!(stats
            .refused
            .iter()
            .any(|r| r.line == 4 && r.reason.contains("InvalidMessageContents")));
    }

    /// A message larger than a whole batch may carry: over SQS's 1 MiB batch limit.
    fn oversized(i: usize) -> OutMessage {
        msg(i, MAX_BATCH_BYTES + 10)
    }

    fn assert_too_large(stats: &SendStats, line: u64) {
        let r = stats
            .refused
            .iter()
            .find(|r| r.line == line)
            .unwrap_or_else(|| panic!("line {line} not refused: {:?}", stats.refused));
        assert!(
            r.reason.contains("row is too large for one SQS message"),
            "{}",
            r.reason
        );
    }

    #[tokio::test]
    async fn an_oversized_first_message_is_refused_without_sending_an_empty_batch() {
        let q = FakeQueue::default();
        let mut msgs = vec![oversized(0)];
        msgs.extend((1..4).map(|i| msg(i, 10)));
        let stats = drive(q.clone(), msgs, fast()).await.unwrap();
        assert_eq!(
            *q.batch_lens.lock().unwrap(),
            [3],
            "one call, never an empty one"
        );
        assert_eq!(stats.calls, 1);
        assert_eq!(stats.sent, 3);
        assert_eq!(stats.refused.len(), 1);
        assert_too_large(&stats, 2);
    }

    #[tokio::test]
    async fn oversized_messages_after_a_flush_are_refused_without_sending_an_empty_batch() {
        let q = FakeQueue::default();
        // a full batch, then two oversized messages (the first finds the batch just
        // flushed, the second an empty one), then a few more, then one alone at the end
        let mut msgs: Vec<OutMessage> = (0..10).map(|i| msg(i, 10)).collect();
        msgs.push(oversized(10));
        msgs.push(oversized(11));
        msgs.extend((12..15).map(|i| msg(i, 10)));
        msgs.push(oversized(15));
        let stats = drive(q.clone(), msgs, fast()).await.unwrap();
        let lens = q.batch_lens.lock().unwrap().clone();
        assert!(!lens.contains(&0), "an empty batch was sent: {lens:?}");
        assert_eq!(lens, [10, 3]);
        assert_eq!(stats.calls, 2);
        assert_eq!(stats.sent, 13);
        assert_eq!(stats.refused.len(), 3);
        for line in [12, 13, 17] {
            assert_too_large(&stats, line);
        }
    }
}
