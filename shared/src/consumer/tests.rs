//! Tests of [`Consumer::process_batch`] and [`Consumer::backoff`] over in-memory ports: the
//! ledger on [`MemoryLedger`], a scripted fake API and a recording fake work queue. One test
//! per decision: the fate of each API answer, the dead letter's attributes, the circuit
//! breaker, credentials failures, backoff bounds, the ledger's versions (duplicates,
//! superseded messages) and leases, a failing dead-letter queue, and concurrency.

use crate::backoff::Backoff;
use crate::consumer::{
    BatchResult, BatchStats, Consumer, ConsumerSettings, Fate, Gate, GateSettings, InMessage,
    Ledger, Take, WorkQueue,
};
use crate::contract::envelope::Envelope;
use crate::ports::api::{Api, ApiAnswer};
use crate::ports::gate::{BreakerState, GateTable, MemoryGate};
use crate::ports::ledger::{LeaseItem, LedgerTable, MemoryLedger, RecordItem};
use crate::ports::queue::QueueError;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FEED: &str = "labs";
/// Row values carried in every envelope's fields: they must never reach a dead letter's
/// attributes.
const PATIENT: &str = "Jane Doe";
const PHONE: &str = "555-0100";
const FIFTEEN_MINUTES: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------------------
// messages
// ---------------------------------------------------------------------------------------

/// The envelope body of transition `ikey`: version `version` of `record`, with row values in
/// its fields.
fn body_of(ikey: &str, record: &str, version: u64) -> String {
    serde_json::json!({
        "v": 2,
        "feed": FEED,
        "run": format!("run-{version}"),
        "source": {"bucket": "exports", "key": "incoming/labs/export.csv", "etag": "e1"},
        "change": "new",
        "record_key": record,
        "version": version,
        "idempotency_key": ikey,
        "fields": {"patient_name": PATIENT, "phone": PHONE, "result": "positive"},
    })
    .to_string()
}

fn record_key(ikey: &str) -> String {
    format!("rec-{ikey}")
}

/// The message `id` carrying the envelope of `ikey`, first delivery, with the splitter's
/// message attributes.
fn msg(id: &str, ikey: &str) -> InMessage {
    msg_of(id, ikey, &record_key(ikey), 1)
}

/// The message `id` of transition `ikey`: version `version` of `record`.
fn msg_of(id: &str, ikey: &str, record: &str, version: u64) -> InMessage {
    let attributes: BTreeMap<String, String> = [
        ("feed", FEED.to_string()),
        ("change", "new".to_string()),
        ("idempotency_key", ikey.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    InMessage {
        message_id: id.to_string(),
        receipt_handle: receipt(id),
        body: body_of(ikey, record, version),
        receive_count: 1,
        attributes,
        sent_timestamp_ms: Some(now_ms()),
    }
}

fn receipt(id: &str) -> String {
    format!("rh-{id}")
}

/// Messages `m1..=mn` with keys `k1..=kn`.
fn msgs(n: usize) -> Vec<InMessage> {
    (1..=n)
        .map(|i| msg(&format!("m{i}"), &format!("k{i}")))
        .collect()
}

fn status(code: u16) -> ApiAnswer {
    ApiAnswer::Status {
        code,
        retry_after: None,
    }
}

// ---------------------------------------------------------------------------------------
// a scripted fake API
// ---------------------------------------------------------------------------------------

/// Answers per idempotency key (or record key), in order; the last answer of a script
/// repeats; unscripted keys get 201. Counts calls and the most calls in flight at once.
struct FakeApi {
    script: Mutex<HashMap<String, VecDeque<ApiAnswer>>>,
    latency: Duration,
    /// Idempotency keys, in call order.
    calls: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// `(record key, version)` of every call, in call order.
    record_calls: Mutex<Vec<(String, u64)>>,
    /// Calls in flight per record key.
    record_in_flight: Mutex<HashMap<String, usize>>,
    /// `(record key, version)` of every call answered 200/201, in answer order.
    record_applied: Mutex<Vec<(String, u64)>>,
    /// Calls that started while another call for the same record was in flight.
    record_overlaps: AtomicUsize,
    /// Idempotency keys whose call panics (a poison message).
    panic_on: Mutex<BTreeSet<String>>,
    /// Idempotency keys whose call never answers.
    hang_on: Mutex<BTreeSet<String>>,
    /// Whether the credentials have been rotated: a refresh then reports a new token and
    /// the keys answering 401 succeed.
    rotated: AtomicBool,
    /// `refresh_credentials` calls.
    refreshes: AtomicUsize,
}

impl FakeApi {
    fn new() -> Self {
        FakeApi {
            script: Mutex::new(HashMap::new()),
            latency: Duration::ZERO,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            record_calls: Mutex::new(Vec::new()),
            record_in_flight: Mutex::new(HashMap::new()),
            record_applied: Mutex::new(Vec::new()),
            record_overlaps: AtomicUsize::new(0),
            panic_on: Mutex::new(BTreeSet::new()),
            hang_on: Mutex::new(BTreeSet::new()),
            rotated: AtomicBool::new(false),
            refreshes: AtomicUsize::new(0),
        }
    }

    fn panicking_on(self, key: &str) -> Self {
        self.panic_on.lock().unwrap().insert(key.to_string());
        self
    }

    fn hanging_on(self, key: &str) -> Self {
        self.hang_on.lock().unwrap().insert(key.to_string());
        self
    }

    /// The versions called for `record`, in call order.
    fn versions_called(&self, record: &str) -> Vec<u64> {
        self.record_calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == record)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The versions of `record` the API applied (answered 200/201), in order.
    fn versions_applied(&self, record: &str) -> Vec<u64> {
        self.record_applied
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == record)
            .map(|(_, v)| *v)
            .collect()
    }

    fn record_overlaps(&self) -> usize {
        self.record_overlaps.load(Ordering::SeqCst)
    }

    /// `key` is an idempotency key or a record key.
    fn answering(self, key: &str, answers: impl IntoIterator<Item = ApiAnswer>) -> Self {
        self.script
            .lock()
            .unwrap()
            .insert(key.to_string(), answers.into_iter().collect());
        self
    }

    fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn next_answer(&self, env: &Envelope) -> ApiAnswer {
        let mut script = self.script.lock().unwrap();
        let key = if script.contains_key(&env.idempotency_key) {
            &env.idempotency_key
        } else {
            &env.record_key
        };
        let answers = script.get_mut(key);
        match answers {
            Some(a) if a.len() > 1 => a.pop_front().unwrap(),
            Some(a) if !a.is_empty() => a[0].clone(),
            _ => status(201),
        }
    }
}

impl Api for FakeApi {
    async fn refresh_credentials(&self) -> bool {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        self.rotated.load(Ordering::SeqCst)
    }

    async fn deliver(&self, env: &Envelope) -> ApiAnswer {
        self.calls.lock().unwrap().push(env.idempotency_key.clone());
        if self.panic_on.lock().unwrap().contains(&env.idempotency_key) {
            panic!("a poison message");
        }
        if self.hang_on.lock().unwrap().contains(&env.idempotency_key) {
            std::future::pending::<()>().await;
        }
        if self.rotated.load(Ordering::SeqCst)
            && self
                .calls()
                .iter()
                .filter(|k| **k == env.idempotency_key)
                .count()
                > 1
        {
            return status(201);
        }
        self.record_calls
            .lock()
            .unwrap()
            .push((env.record_key.clone(), env.version));
        {
            let mut per = self.record_in_flight.lock().unwrap();
            let n = per.entry(env.record_key.clone()).or_default();
            if *n > 0 {
                self.record_overlaps.fetch_add(1, Ordering::SeqCst);
            }
            *n += 1;
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let answer = self.next_answer(env);
        if matches!(
            answer,
            ApiAnswer::Status {
                code: 200 | 201,
                ..
            }
        ) {
            self.record_applied
                .lock()
                .unwrap()
                .push((env.record_key.clone(), env.version));
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(n) = self
            .record_in_flight
            .lock()
            .unwrap()
            .get_mut(&env.record_key)
        {
            *n -= 1;
        }
        answer
    }
}

// ---------------------------------------------------------------------------------------
// a recording fake work queue
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct DeadLetter {
    body: String,
    attrs: Vec<(String, String)>,
}

impl DeadLetter {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A copy put back on the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requeued {
    body: String,
    attrs: BTreeMap<String, String>,
    delay: Duration,
}

#[derive(Clone, Default)]
struct FakeQueue {
    /// `(receipt handle, timeout)` of every `change_visibility` call.
    visibility: Arc<Mutex<Vec<(String, Duration)>>>,
    /// Every accepted `requeue`.
    requeued: Arc<Mutex<Vec<Requeued>>>,
    fail_requeue: Arc<AtomicBool>,
    /// Dead letters accepted.
    dead: Arc<Mutex<Vec<DeadLetter>>>,
    /// Every `dead_letter` call, accepted or not.
    dead_letter_calls: Arc<AtomicUsize>,
    fail_dead_letter: Arc<AtomicBool>,
}

impl FakeQueue {
    fn visibility(&self) -> Vec<(String, Duration)> {
        self.visibility.lock().unwrap().clone()
    }
    fn requeued(&self) -> Vec<Requeued> {
        self.requeued.lock().unwrap().clone()
    }
    /// The requeued copies so far, as the messages SQS delivers next (fresh ids,
    /// received once), the list emptied.
    fn take_requeued(&self, round: usize) -> Vec<InMessage> {
        std::mem::take(&mut *self.requeued.lock().unwrap())
            .into_iter()
            .enumerate()
            .map(|(i, q)| InMessage {
                message_id: format!("copy-{round}-{i}"),
                receipt_handle: format!("rh-copy-{round}-{i}"),
                body: q.body,
                receive_count: 1,
                attributes: q.attrs,
                sent_timestamp_ms: Some(now_ms()),
            })
            .collect()
    }
    fn dead(&self) -> Vec<DeadLetter> {
        self.dead.lock().unwrap().clone()
    }
    fn dead_letter_calls(&self) -> usize {
        self.dead_letter_calls.load(Ordering::SeqCst)
    }
    fn fail_dead_letters(&self, fail: bool) {
        self.fail_dead_letter.store(fail, Ordering::SeqCst);
    }
}

impl WorkQueue for FakeQueue {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.visibility
            .lock()
            .unwrap()
            .push((receipt_handle.to_string(), timeout));
        Ok(())
    }

    async fn requeue(
        &self,
        body: &str,
        attributes: &[(String, String)],
        delay: Duration,
    ) -> Result<(), QueueError> {
        if self.fail_requeue.load(Ordering::SeqCst) {
            return Err(QueueError::Service {
                op: "SendMessage",
                message: "ServiceUnavailable: try again".into(),
                retryable: true,
            });
        }
        self.requeued.lock().unwrap().push(Requeued {
            body: body.to_string(),
            attrs: attributes.iter().cloned().collect(),
            delay,
        });
        Ok(())
    }

    async fn dead_letter(
        &self,
        body: &str,
        attributes: &[(String, String)],
    ) -> Result<(), QueueError> {
        self.dead_letter_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_dead_letter.load(Ordering::SeqCst) {
            return Err(QueueError::Service {
                op: "SendMessage",
                message: "ServiceUnavailable: try again".into(),
                retryable: true,
            });
        }
        self.dead.lock().unwrap().push(DeadLetter {
            body: body.to_string(),
            attrs: attributes.to_vec(),
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// the consumer under test
// ---------------------------------------------------------------------------------------

type TestConsumer = Consumer<MemoryLedger, MemoryGate, FakeApi, FakeQueue>;

/// The breaker's probe interval in these tests.
const PROBE: Duration = Duration::from_millis(200);

/// A gate that never holds a call back for its rate, opening after `threshold` failures.
fn gate_settings(threshold: u32) -> GateSettings {
    GateSettings {
        rate_per_sec: 100_000.0,
        threshold,
        probe_interval: PROBE,
        ramp: Duration::ZERO,
        ..GateSettings::default()
    }
}

/// Backoffs of milliseconds (1 ms doubling to 8 ms); the breaker opens at
/// `breaker_threshold`.
fn settings(concurrency: usize, breaker_threshold: u32) -> (ConsumerSettings, GateSettings) {
    (
        ConsumerSettings {
            concurrency,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(8)),
            ..ConsumerSettings::default()
        },
        gate_settings(breaker_threshold),
    )
}

fn consumer_with(api: FakeApi, (settings, gate): (ConsumerSettings, GateSettings)) -> TestConsumer {
    Consumer {
        ledger: Ledger {
            table: MemoryLedger::new(),
            lease: Duration::from_secs(60),
            // no waiting in process for a busy record (a test that wants it sets it)
            wait: Duration::ZERO,
        },
        gate: Gate::new(MemoryGate::new(), gate),
        api,
        queue: FakeQueue::default(),
        settings,
    }
}

/// One message at a time (deterministic order), breaker at 3.
fn consumer(api: FakeApi) -> TestConsumer {
    consumer_with(api, settings(1, 3))
}

fn fate<'a>(r: &'a BatchResult, id: &str) -> &'a Fate {
    let found: Vec<&Fate> = r
        .fates
        .iter()
        .filter(|(m, _)| m == id)
        .map(|(_, f)| f)
        .collect();
    assert_eq!(found.len(), 1, "exactly one fate for {id}: {:?}", r.fates);
    found[0]
}

/// The kind and delay of a Retry fate (panics on any other fate).
fn retry_of(r: &BatchResult, id: &str) -> (&'static str, Duration) {
    match fate(r, id) {
        Fate::Retry { delay, kind } => (kind, *delay),
        other => panic!("{id}: expected a retry, got {other:?}"),
    }
}

/// What the ledger holds for the record of `ikey` (see [`msg`]) and for the key itself.
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    /// The record's acknowledged version.
    acked: Option<u64>,
    /// Whether a lease is still on the record.
    leased: bool,
    /// The key's recorded fate and its detail.
    fate: Option<(&'static str, Option<String>)>,
}

async fn kept(c: &TestConsumer, ikey: &str) -> Kept {
    let rec = c
        .ledger
        .table
        .record(FEED, &record_key(ikey))
        .await
        .unwrap()
        .unwrap_or_default();
    let fate = c.ledger.table.fate(FEED, ikey).await.unwrap();
    Kept {
        acked: rec.acknowledged,
        leased: rec.lease.is_some(),
        fate: fate.map(|f| (f.fate, f.detail)),
    }
}

/// Version 1 acknowledged, the lease ended, the fate recorded with its detail.
fn done(fate: &'static str, detail: &str) -> Kept {
    Kept {
        acked: Some(1),
        leased: false,
        fate: Some((fate, Some(detail.to_string()))),
    }
}

/// The lease ended without an acknowledgement; no fate yet (the message is retried).
fn released() -> Kept {
    Kept {
        acked: None,
        leased: false,
        fate: None,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Every Retry fate but `record_busy` is requeued exactly once: its body, its attributes
/// plus one more attempt and its retry clock, its delay; none of those is a batch item
/// failure. A `record_busy` retry has exactly one `change_visibility` call with its receipt
/// handle and delay, and is reported in `failures`. No other message is either.
fn assert_retries_scheduled(c: &TestConsumer, r: &BatchResult, sent: &[InMessage]) {
    let by_id: HashMap<&str, &InMessage> =
        sent.iter().map(|m| (m.message_id.as_str(), m)).collect();
    let mut want_visibility: Vec<(String, Duration)> = Vec::new();
    let mut want_requeued: Vec<(String, Duration, String)> = Vec::new();
    let mut busy: BTreeSet<&str> = BTreeSet::new();
    for (id, f) in &r.fates {
        if let Fate::Retry { delay, kind } = f {
            assert!(*delay <= FIFTEEN_MINUTES, "{id}: {delay:?}");
            if *kind == "record_busy" {
                want_visibility.push((receipt(id), *delay));
                busy.insert(id.as_str());
            } else {
                let m = by_id[id.as_str()];
                want_requeued.push((
                    m.body.clone(),
                    *delay,
                    (m.earlier_attempts() + 1).to_string(),
                ));
            }
        }
    }
    let mut got_visibility = c.queue.visibility();
    want_visibility.sort();
    got_visibility.sort();
    assert_eq!(got_visibility, want_visibility, "change_visibility calls");
    let mut got_requeued: Vec<(String, Duration, String)> = c
        .queue
        .requeued()
        .into_iter()
        .map(|q| {
            let since: i64 = q.attrs["retry_since_ms"].parse().unwrap();
            assert!(since > 0 && since <= now_ms(), "{since}");
            assert_eq!(q.attrs["feed"], FEED, "the message's attributes are kept");
            (q.body, q.delay, q.attrs["attempts"].clone())
        })
        .collect();
    want_requeued.sort();
    got_requeued.sort();
    assert_eq!(got_requeued, want_requeued, "requeued copies");
    let failures: BTreeSet<&str> = r.failures.iter().map(String::as_str).collect();
    assert_eq!(failures, busy, "batch item failures");
    assert_eq!(r.failures.len(), busy.len(), "no failure reported twice");
}

fn assert_stats_add_up(r: &BatchResult, messages: usize) {
    let s = &r.stats;
    assert_eq!(
        (s.applied + s.duplicates + s.superseded + s.dead_lettered + s.retried + s.unfinished)
            as usize,
        messages,
        "{s:?}"
    );
    assert_eq!(r.fates.len(), messages);
}

// ---------------------------------------------------------------------------------------
// 1. the fate of each answer
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_200_or_201_is_applied_and_its_version_acknowledged_in_the_ledger() {
    let api = FakeApi::new()
        .answering("k1", [status(200)])
        .answering("k2", [status(201)]);
    let c = consumer(api);
    let r = c.process_batch(msgs(2)).await;

    assert_eq!(fate(&r, "m1"), &Fate::Applied);
    assert_eq!(fate(&r, "m2"), &Fate::Applied);
    assert_eq!(
        r.stats,
        BatchStats {
            applied: 2,
            ..BatchStats::default()
        }
    );
    assert!(r.failures.is_empty());
    assert_eq!(c.api.calls(), ["k1", "k2"]);
    assert_eq!(kept(&c, "k1").await, done("applied", "200"));
    assert_eq!(kept(&c, "k2").await, done("applied", "201"));
    assert!(c.queue.visibility().is_empty());
    assert_eq!(c.queue.dead_letter_calls(), 0);
}

#[tokio::test]
async fn a_409_is_a_duplicate_and_its_version_acknowledged_in_the_ledger() {
    let c = consumer(FakeApi::new().answering("k1", [status(409)]));
    let r = c.process_batch(msgs(1)).await;

    assert_eq!(fate(&r, "m1"), &Fate::Duplicate);
    assert_eq!(
        r.stats,
        BatchStats {
            duplicates: 1,
            ..BatchStats::default()
        }
    );
    assert!(r.failures.is_empty());
    assert_eq!(c.api.calls(), ["k1"]);
    assert_eq!(kept(&c, "k1").await, done("duplicate", "409"));
    assert!(c.queue.visibility().is_empty());
    assert_eq!(c.queue.dead_letter_calls(), 0);
}

#[tokio::test]
async fn a_permanent_4xx_is_dead_lettered_once_with_the_original_body_and_its_fate_recorded() {
    for code in [400u16, 404, 413, 422] {
        let c = consumer(FakeApi::new().answering("k1", [status(code)]));
        let m = msg("m1", "k1");
        let r = c.process_batch(vec![m.clone()]).await;

        assert_eq!(
            fate(&r, "m1"),
            &Fate::DeadLettered { class: "permanent" },
            "{code}"
        );
        assert_eq!(r.stats.dead_lettered, 1, "{code}");
        assert!(r.failures.is_empty(), "{code}: a dead letter is done");
        assert_eq!(c.api.calls(), ["k1"], "{code}");
        assert_eq!(c.queue.dead_letter_calls(), 1, "{code}");
        let dead = c.queue.dead();
        assert_eq!(dead[0].body, m.body, "{code}: the original body");
        assert_eq!(dead[0].attr("http_status"), Some(code.to_string().as_str()));
        assert_eq!(
            kept(&c, "k1").await,
            Kept {
                acked: None,
                leased: false,
                fate: Some(("dead_lettered", Some(format!("permanent {code}")))),
            },
            "{code}"
        );
        assert!(c.queue.visibility().is_empty(), "{code}");
    }
}

#[tokio::test]
async fn a_5xx_is_retried_with_its_backoff_and_the_lease_released() {
    let api = FakeApi::new()
        .answering("k1", [status(500)])
        .answering("k2", [status(503)]);
    // a breaker that does not open within this batch
    let c = consumer_with(api, settings(1, 100));
    let mut messages = msgs(2);
    messages[1].receive_count = 3;
    let sent = messages;
    let r = c.process_batch(sent.clone()).await;

    for (i, k) in ["k1", "k2"].iter().enumerate() {
        let id = format!("m{}", i + 1);
        let (got_kind, delay) = retry_of(&r, &id);
        assert_eq!(got_kind, "server_error", "{id}");
        let receive_count = if i == 1 { 3 } else { 1 };
        let (_, ceiling) = c.backoff(receive_count, None);
        assert!(delay <= ceiling, "{id}: {delay:?} > {ceiling:?}");
        assert_eq!(kept(&c, k).await, released(), "{id}");
    }
    assert_eq!(c.api.calls(), ["k1", "k2"]);
    assert_eq!(r.stats.retried, 2);
    assert!(!r.stats.circuit_opened);
    assert_eq!(c.queue.dead_letter_calls(), 0);
    assert_retries_scheduled(&c, &r, &sent);
}

#[tokio::test]
async fn an_unreachable_api_is_retried_with_its_backoff_and_the_lease_released() {
    // the request never left (refused, DNS, TLS): nothing can be in flight at the API, so
    // nothing holds the record, and the retry waits only its backoff
    let api = FakeApi::new().answering("k1", [ApiAnswer::Unreachable("connection refused".into())]);
    let c = consumer_with(api, settings(1, 100));
    let sent = msgs(1);
    let r = c.process_batch(sent.clone()).await;
    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "unreachable");
    let (_, ceiling) = c.backoff(1, None);
    assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
    assert!(ceiling < c.ledger.lease, "the test tells the two apart");
    assert_eq!(kept(&c, "k1").await, released());
    assert_retries_scheduled(&c, &r, &sent);
    // another message of the record is sent at once: the record is not busy
    let other = msg_of("m9", "k1-v2", &record_key("k1"), 2);
    let r2 = c.process_batch(vec![other]).await;
    assert_eq!(fate(&r2, "m9"), &Fate::Applied);
    assert_eq!(c.api.calls(), ["k1", "k1-v2"]);
}

#[tokio::test]
async fn a_timeout_or_broken_connection_keeps_the_records_lease_until_it_expires() {
    // the API may still be working on a request we gave up on: no other call for the
    // record may start before the lease runs out, and the retry comes no sooner
    let api = FakeApi::new()
        .answering("k1", [ApiAnswer::Timeout])
        .answering(
            "k2",
            [ApiAnswer::Connection("connection reset by peer".into())],
        );
    let c = consumer_with(api, settings(1, 100));
    let sent = msgs(2);
    let r = c.process_batch(sent.clone()).await;

    for (id, k, kind) in [("m1", "k1", "timeout"), ("m2", "k2", "connection")] {
        let (got_kind, delay) = retry_of(&r, id);
        assert_eq!(got_kind, kind, "{id}");
        assert!(
            delay >= c.ledger.lease,
            "{id}: {delay:?} is sooner than the lease"
        );
        let lease = lease_of(&c, &record_key(k)).await;
        assert_eq!(lease.owner, format!("{id}:1"), "{id}: the lease stays ours");
        assert!(lease.until_ms > now_ms(), "{id}");
    }
    assert_retries_scheduled(&c, &r, &sent);
    // another message of the same record finds it busy and is not sent
    let other = msg_of("m9", "k1-v2", &record_key("k1"), 2);
    let r2 = c.process_batch(vec![other]).await;
    assert_eq!(retry_of(&r2, "m9").0, "record_busy");
    assert_eq!(c.api.calls(), ["k1", "k2"]);
}

#[tokio::test]
async fn an_undecodable_body_is_dead_lettered_without_calling_the_api() {
    let c = consumer(FakeApi::new());
    let bodies = [
        "not json".to_string(),
        // a truncated envelope carrying a row value
        format!("{{\"v\":1,\"feed\":\"{FEED}\",\"fields\":{{\"patient_name\":\"{PATIENT}\""),
        // an envelope of a later version
        "{\"v\":2,\"feed\":\"labs\"}".to_string(),
        // valid JSON, the wrong shape
        format!("{{\"v\":1,\"feed\":{{\"name\":\"{PATIENT}\"}}}}"),
    ];
    let messages: Vec<InMessage> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| InMessage {
            body: b.clone(),
            ..msg(&format!("m{}", i + 1), &format!("k{}", i + 1))
        })
        .collect();
    let r = c.process_batch(messages).await;

    for i in 1..=bodies.len() {
        assert_eq!(
            fate(&r, &format!("m{i}")),
            &Fate::DeadLettered {
                class: "undecodable"
            }
        );
    }
    assert!(
        c.api.calls().is_empty(),
        "no API call for an undecodable body"
    );
    assert!(r.failures.is_empty());
    assert_eq!(r.stats.dead_lettered, bodies.len() as u32);
    let dead = c.queue.dead();
    assert_eq!(dead.len(), bodies.len());
    let got: BTreeSet<&str> = dead.iter().map(|d| d.body.as_str()).collect();
    let want: BTreeSet<&str> = bodies.iter().map(String::as_str).collect();
    assert_eq!(got, want, "the original bodies");
    for d in &dead {
        assert_eq!(d.attr("error_class"), Some("undecodable"));
        assert_eq!(d.attr("http_status"), None, "no status without a call");
        let reason = d.attr("reason").unwrap();
        assert!(!reason.is_empty());
        assert!(!reason.contains(PATIENT), "{reason}");
    }
    assert_eq!(
        c.ledger.table.calls(),
        Default::default(),
        "no ledger call for an undecodable body"
    );
}

#[tokio::test]
async fn a_302_is_retried_as_an_unexpected_status() {
    let c = consumer(FakeApi::new().answering("k1", [status(302)]));
    let sent = msgs(1);
    let r = c.process_batch(sent.clone()).await;

    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "unexpected_status");
    assert!(delay <= c.backoff(1, None).1);
    assert!(r.failures.is_empty(), "requeued, not a batch item failure");
    assert_eq!(c.queue.requeued().len(), 1);
    assert_eq!(c.api.calls(), ["k1"]);
    assert_eq!(c.queue.dead_letter_calls(), 0);
    assert_eq!(kept(&c, "k1").await, released());
    assert_retries_scheduled(&c, &r, &sent);
}

// ---------------------------------------------------------------------------------------
// 2. what a dead letter carries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dead_letter_carries_its_context_and_no_row_value() {
    let c = consumer(FakeApi::new().answering("k1", [status(422)]));
    let mut m = msg("m-4711", "k1");
    // three earlier attempts (requeued copies), this copy received twice
    m.attributes.insert("attempts".into(), "3".into());
    m.receive_count = 2;
    // attributes other than feed/change/idempotency_key are not copied
    m.attributes.insert("note".into(), PATIENT.into());
    let before = chrono::Utc::now();
    let r = c.process_batch(vec![m.clone()]).await;
    let after = chrono::Utc::now();

    assert_eq!(
        fate(&r, "m-4711"),
        &Fate::DeadLettered { class: "permanent" }
    );
    let dead = c.queue.dead();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.attr("feed"), Some(FEED));
    assert_eq!(d.attr("change"), Some("new"));
    assert_eq!(d.attr("idempotency_key"), Some("k1"));
    assert_eq!(d.attr("error_class"), Some("permanent"));
    assert_eq!(d.attr("http_status"), Some("422"));
    let reason = d.attr("reason").unwrap();
    assert_eq!(reason, "HTTP 422 Unprocessable Entity");
    assert!(reason.chars().count() <= 256);
    assert_eq!(d.attr("attempts"), Some("4"));
    assert_eq!(d.attr("source_message_id"), Some("m-4711"));
    let failed_at = chrono::DateTime::parse_from_rfc3339(d.attr("failed_at").unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        failed_at >= before - chrono::Duration::seconds(1)
            && failed_at <= after + chrono::Duration::seconds(1),
        "{failed_at} not in [{before}, {after}]"
    );

    let names: Vec<&str> = d.attrs.iter().map(|(n, _)| n.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "no attribute twice: {names:?}");
    assert!(
        names.len() <= 10,
        "SQS takes at most 10 attributes: {names:?}"
    );
    assert!(!names.contains(&"note"), "{names:?}");
    for (name, value) in &d.attrs {
        for row_value in [PATIENT, PHONE, "positive"] {
            assert!(
                !value.contains(row_value),
                "attribute {name} carries a row value: {value}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. the circuit breaker
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn consecutive_transient_failures_open_the_circuit_for_the_rest_of_the_batch() {
    let api = FakeApi::new()
        .answering("k1", [status(503)])
        .answering("k2", [ApiAnswer::Timeout])
        .answering("k3", [ApiAnswer::Unreachable("refused".into())]);
    let c = consumer(api); // threshold 3, one at a time
    let sent = msgs(6);
    let r = c.process_batch(sent.clone()).await;

    assert_eq!(c.api.calls(), ["k1", "k2", "k3"], "no call once open");
    assert_eq!(retry_of(&r, "m1").0, "server_error");
    assert_eq!(retry_of(&r, "m2").0, "timeout");
    assert_eq!(retry_of(&r, "m3").0, "unreachable");
    for i in 4..=6 {
        let (kind, delay) = retry_of(&r, &format!("m{i}"));
        assert_eq!(kind, "circuit_open");
        assert!(delay <= PROBE, "no later than the next probe: {delay:?}");
        assert_eq!(
            c.ledger
                .table
                .record(FEED, &record_key(&format!("k{i}")))
                .await
                .unwrap(),
            None,
            "the ledger is not touched while open"
        );
    }
    assert!(r.stats.circuit_opened);
    assert_eq!(r.stats.retried, 6);
    assert_retries_scheduled(&c, &r, &sent);
    let item = c.gate.table.read().await.unwrap().unwrap();
    assert_eq!(item.state, BreakerState::Open);

    // the breaker is the fleet's: the next batch (another consumer's, sharing the table)
    // does not call the API before the probe is due …
    let other = Consumer {
        ledger: c.ledger.clone(),
        gate: Gate::new(c.gate.table.clone(), c.gate.settings.clone()),
        api: FakeApi::new(),
        queue: FakeQueue::default(),
        settings: c.settings.clone(),
    };
    let r2 = other.process_batch(vec![msg("m7", "k7")]).await;
    assert_eq!(retry_of(&r2, "m7").0, "circuit_open");
    assert!(other.api.calls().is_empty());
    // … then one probe, whose success closes it for everyone
    tokio::time::sleep(PROBE + Duration::from_millis(20)).await;
    let r3 = other
        .process_batch(vec![msg("m8", "k8"), msg("m9", "k9")])
        .await;
    assert_eq!(fate(&r3, "m8"), &Fate::Applied);
    assert_eq!(fate(&r3, "m9"), &Fate::Applied);
    assert_eq!(
        c.gate.table.read().await.unwrap().unwrap().state,
        BreakerState::Closed
    );
    assert!(!r3.stats.circuit_opened);
}

#[tokio::test]
async fn a_success_between_transient_failures_resets_the_breaker() {
    let api = FakeApi::new()
        .answering("k1", [status(503)])
        .answering("k2", [status(201)])
        .answering("k3", [status(503)])
        .answering("k4", [status(409)])
        .answering("k5", [status(503)])
        .answering("k6", [status(503)]);
    let c = consumer_with(api, settings(1, 2));
    let r = c.process_batch(msgs(7)).await;

    // 503, 201, 503, 409, 503 never make two in a row; 503, 503 (k5, k6) do
    assert_eq!(c.api.calls(), ["k1", "k2", "k3", "k4", "k5", "k6"]);
    assert_eq!(fate(&r, "m2"), &Fate::Applied);
    assert_eq!(fate(&r, "m4"), &Fate::Duplicate);
    for id in ["m1", "m3", "m5", "m6"] {
        assert_eq!(retry_of(&r, id).0, "server_error", "{id}");
    }
    assert_eq!(retry_of(&r, "m7").0, "circuit_open");
    assert!(r.stats.circuit_opened);
}

#[tokio::test]
async fn unexpected_statuses_do_not_trip_the_breaker() {
    let mut api = FakeApi::new();
    for i in 1..=5 {
        api = api.answering(&format!("k{i}"), [status(302)]);
    }
    let c = consumer_with(api, settings(1, 2));
    let r = c.process_batch(msgs(5)).await;

    assert_eq!(c.api.calls().len(), 5, "every message is tried");
    for i in 1..=5 {
        assert_eq!(retry_of(&r, &format!("m{i}")).0, "unexpected_status");
    }
    assert!(!r.stats.circuit_opened);
}

// ---------------------------------------------------------------------------------------
// 4. credentials
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_401_or_403_is_retried_as_auth_and_counted() {
    let api = FakeApi::new()
        .answering("k1", [status(401)])
        .answering("k2", [status(403)]);
    let c = consumer_with(api, settings(1, 100));
    let sent = msgs(3);
    let r = c.process_batch(sent.clone()).await;

    assert_eq!(retry_of(&r, "m1").0, "auth");
    assert_eq!(retry_of(&r, "m2").0, "auth");
    assert_eq!(fate(&r, "m3"), &Fate::Applied);
    assert_eq!(r.stats.auth_failures, 2);
    assert_eq!(r.stats.retried, 2);
    assert_eq!(kept(&c, "k1").await, released());
    assert_eq!(
        c.queue.dead_letter_calls(),
        0,
        "credentials are not the row's fault"
    );
    assert_retries_scheduled(&c, &r, &sent);
}

#[tokio::test]
async fn auth_failures_trip_the_breaker() {
    let api = FakeApi::new()
        .answering("k1", [status(401)])
        .answering("k2", [status(403)]);
    let c = consumer_with(api, settings(1, 2));
    let r = c.process_batch(msgs(3)).await;

    assert_eq!(c.api.calls(), ["k1", "k2"]);
    assert_eq!(retry_of(&r, "m3").0, "circuit_open");
    assert!(r.stats.circuit_opened);
    assert_eq!(r.stats.auth_failures, 2);
}

// ---------------------------------------------------------------------------------------
// 5. backoff bounds
// ---------------------------------------------------------------------------------------

/// The production default: 5 s doubling to 900 s.
fn default_backoff_consumer() -> TestConsumer {
    consumer_with(
        FakeApi::new(),
        (ConsumerSettings::default(), gate_settings(3)),
    )
}

#[tokio::test]
async fn the_backoff_ceiling_grows_then_caps_and_bounds_the_delay() {
    let c = default_backoff_consumer();
    let secs = |n: u32| c.backoff(n, None).1.as_secs();
    assert_eq!(secs(0), 5, "an attempt of 0 counts as the first");
    assert_eq!(secs(1), 5);
    assert_eq!(secs(2), 10);
    assert_eq!(secs(3), 20);
    assert_eq!(secs(8), 640);
    assert_eq!(secs(9), 900, "capped");
    assert_eq!(secs(1000), 900);
    assert_eq!(secs(u32::MAX), 900);
    for n in [0, 1, 2, 5, 9, 40, u32::MAX] {
        for _ in 0..200 {
            let (delay, ceiling) = c.backoff(n, None);
            assert!(delay <= ceiling, "{n}: {delay:?} > {ceiling:?}");
        }
    }
}

#[tokio::test]
async fn the_backoff_is_never_sooner_than_retry_after_nor_beyond_sqs_longest_delay() {
    let c = default_backoff_consumer();
    for n in [1, 3, 9, u32::MAX] {
        for retry_after in [7, 600, 899, 900, 901, 43_200, 10_000_000] {
            let ra = Duration::from_secs(retry_after);
            for _ in 0..50 {
                let (delay, ceiling) = c.backoff(n, Some(ra));
                assert!(delay >= ra.min(FIFTEEN_MINUTES), "{n} {ra:?}: {delay:?}");
                assert!(delay <= FIFTEEN_MINUTES, "{n} {ra:?}: {delay:?}");
                assert!(delay <= ceiling.max(ra), "{n} {ra:?}: {delay:?}");
            }
        }
    }
    assert_eq!(
        c.backoff(1, Some(Duration::from_secs(u64::MAX))).0,
        FIFTEEN_MINUTES
    );

    // a cap beyond SQS's 15 minutes: the delay still stays within them
    let long = consumer_with(
        FakeApi::new(),
        (
            ConsumerSettings {
                backoff: Backoff::new(Duration::from_secs(3600), Duration::from_secs(200_000)),
                ..ConsumerSettings::default()
            },
            gate_settings(3),
        ),
    );
    let mut beyond = 0;
    for _ in 0..200 {
        let (delay, ceiling) = long.backoff(u32::MAX, None);
        assert_eq!(ceiling, Duration::from_secs(200_000));
        assert!(delay <= FIFTEEN_MINUTES, "{delay:?}");
        if delay == FIFTEEN_MINUTES {
            beyond += 1;
        }
    }
    // most jitter draws land beyond 15 min and are clamped to it
    assert!(beyond > 0);
}

/// `Backoff::delay` with a ceiling saturated at `u64::MAX` ns (an unbounded cap) neither
/// overflows nor panics, and the delay stays within SQS's limit.
#[tokio::test]
async fn a_backoff_with_an_unbounded_cap_stays_within_sqs_limit_without_panicking() {
    let c = consumer_with(
        FakeApi::new(),
        (
            ConsumerSettings {
                backoff: Backoff::new(Duration::from_secs(5), Duration::MAX),
                ..ConsumerSettings::default()
            },
            gate_settings(3),
        ),
    );
    let (delay, _) = c.backoff(40, None);
    assert!(delay <= FIFTEEN_MINUTES, "{delay:?}");
}

#[tokio::test]
async fn a_429_pauses_every_message_for_its_retry_after_and_neither_is_a_failure() {
    let answer = ApiAnswer::Status {
        code: 429,
        retry_after: Some("7".into()),
    };
    let c = consumer(FakeApi::new().answering("k1", [answer]));
    let sent = msgs(2);
    let r = c.process_batch(sent.clone()).await;

    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "rate_limited");
    assert!(delay >= Duration::from_secs(7), "{delay:?}");
    assert_eq!(kept(&c, "k1").await, released());
    // the pause holds back the next message too (fleet-wide): not called, requeued no
    // sooner than the pause ends
    let (kind, delay) = retry_of(&r, "m2");
    assert_eq!(kind, "rate_paused");
    assert!(delay >= Duration::from_secs(6), "{delay:?}");
    assert_eq!(c.api.calls(), ["k1"]);
    assert_eq!(kept(&c, "k2").await, released());
    let item = c.gate.table.read().await.unwrap().unwrap();
    assert!(item.paused_until_ms >= now_ms() + 6_000);
    assert_retries_scheduled(&c, &r, &sent);
}

// ---------------------------------------------------------------------------------------
// 6. the ledger: versions and leases
// ---------------------------------------------------------------------------------------

/// Record `record`'s acknowledged version as `acked`, as an earlier delivery left it.
fn acknowledged(c: &TestConsumer, record: &str, acked: u64) {
    c.ledger.table.put_record(
        FEED,
        record,
        RecordItem {
            acknowledged: Some(acked),
            acknowledged_key: Some(format!("k-v{acked}")),
            acknowledged_run: Some(format!("run-{acked}")),
            lease: None,
        },
    );
}

#[tokio::test]
async fn a_version_already_acknowledged_is_a_duplicate_without_an_api_call() {
    let c = consumer(FakeApi::new());
    acknowledged(&c, &record_key("k1"), 1);
    let r = c.process_batch(msgs(1)).await;

    assert_eq!(fate(&r, "m1"), &Fate::Duplicate);
    assert_eq!(r.stats.duplicates, 1);
    assert!(c.api.calls().is_empty());
    assert!(r.failures.is_empty());
    assert!(c.queue.visibility().is_empty());
    assert_eq!(c.queue.dead_letter_calls(), 0);
    let rec = c
        .ledger
        .table
        .record(FEED, &record_key("k1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.acknowledged_key.as_deref(),
        Some("k-v1"),
        "left as it was"
    );
}

#[tokio::test]
async fn a_version_below_the_acknowledged_one_is_superseded_recorded_and_never_sent() {
    let c = consumer(FakeApi::new());
    acknowledged(&c, "r1", 3);
    let r = c
        .process_batch(vec![
            msg_of("m1", "k-v1", "r1", 1),
            msg_of("m2", "k-v2", "r1", 2),
            msg_of("m4", "k-v4", "r1", 4),
        ])
        .await;

    assert_eq!(fate(&r, "m1"), &Fate::Superseded);
    assert_eq!(fate(&r, "m2"), &Fate::Superseded);
    assert_eq!(fate(&r, "m4"), &Fate::Applied);
    assert_eq!(r.stats.superseded, 2);
    assert_eq!(
        c.api.versions_called("r1"),
        [4],
        "only the newer version is sent"
    );
    assert!(r.failures.is_empty(), "a superseded message is done");
    let f = c.ledger.table.fate(FEED, "k-v1").await.unwrap().unwrap();
    assert_eq!(
        (f.fate, f.version, f.run.as_str(), f.detail.as_deref()),
        ("superseded", 1, "run-1", Some("acknowledged 3"))
    );
    let rec = c.ledger.table.record(FEED, "r1").await.unwrap().unwrap();
    assert_eq!(rec.acknowledged, Some(4));
    assert_eq!(rec.acknowledged_key.as_deref(), Some("k-v4"));
    assert_eq!(rec.acknowledged_run.as_deref(), Some("run-4"));
}

async fn lease_of(c: &TestConsumer, record: &str) -> LeaseItem {
    c.ledger
        .table
        .record(FEED, record)
        .await
        .unwrap()
        .unwrap()
        .lease
        .unwrap()
}

#[tokio::test]
async fn a_record_leased_by_another_attempt_is_retried_after_its_lease_without_an_api_call() {
    let c = consumer(FakeApi::new());
    let Take::Owned(_) = c
        .ledger
        .take(FEED, &record_key("k1"), 2, "other:1")
        .await
        .unwrap()
    else {
        panic!("a fresh record is ours")
    };
    let lease = lease_of(&c, &record_key("k1")).await;
    let remaining_before = lease.until_ms - now_ms();
    let sent = msgs(1);
    let r = c.process_batch(sent.clone()).await;
    let remaining_after = lease.until_ms - now_ms();

    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "record_busy");
    let delay_ms = delay.as_millis() as i64;
    assert!(
        delay_ms <= remaining_before,
        "{delay_ms} ms > lease remaining {remaining_before} ms"
    );
    assert!(
        delay_ms >= remaining_after - 1,
        "{delay_ms} ms: sooner than the lease expires ({remaining_after} ms)"
    );
    assert!(c.api.calls().is_empty());
    let held = lease_of(&c, &record_key("k1")).await;
    assert_eq!(
        (held.owner.as_str(), held.version),
        ("other:1", 2),
        "the holder keeps its lease"
    );
    assert_retries_scheduled(&c, &r, &sent);
}

#[tokio::test]
async fn a_message_waits_in_process_for_a_short_lease_instead_of_using_a_receive() {
    let mut c = consumer(FakeApi::new());
    c.ledger.wait = Duration::from_secs(5);
    c.ledger.table.put_record(
        FEED,
        &record_key("k1"),
        RecordItem {
            lease: Some(LeaseItem {
                owner: "other:1".into(),
                version: 1,
                until_ms: now_ms() + 150,
            }),
            ..RecordItem::default()
        },
    );
    let r = c.process_batch(msgs(1)).await;

    assert_eq!(
        fate(&r, "m1"),
        &Fate::Applied,
        "taken once the lease ran out"
    );
    assert!(r.failures.is_empty());
    assert!(c.queue.visibility().is_empty(), "no receive was used up");
}

#[tokio::test]
async fn an_expired_lease_of_a_crashed_attempt_is_taken_over_and_the_call_made() {
    let c = consumer(FakeApi::new());
    c.ledger.table.put_record(
        FEED,
        &record_key("k1"),
        RecordItem {
            lease: Some(LeaseItem {
                owner: "crashed:1".into(),
                version: 1,
                until_ms: now_ms() - 1,
            }),
            ..RecordItem::default()
        },
    );
    let r = c.process_batch(msgs(1)).await;

    assert_eq!(fate(&r, "m1"), &Fate::Applied);
    assert_eq!(c.api.calls(), ["k1"]);
    assert_eq!(kept(&c, "k1").await, done("applied", "201"));
}

#[tokio::test]
async fn a_released_record_is_taken_by_the_next_delivery_and_applied_once() {
    let c = consumer(FakeApi::new().answering("k1", [status(503), status(201), status(201)]));
    let r1 = c.process_batch(msgs(1)).await;
    assert_eq!(retry_of(&r1, "m1").0, "server_error");
    assert_eq!(kept(&c, "k1").await, released());

    // the requeued copy, the message's second attempt
    let mut again = c.queue.take_requeued(1).remove(0);
    assert_eq!(again.attributes["attempts"], "1");
    assert_eq!(again.body, msg("m1", "k1").body);
    let r2 = c.process_batch(vec![again.clone()]).await;
    assert_eq!(fate(&r2, &again.message_id), &Fate::Applied);
    let f = c.ledger.table.fate(FEED, "k1").await.unwrap().unwrap();
    assert_eq!((f.fate, f.attempts), ("applied", 2));

    // a second delivery of the copy (e.g. SQS at-least-once) is a duplicate, without a call
    again.receive_count = 2;
    let r3 = c.process_batch(vec![again.clone()]).await;
    assert_eq!(fate(&r3, &again.message_id), &Fate::Duplicate);
    assert_eq!(c.api.calls(), ["k1", "k1"]);
}

#[tokio::test]
async fn the_same_transition_twice_in_a_batch_is_applied_once() {
    let c = consumer(FakeApi::new());
    let r = c
        .process_batch(vec![msg("m1", "k1"), msg("m2", "k1")])
        .await;

    assert_eq!(c.api.calls(), ["k1"]);
    let fates: BTreeSet<String> = r.fates.iter().map(|(_, f)| format!("{f:?}")).collect();
    assert_eq!(
        fates,
        BTreeSet::from(["Applied".to_string(), "Duplicate".to_string()])
    );
}

#[tokio::test]
async fn versions_of_one_record_in_one_batch_never_overlap_and_the_newest_stands() {
    let api = FakeApi::new().with_latency(Duration::from_millis(20));
    let mut c = consumer_with(api, settings(4, 100));
    c.ledger.wait = Duration::from_secs(5);
    let mut batch = vec![
        msg_of("a1", "ka1", "A", 1),
        msg_of("a3", "ka3", "A", 3),
        msg_of("a2", "ka2", "A", 2),
    ];
    batch.extend(msgs(5));
    let r = c.process_batch(batch).await;

    assert_eq!(c.api.record_overlaps(), 0, "one call per record at a time");
    let called = c.api.versions_called("A");
    assert!(
        called.windows(2).all(|w| w[0] < w[1]),
        "versions called in increasing order: {called:?}"
    );
    assert_eq!(called.last(), Some(&3), "the newest version is applied");
    let rec = c.ledger.table.record(FEED, "A").await.unwrap().unwrap();
    assert_eq!(rec.acknowledged, Some(3));
    assert_stats_add_up(&r, 8);
    assert!(r.failures.is_empty(), "nobody waited out a receive");
}

#[tokio::test]
async fn under_transient_faults_and_shuffled_redeliveries_a_record_never_goes_backwards() {
    // 40 records, three versions each, delivered in a shuffled order with 30% of calls
    // failing (503), redelivered until every message has a final fate
    let mut api = FakeApi::new();
    let mut pending: Vec<InMessage> = Vec::new();
    for r in 0..40 {
        for v in 1..=3u64 {
            let ikey = format!("k{r}-v{v}");
            // a deterministic 30%: every third-ish transition fails twice, then succeeds
            if (r * 3 + v as usize) % 10 < 3 {
                api = api.answering(&ikey, [status(503), status(503), status(201)]);
            }
            pending.push(msg_of(&format!("m{r}-{v}"), &ikey, &format!("R{r}"), v));
        }
    }
    let mut c = consumer_with(
        api.with_latency(Duration::from_millis(1)),
        settings(6, 1000),
    );
    c.ledger.wait = Duration::from_secs(5);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds < 50, "every message reaches a final fate");
        // a cheap deterministic shuffle
        for i in (1..pending.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            pending.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let r = c.process_batch(std::mem::take(&mut pending)).await;
        let retried: BTreeSet<String> = r.failures.iter().cloned().collect();
        let copies = c.queue.take_requeued(rounds as usize);
        for (id, f) in &r.fates {
            assert!(!matches!(f, Fate::DeadLettered { .. }), "{id}: {f:?}");
        }
        // the retried ones come back, received once more
        let all: Vec<InMessage> = (0..40)
            .flat_map(|r| (1..=3u64).map(move |v| (r, v)))
            .map(|(r, v)| {
                msg_of(
                    &format!("m{r}-{v}"),
                    &format!("k{r}-v{v}"),
                    &format!("R{r}"),
                    v,
                )
            })
            .collect();
        pending = all
            .into_iter()
            .filter(|m| retried.contains(&m.message_id))
            .map(|mut m| {
                m.receive_count = rounds + 1;
                m
            })
            .chain(copies)
            .collect();
    }
    assert_eq!(
        c.api.record_overlaps(),
        0,
        "no two calls for one record overlap"
    );
    for r in 0..40 {
        let rec = format!("R{r}");
        let applied = c.api.versions_applied(&rec);
        assert!(
            applied.windows(2).all(|w| w[0] < w[1]),
            "{rec}: the applied versions {applied:?} go backwards"
        );
        assert_eq!(applied.last(), Some(&3), "{rec}: {applied:?}");
        let acked = c.ledger.table.record(FEED, &rec).await.unwrap().unwrap();
        assert_eq!(
            acked.acknowledged,
            Some(3),
            "{rec}: the newest version stands"
        );
        assert_eq!(acked.lease, None, "{rec}: no lease left behind");
    }
}

#[tokio::test]
async fn a_failing_ledger_is_retried_without_an_api_call() {
    let c = consumer(FakeApi::new());
    c.ledger.table.set_failing(true);
    let sent = msgs(2);
    let r = c.process_batch(sent.clone()).await;

    assert_eq!(retry_of(&r, "m1").0, "ledger");
    assert_eq!(retry_of(&r, "m2").0, "ledger");
    assert!(c.api.calls().is_empty());
    assert!(!r.stats.circuit_opened);
    assert_retries_scheduled(&c, &r, &sent);
    c.ledger.table.set_failing(false);
    let r = c.process_batch(msgs(2)).await;
    assert_eq!(r.stats.applied, 2);
}

// ---------------------------------------------------------------------------------------
// 7. a failing dead-letter queue
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dead_letter_that_fails_is_retried_so_the_message_is_not_lost() {
    let c = consumer(FakeApi::new().answering("k1", [status(422)]));
    c.queue.fail_dead_letters(true);
    let undecodable = InMessage {
        body: "not json".into(),
        ..msg("m2", "k2")
    };
    let sent = vec![msg("m1", "k1"), undecodable];
    let r = c.process_batch(sent.clone()).await;

    for id in ["m1", "m2"] {
        let (kind, delay) = retry_of(&r, id);
        assert_eq!(kind, "dead_letter_failed", "{id}");
        assert!(delay <= c.backoff(1, None).1);
    }
    assert_eq!(r.stats.retried, 2);
    assert_eq!(r.stats.dead_lettered, 0);
    assert_eq!(c.queue.dead_letter_calls(), 2);
    assert!(c.queue.dead().is_empty());
    assert_retries_scheduled(&c, &r, &sent);
    assert_eq!(
        kept(&c, "k1").await,
        released(),
        "not dead-lettered yet: no fate recorded"
    );

    // the requeued copy takes the record again and dead-letters it
    c.queue.fail_dead_letters(false);
    let again = c
        .queue
        .take_requeued(1)
        .into_iter()
        .find(|m| m.body == msg("m1", "k1").body)
        .unwrap();
    let r2 = c.process_batch(vec![again.clone()]).await;
    assert_eq!(
        fate(&r2, &again.message_id),
        &Fate::DeadLettered { class: "permanent" }
    );
    assert_eq!(c.queue.dead()[0].body, again.body);
    assert_eq!(c.queue.dead()[0].attr("attempts"), Some("2"));
}

// ---------------------------------------------------------------------------------------
// 8. concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn at_most_concurrency_calls_are_in_flight_and_every_message_is_applied() {
    let api = FakeApi::new().with_latency(Duration::from_millis(20));
    let c = consumer_with(api, settings(3, 3));
    let r = c.process_batch(msgs(12)).await;

    assert_eq!(c.api.max_in_flight(), 3, "at most 3 in flight (and 3 used)");
    assert_eq!(r.stats.applied, 12);
    assert_stats_add_up(&r, 12);
    assert!(r.fates.iter().all(|(_, f)| f == &Fate::Applied));
    let called: BTreeSet<String> = c.api.calls().into_iter().collect();
    assert_eq!(called.len(), 12, "each message called once");
    assert_eq!(c.api.calls().len(), 12);
    for i in 1..=12 {
        assert_eq!(kept(&c, &format!("k{i}")).await, done("applied", "201"));
    }
    assert!(r.failures.is_empty());
}

#[tokio::test]
async fn a_mixed_batch_at_concurrency_three_adds_up() {
    let mut api = FakeApi::new().with_latency(Duration::from_millis(5));
    for i in 1..=12 {
        let answer = match i % 4 {
            0 => status(201),
            1 => status(409),
            2 => status(422),
            _ => status(503),
        };
        api = api.answering(&record_key(&format!("k{i}")), [answer]);
    }
    let c = consumer_with(api, settings(3, 100));
    let sent = msgs(12);
    let r = c.process_batch(sent.clone()).await;

    assert!(c.api.max_in_flight() <= 3);
    assert_eq!(
        r.stats,
        BatchStats {
            applied: 3,
            duplicates: 3,
            superseded: 0,
            dead_lettered: 3,
            retried: 3,
            unfinished: 0,
            auth_failures: 0,
            circuit_opened: false,
        }
    );
    assert_stats_add_up(&r, 12);
    let retried: BTreeSet<&str> = r
        .fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Retry { .. }))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(retried, BTreeSet::from(["m3", "m7", "m11"]));
    assert!(
        r.failures.is_empty(),
        "requeued, not failed: {:?}",
        r.failures
    );
    assert_eq!(c.queue.dead().len(), 3);
    assert_retries_scheduled(&c, &r, &sent);
}

// ---------------------------------------------------------------------------------------
// 9. riding out outages: the retry window, requeued copies, poison messages, credentials
// ---------------------------------------------------------------------------------------

/// `m`, its retries started `secs` ago, `earlier` attempts made.
fn aged_msg(id: &str, ikey: &str, secs: i64, earlier: u32) -> InMessage {
    let mut m = msg(id, ikey);
    m.attributes.insert(
        "retry_since_ms".into(),
        (now_ms() - secs * 1000).to_string(),
    );
    m.attributes.insert("attempts".into(), earlier.to_string());
    m
}

#[tokio::test]
async fn a_transient_failure_past_the_retry_window_is_dead_lettered_with_attempts_and_age() {
    let api = FakeApi::new()
        .answering("k1", [status(503)])
        .answering("k2", [status(503)]);
    let (mut cs, gs) = settings(1, 100);
    cs.retry_window = Duration::from_secs(60);
    let c = consumer_with(api, (cs, gs));
    // k1 has been retried for 61 s (over the window), k2 for 59 s (not yet)
    let sent = vec![aged_msg("m1", "k1", 61, 40), aged_msg("m2", "k2", 59, 39)];
    let r = c.process_batch(sent.clone()).await;

    assert_eq!(
        fate(&r, "m1"),
        &Fate::DeadLettered {
            class: "retry_window"
        }
    );
    let d = &c.queue.dead()[0];
    assert_eq!(d.attr("error_class"), Some("retry_window"));
    assert_eq!(d.attr("attempts"), Some("41"));
    let age: i64 = d.attr("age_ms").unwrap().parse().unwrap();
    assert!((61_000..70_000).contains(&age), "{age}");
    let reason = d.attr("reason").unwrap();
    assert!(reason.starts_with("retry window exceeded"), "{reason}");
    assert!(reason.contains("HTTP 503"), "{reason}");
    assert!(!reason.contains(PATIENT) && !reason.contains(PHONE));
    assert_eq!(
        kept(&c, "k1").await.fate,
        Some(("dead_lettered", Some("retry window exceeded".into())))
    );
    // within the window: requeued, its attempts counted on
    assert_eq!(retry_of(&r, "m2").0, "server_error");
    let copy = &c.queue.requeued()[0];
    assert_eq!(copy.attrs["attempts"], "40");
    assert_eq!(
        copy.attrs["retry_since_ms"],
        sent[1].attributes["retry_since_ms"]
    );
    assert!(r.failures.is_empty());
}

/// SQS delivers at least once: two copies of one message's lineage (the same retry clock)
/// can both outlast the window. One dead letter, in either batch order; a replay (a new
/// lineage) that outlasts the window again is dead-lettered again.
#[tokio::test]
async fn two_copies_of_a_lineage_past_the_window_leave_one_dead_letter_and_a_replay_another() {
    let api = FakeApi::new().answering("k1", [status(503)]);
    let (mut cs, gs) = settings(1, 100);
    cs.retry_window = Duration::from_secs(60);
    let c = consumer_with(api, (cs, gs));
    let first = aged_msg("m1", "k1", 61, 7);
    let mut twin = first.clone();
    twin.message_id = "m1-twin".into();
    twin.receipt_handle = receipt("m1-twin");
    let r = c.process_batch(vec![first.clone()]).await;
    assert_eq!(
        fate(&r, "m1"),
        &Fate::DeadLettered {
            class: "retry_window"
        }
    );
    let r = c.process_batch(vec![twin]).await;
    assert_eq!(fate(&r, "m1-twin"), &Fate::Duplicate);
    assert_eq!(c.queue.dead().len(), 1);
    assert_eq!(c.queue.dead_letter_calls(), 1);
    assert!(r.failures.is_empty());
    // the record's lease was released both times
    assert!(!kept(&c, "k1").await.leased);
    // an operator's replay: a new message, its retry clock started 61 s ago again
    let mut replayed = aged_msg("m2", "k1", 61, 0);
    replayed
        .attributes
        .insert("retry_since_ms".into(), (now_ms() - 61_500).to_string());
    let r = c.process_batch(vec![replayed]).await;
    assert_eq!(
        fate(&r, "m2"),
        &Fate::DeadLettered {
            class: "retry_window"
        }
    );
    assert_eq!(c.queue.dead().len(), 2);
}

#[tokio::test]
async fn the_envelopes_retry_window_wins_over_the_consumers_default() {
    let c = consumer_with(
        FakeApi::new().answering("k1", [status(503)]),
        settings(1, 100),
    );
    // the consumer's default is a day; the feed's window, in the envelope, is 30 s
    let mut m = aged_msg("m1", "k1", 31, 5);
    let mut body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
    body["retry_window_secs"] = serde_json::json!(30);
    m.body = body.to_string();
    let r = c.process_batch(vec![m]).await;
    assert_eq!(
        fate(&r, "m1"),
        &Fate::DeadLettered {
            class: "retry_window"
        }
    );
}

#[tokio::test]
async fn a_requeued_copy_keeps_its_first_send_time_and_counts_attempts_over_rounds() {
    let c = consumer_with(
        FakeApi::new().answering("k1", [status(503), status(503), status(201)]),
        settings(1, 100),
    );
    let first = msg("m1", "k1");
    let sent_at = first.sent_timestamp_ms.unwrap();
    let r1 = c.process_batch(vec![first]).await;
    assert!(r1.failures.is_empty());
    let copy1 = c.queue.take_requeued(1).remove(0);
    assert_eq!(copy1.attributes["attempts"], "1");
    assert_eq!(copy1.attributes["retry_since_ms"], sent_at.to_string());
    let r2 = c.process_batch(vec![copy1]).await;
    assert!(r2.failures.is_empty());
    let copy2 = c.queue.take_requeued(2).remove(0);
    assert_eq!(copy2.attributes["attempts"], "2");
    assert_eq!(copy2.attributes["retry_since_ms"], sent_at.to_string());
    let r3 = c.process_batch(vec![copy2.clone()]).await;
    assert_eq!(fate(&r3, &copy2.message_id), &Fate::Applied);
    let f = c.ledger.table.fate(FEED, "k1").await.unwrap().unwrap();
    assert_eq!(f.attempts, 3);
    // no receive was used: nothing was returned to the queue
    assert!(c.queue.visibility().is_empty());
}

#[tokio::test]
async fn a_copy_that_cannot_be_requeued_is_returned_to_the_queue_as_a_failure() {
    let c = consumer_with(
        FakeApi::new().answering("k1", [status(503)]),
        settings(1, 100),
    );
    c.queue.fail_requeue.store(true, Ordering::SeqCst);
    let r = c.process_batch(msgs(2)).await;
    assert_eq!(retry_of(&r, "m1").0, "server_error");
    assert_eq!(r.failures, ["m1"], "not lost: SQS redelivers it");
    assert_eq!(c.queue.visibility().len(), 1);
    assert_eq!(fate(&r, "m2"), &Fate::Applied);
}

#[tokio::test]
async fn a_message_that_crashes_its_task_is_unfinished_and_the_rest_of_its_batch_applied() {
    let c = consumer_with(FakeApi::new().panicking_on("k2"), settings(2, 100));
    let r = c.process_batch(msgs(4)).await;
    assert_eq!(fate(&r, "m2"), &Fate::Unfinished { why: "crashed" });
    for id in ["m1", "m3", "m4"] {
        assert_eq!(fate(&r, id), &Fate::Applied, "{id}");
    }
    assert_eq!(
        r.failures,
        ["m2"],
        "the poison message uses a receive: redrive ends it"
    );
    assert_eq!(r.stats.unfinished, 1);
    assert!(c.queue.requeued().is_empty(), "a crash is not requeued");
    assert_stats_add_up(&r, 4);
}

#[tokio::test]
async fn a_message_still_running_at_the_deadline_is_unfinished_and_the_rest_reported() {
    let c = consumer_with(FakeApi::new().hanging_on("k1"), settings(2, 100));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_800);
    let started = tokio::time::Instant::now();
    let r = c.process_batch_until(msgs(3), Some(deadline)).await;
    // stopped at the deadline less the margin (1.5 s), not at the deadline
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fate(&r, "m1"), &Fate::Unfinished { why: "deadline" });
    assert_eq!(fate(&r, "m2"), &Fate::Applied);
    assert_eq!(fate(&r, "m3"), &Fate::Applied);
    assert_eq!(r.failures, ["m1"]);
}

#[tokio::test]
async fn a_refused_token_is_re_read_once_and_the_call_repeated_with_the_new_one() {
    let api = FakeApi::new().answering("k1", [status(401)]);
    api.rotated.store(true, Ordering::SeqCst);
    let c = consumer_with(api, settings(1, 100));
    let r = c.process_batch(msgs(1)).await;
    assert_eq!(fate(&r, "m1"), &Fate::Applied);
    assert_eq!(
        c.api.calls(),
        ["k1", "k1"],
        "called again after the refresh"
    );
    assert_eq!(c.api.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(r.stats.auth_failures, 0);
    // not rotated: the refusal stands, counted, and retried later
    let c = consumer_with(
        FakeApi::new().answering("k1", [status(403)]),
        settings(1, 100),
    );
    let r = c.process_batch(msgs(1)).await;
    assert_eq!(retry_of(&r, "m1").0, "auth");
    assert_eq!(c.api.calls(), ["k1"]);
    assert_eq!(c.api.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(r.stats.auth_failures, 1);
}

#[tokio::test]
async fn finished_messages_report_their_ages_per_feed() {
    let c = consumer_with(FakeApi::new(), settings(1, 100));
    let mut m = msg("m1", "k1");
    let mut body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
    body["sent_at_ms"] = serde_json::json!(now_ms() - 5_000);
    body["uploaded_at_ms"] = serde_json::json!(now_ms() - 9_000);
    m.body = body.to_string();
    let r = c.process_batch(vec![m]).await;
    assert_eq!(r.ages.len(), 1);
    let a = &r.ages[0];
    assert_eq!((a.feed.as_str(), a.fate), (FEED, "applied"));
    assert!((5_000..6_000).contains(&a.sent_age_ms.unwrap()));
    assert!((9_000..10_000).contains(&a.upload_age_ms.unwrap()));
}
