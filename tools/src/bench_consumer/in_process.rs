//! `bench-consumer --tables memory`: the consumer's own throughput, without moto.
//!
//! Against moto every applied message costs ~6 serialised requests to one Python server,
//! which caps the fleet at ~5 applies/s whatever the rate (BENCHMARKS.md): that measures
//! moto, not the consumer. Here the same [`Consumer`] (its lease, gate, API call,
//! acknowledgement and fate, the production code) runs in this process with the tables in
//! memory: the gate's table answers after `--table-ms` (a DynamoDB round trip; the ledger
//! answers at once), the work queue is an in-memory queue with SQS's delays and
//! visibility, and the API is the stand-in server over real HTTP at `--latency-ms`, with its
//! limit enforced. Each of `--consumers` instances has a `Gate` of its own (its own round-trip
//! estimate and view of the breaker, as separate containers have) over the one shared gate
//! table, and takes batches of 10.

use super::{BenchConsumerArgs, BenchConsumerError, Case, Reading, FEED, TOKEN};
use crate::api::ApiServer;
use casefeed::adapters::http_api::HttpApi;
use casefeed::consumer::{Consumer, ConsumerSettings, Gate, GateSettings, InMessage, Ledger};
use casefeed::ports::gate::MemoryGate;
use casefeed::ports::ledger::MemoryLedger;
use casefeed::ports::queue::{QueueError, WorkQueue};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The visibility a received message has until it is deleted or changed (the template's
/// default for the work queue).
const VISIBILITY_MS: i64 = 540_000;

#[derive(Default)]
struct QueueState {
    /// Visible now, oldest first.
    ready: VecDeque<InMessage>,
    /// Visible from the time given (requeued copies, returned messages).
    later: Vec<(i64, InMessage)>,
    /// Received and not deleted: when each becomes visible again.
    in_flight: HashMap<String, (i64, InMessage)>,
    dead: u64,
    next_id: u64,
}

/// An in-memory work queue and DLQ with SQS's delays and visibility.
#[derive(Clone, Default)]
pub struct MemoryWork {
    state: Arc<Mutex<QueueState>>,
}

impl MemoryWork {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send a message (visible at once).
    pub fn send(&self, body: String, attributes: BTreeMap<String, String>) {
        let mut s = self.lock();
        let m = new_message(&mut s, body, attributes);
        s.ready.push_back(m);
    }

    /// Receive up to `max` visible messages (each gets a new receipt handle).
    pub fn receive(&self, max: usize) -> Vec<InMessage> {
        let now = super::now_ms();
        let mut s = self.lock();
        let (due, not): (Vec<_>, Vec<_>) = std::mem::take(&mut s.later)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        s.later = not;
        s.ready.extend(due.into_iter().map(|(_, m)| m));
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut m) = s.ready.pop_front() else {
                break;
            };
            m.receive_count += 1;
            s.next_id += 1;
            m.receipt_handle = format!("r{}", s.next_id);
            s.in_flight
                .insert(m.receipt_handle.clone(), (now + VISIBILITY_MS, m.clone()));
            out.push(m);
        }
        out
    }

    /// A batch is done: its messages are deleted but those reported as failures, which
    /// come back when their visibility ends (as the event source mapping does).
    pub fn finish(&self, batch: &[InMessage], failures: &[String]) {
        let mut s = self.lock();
        for m in batch {
            if let Some((at, m)) = s.in_flight.remove(&m.receipt_handle) {
                if failures.contains(&m.message_id) {
                    s.later.push((at, m));
                }
            }
        }
    }

    /// Messages not yet deleted (visible, delayed or in flight).
    pub fn depth(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.later.len() + s.in_flight.len()
    }

    /// Messages sent to the dead-letter queue.
    pub fn dead_lettered(&self) -> u64 {
        self.lock().dead
    }
}

fn new_message(
    s: &mut QueueState,
    body: String,
    attributes: BTreeMap<String, String>,
) -> InMessage {
    s.next_id += 1;
    InMessage {
        message_id: format!("m{}", s.next_id),
        body,
        attributes,
        sent_timestamp_ms: Some(super::now_ms()),
        ..InMessage::default()
    }
}

impl WorkQueue for MemoryWork {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let at = super::now_ms() + timeout.as_millis().min(i64::MAX as u128) as i64;
        if let Some(e) = self.lock().in_flight.get_mut(receipt_handle) {
            e.0 = at;
        }
        Ok(())
    }

    async fn requeue(
        &self,
        body: &str,
        attributes: &[(String, String)],
        delay: Duration,
    ) -> Result<(), QueueError> {
        let at = super::now_ms() + delay.as_millis().min(i64::MAX as u128) as i64;
        let mut s = self.lock();
        let m = new_message(
            &mut s,
            body.to_string(),
            attributes.iter().cloned().collect(),
        );
        s.later.push((at, m));
        Ok(())
    }

    async fn dead_letter(
        &self,
        _body: &str,
        _attributes: &[(String, String)],
    ) -> Result<(), QueueError> {
        self.lock().dead += 1;
        Ok(())
    }
}

/// What one in-process case measured: the API's stats are read by the caller.
pub struct InProcessRun {
    pub readings: Vec<Reading>,
    pub drained: bool,
    pub dead_lettered: u64,
    pub elapsed_ms: i64,
}

/// Drain `args.messages` through `args.consumers` in-process consumers at `rate`.
pub async fn drain(
    args: &BenchConsumerArgs,
    case: Case,
    rate: u64,
    api: &ApiServer,
) -> Result<InProcessRun, BenchConsumerError> {
    let unexpected = |what: String| BenchConsumerError::Unexpected { case, what };
    let http = HttpApi::new(
        &api.url(),
        TOKEN,
        true,
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .map_err(|e| unexpected(format!("the API client: {e}")))?;
    let queue = MemoryWork::default();
    for i in 0..args.messages {
        let (body, attrs) =
            super::message(i).map_err(|e| unexpected(format!("building message {i}: {e}")))?;
        queue.send(
            body,
            attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        );
    }
    let ledger = MemoryLedger::new();
    let gate_table = MemoryGate::new();
    gate_table.set_round_trip(Duration::from_millis(args.table_ms));
    let settings = GateSettings {
        rate_per_sec: rate as f64,
        horizon: Duration::from_millis(args.rate_horizon_ms),
        ..GateSettings::default()
    };
    let consumers: Vec<_> = (0..args.consumers)
        .map(|_| {
            Arc::new(Consumer {
                ledger: Ledger {
                    table: ledger.clone(),
                    lease: Duration::from_secs(60),
                    wait: Duration::from_secs(2),
                },
                gate: Gate::new(gate_table.clone(), settings.clone()),
                api: http.clone(),
                queue: queue.clone(),
                settings: ConsumerSettings {
                    concurrency: args.record_concurrency as usize,
                    ..ConsumerSettings::default()
                },
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    let limit = Duration::from_secs(args.max_secs);
    let done = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in consumers {
        let (queue, done, batches) = (queue.clone(), done.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) && started.elapsed() < limit {
                let batch = queue.receive(10);
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let r = c.process_batch(batch.clone()).await;
                queue.finish(&batch, &r.failures);
                batches.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut readings = Vec::new();
    let drained = loop {
        readings.push(Reading {
            at_ms: super::now_ms(),
            calls: api.stats().requests,
            moto_requests: 0,
            moto_ticks: 0,
        });
        if queue.depth() == 0 {
            break true;
        }
        if started.elapsed() >= limit {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await
            .map_err(|e| unexpected(format!("a consumer task failed: {e}")))?;
    }
    eprintln!(
        "{case:?}: {} batches in process, feed {FEED}",
        batches.load(Ordering::Relaxed)
    );
    Ok(InProcessRun {
        readings,
        drained,
        dead_lettered: queue.dead_lettered(),
        elapsed_ms: started.elapsed().as_millis() as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[tokio::test]
    async fn the_memory_queue_deletes_a_batch_but_its_failures_and_delays_requeued_copies() {
        let q = MemoryWork::default();
        for i in 0..3 {
            q.send(format!("b{i}"), attrs());
        }
        let batch = q.receive(10);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].receive_count, 1);
        assert!(q.receive(10).is_empty(), "in flight: invisible");
        // the second failed: it comes back when its (changed) visibility ends
        q.change_visibility(&batch[1].receipt_handle, Duration::from_millis(50))
            .await
            .unwrap();
        q.requeue(
            "copy",
            &[("attempts".into(), "1".into())],
            Duration::from_millis(80),
        )
        .await
        .unwrap();
        q.finish(&batch, std::slice::from_ref(&batch[1].message_id));
        assert_eq!(q.depth(), 2);
        assert!(q.receive(10).is_empty());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let again = q.receive(10);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].body.as_str(), again[0].receive_count), ("b1", 2));
        tokio::time::sleep(Duration::from_millis(40)).await;
        let copy = q.receive(10);
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[0].body, "copy");
        assert_eq!(
            copy[0].attributes.get("attempts").map(String::as_str),
            Some("1")
        );
        q.finish(&again, &[]);
        q.finish(&copy, &[]);
        assert_eq!(q.depth(), 0);
        q.dead_letter("x", &[]).await.unwrap();
        assert_eq!(q.dead_lettered(), 1);
    }
}
