//! Tests of [`Consumer::process_batch`] and [`Consumer::backoff`] over in-memory ports: the
//! idempotency ledger on [`MemoryStore`], a scripted fake API and a recording fake work
//! queue. One test per decision: the fate of each API answer, the dead letter's attributes,
//! the circuit breaker, credentials failures, backoff bounds, the ledger's duplicates and
//! leases, a failing dead-letter queue, and concurrency.

use crate::backoff::Backoff;
use crate::consumer::{
    BatchResult, BatchStats, Consumer, ConsumerSettings, Fate, InMessage, Ledger, LedgerState,
    Take, WorkQueue,
};
use crate::contract::envelope::Envelope;
use crate::ports::api::{Api, ApiAnswer};
use crate::ports::queue::QueueError;
use crate::ports::store::MemoryStore;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FEED: &str = "labs";
const LEDGER_BUCKET: &str = "ledger-bucket";
/// Row values carried in every envelope's fields: they must never reach a dead letter's
/// attributes.
const PATIENT: &str = "Jane Doe";
const PHONE: &str = "555-0100";
const TWELVE_HOURS: Duration = Duration::from_secs(43_200);

// ---------------------------------------------------------------------------------------
// messages
// ---------------------------------------------------------------------------------------

/// A version-1 envelope body for `ikey`, with row values in its fields.
fn body(ikey: &str) -> String {
    serde_json::json!({
        "v": 1,
        "feed": FEED,
        "run": "run-1",
        "source": {"bucket": "exports", "key": "incoming/labs/export.csv", "etag": "e1"},
        "change": "new",
        "record_key": record_key(ikey),
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
        body: body(ikey),
        receive_count: 1,
        attributes,
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
}

impl FakeApi {
    fn new() -> Self {
        FakeApi {
            script: Mutex::new(HashMap::new()),
            latency: Duration::ZERO,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
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
    async fn deliver(&self, env: &Envelope) -> ApiAnswer {
        self.calls.lock().unwrap().push(env.idempotency_key.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let answer = self.next_answer(env);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
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

#[derive(Clone, Default)]
struct FakeQueue {
    /// `(receipt handle, timeout)` of every `change_visibility` call.
    visibility: Arc<Mutex<Vec<(String, Duration)>>>,
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

type TestConsumer = Consumer<MemoryStore, FakeApi, FakeQueue>;

/// Backoffs of milliseconds (1 ms doubling to 8 ms).
fn settings(concurrency: usize, breaker_threshold: u32) -> ConsumerSettings {
    ConsumerSettings {
        concurrency,
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(8)),
        breaker_threshold,
    }
}

fn consumer_with(api: FakeApi, settings: ConsumerSettings) -> TestConsumer {
    Consumer {
        ledger: Ledger {
            store: MemoryStore::new(),
            bucket: LEDGER_BUCKET.into(),
            lease: Duration::from_secs(60),
        },
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

async fn ledger_state(c: &TestConsumer, ikey: &str) -> Option<(LedgerState, Option<u16>)> {
    c.ledger
        .read(FEED, ikey)
        .await
        .unwrap()
        .map(|r| (r.state, r.http_status))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Every Retry fate has exactly one `change_visibility` call, with its receipt handle and
/// its delay, and is reported in `failures`; no other message is.
fn assert_retries_scheduled(c: &TestConsumer, r: &BatchResult) {
    let mut want: Vec<(String, Duration)> = r
        .fates
        .iter()
        .filter_map(|(id, f)| match f {
            Fate::Retry { delay, .. } => Some((receipt(id), *delay)),
            _ => None,
        })
        .collect();
    let mut got = c.queue.visibility();
    want.sort();
    got.sort();
    assert_eq!(got, want, "change_visibility calls");
    let retried: BTreeSet<&str> = r
        .fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Retry { .. }))
        .map(|(id, _)| id.as_str())
        .collect();
    let failures: BTreeSet<&str> = r.failures.iter().map(String::as_str).collect();
    assert_eq!(failures, retried, "batch item failures");
    assert_eq!(r.failures.len(), retried.len(), "no failure reported twice");
}

fn assert_stats_add_up(r: &BatchResult, messages: usize) {
    let s = &r.stats;
    assert_eq!(
        (s.applied + s.duplicates + s.dead_lettered + s.retried) as usize,
        messages,
        "{s:?}"
    );
    assert_eq!(r.fates.len(), messages);
}

// ---------------------------------------------------------------------------------------
// 1. the fate of each answer
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_200_or_201_is_applied_and_recorded_done_with_its_status_in_the_ledger() {
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
    assert_eq!(
        ledger_state(&c, "k1").await,
        Some((LedgerState::Done, Some(200)))
    );
    assert_eq!(
        ledger_state(&c, "k2").await,
        Some((LedgerState::Done, Some(201)))
    );
    assert!(c.queue.visibility().is_empty());
    assert_eq!(c.queue.dead_letter_calls(), 0);
}

#[tokio::test]
async fn a_409_is_a_duplicate_and_recorded_done_in_the_ledger() {
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
    assert_eq!(
        ledger_state(&c, "k1").await,
        Some((LedgerState::Done, Some(409)))
    );
    assert!(c.queue.visibility().is_empty());
    assert_eq!(c.queue.dead_letter_calls(), 0);
}

#[tokio::test]
async fn a_permanent_4xx_is_dead_lettered_once_with_the_original_body_and_rejected_in_the_ledger() {
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
            ledger_state(&c, "k1").await,
            Some((LedgerState::Rejected, Some(code))),
            "{code}"
        );
        assert!(c.queue.visibility().is_empty(), "{code}");
    }
}

#[tokio::test]
async fn a_5xx_timeout_or_connection_failure_is_retried_with_its_backoff_and_released_in_the_ledger(
) {
    let cases = [
        ("k1", status(500), "server_error", Some(500)),
        ("k2", status(503), "server_error", Some(503)),
        ("k3", ApiAnswer::Timeout, "timeout", None),
        (
            "k4",
            ApiAnswer::Connection("connection reset by peer".into()),
            "connection",
            None,
        ),
    ];
    let mut api = FakeApi::new();
    for (k, answer, _, _) in &cases {
        api = api.answering(k, [answer.clone()]);
    }
    // a breaker that does not open within this batch
    let c = consumer_with(api, settings(1, 100));
    let mut messages = msgs(4);
    messages[1].receive_count = 3;
    let r = c.process_batch(messages).await;

    for (i, (k, _, kind, http_status)) in cases.iter().enumerate() {
        let id = format!("m{}", i + 1);
        let (got_kind, delay) = retry_of(&r, &id);
        assert_eq!(got_kind, *kind, "{id}");
        let receive_count = if i == 1 { 3 } else { 1 };
        let (_, ceiling) = c.backoff(receive_count, None);
        assert!(delay <= ceiling, "{id}: {delay:?} > {ceiling:?}");
        assert_eq!(
            ledger_state(&c, k).await,
            Some((LedgerState::Released, *http_status)),
            "{id}"
        );
    }
    assert_eq!(c.api.calls(), ["k1", "k2", "k3", "k4"]);
    assert_eq!(r.stats.retried, 4);
    assert!(!r.stats.circuit_opened);
    assert_eq!(c.queue.dead_letter_calls(), 0);
    assert_retries_scheduled(&c, &r);
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
    assert!(
        c.ledger.store.keys("").is_empty(),
        "no ledger record for an undecodable body"
    );
}

#[tokio::test]
async fn a_302_is_retried_as_an_unexpected_status() {
    let c = consumer(FakeApi::new().answering("k1", [status(302)]));
    let r = c.process_batch(msgs(1)).await;

    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "unexpected_status");
    assert!(delay <= c.backoff(1, None).1);
    assert_eq!(r.failures, ["m1"]);
    assert_eq!(c.api.calls(), ["k1"]);
    assert_eq!(c.queue.dead_letter_calls(), 0);
    assert_eq!(
        ledger_state(&c, "k1").await,
        Some((LedgerState::Released, Some(302)))
    );
    assert_retries_scheduled(&c, &r);
}

// ---------------------------------------------------------------------------------------
// 2. what a dead letter carries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dead_letter_carries_its_context_and_no_row_value() {
    let c = consumer(FakeApi::new().answering("k1", [status(422)]));
    let mut m = msg("m-4711", "k1");
    m.receive_count = 4;
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
        .answering("k3", [ApiAnswer::Connection("refused".into())]);
    let c = consumer(api); // threshold 3, one at a time
    let r = c.process_batch(msgs(6)).await;

    assert_eq!(c.api.calls(), ["k1", "k2", "k3"], "no call once open");
    assert_eq!(retry_of(&r, "m1").0, "server_error");
    assert_eq!(retry_of(&r, "m2").0, "timeout");
    assert_eq!(retry_of(&r, "m3").0, "connection");
    for i in 4..=6 {
        let (kind, delay) = retry_of(&r, &format!("m{i}"));
        assert_eq!(kind, "circuit_open");
        assert!(delay <= c.backoff(1, None).1);
        assert_eq!(
            ledger_state(&c, &format!("k{i}")).await,
            None,
            "the ledger is not touched while open"
        );
    }
    assert!(r.stats.circuit_opened);
    assert_eq!(r.stats.retried, 6);
    assert_retries_scheduled(&c, &r);

    // the breaker is per batch: the next batch calls the API again
    let r2 = c.process_batch(vec![msg("m7", "k7")]).await;
    assert_eq!(fate(&r2, "m7"), &Fate::Applied);
    assert!(!r2.stats.circuit_opened);
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
    let r = c.process_batch(msgs(3)).await;

    assert_eq!(retry_of(&r, "m1").0, "auth");
    assert_eq!(retry_of(&r, "m2").0, "auth");
    assert_eq!(fate(&r, "m3"), &Fate::Applied);
    assert_eq!(r.stats.auth_failures, 2);
    assert_eq!(r.stats.retried, 2);
    assert_eq!(
        ledger_state(&c, "k1").await,
        Some((LedgerState::Released, Some(401)))
    );
    assert_eq!(
        c.queue.dead_letter_calls(),
        0,
        "credentials are not the row's fault"
    );
    assert_retries_scheduled(&c, &r);
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
    consumer_with(FakeApi::new(), ConsumerSettings::default())
}

#[tokio::test]
async fn the_backoff_ceiling_grows_then_caps_and_bounds_the_delay() {
    let c = default_backoff_consumer();
    let secs = |n: u32| c.backoff(n, None).1.as_secs();
    assert_eq!(secs(0), 5, "a receive count of 0 counts as the first");
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
async fn the_backoff_is_never_sooner_than_retry_after_nor_beyond_twelve_hours() {
    let c = default_backoff_consumer();
    for n in [1, 3, 9, u32::MAX] {
        for retry_after in [7, 600, 5_000, 43_200, 43_201, 10_000_000] {
            let ra = Duration::from_secs(retry_after);
            for _ in 0..50 {
                let (delay, ceiling) = c.backoff(n, Some(ra));
                assert!(delay >= ra.min(TWELVE_HOURS), "{n} {ra:?}: {delay:?}");
                assert!(delay <= TWELVE_HOURS, "{n} {ra:?}: {delay:?}");
                assert!(delay <= ceiling.max(ra), "{n} {ra:?}: {delay:?}");
            }
        }
    }
    assert_eq!(
        c.backoff(1, Some(Duration::from_secs(u64::MAX))).0,
        TWELVE_HOURS
    );

    // a cap beyond SQS's 12 hours: the delay still stays within them
    let long = consumer_with(
        FakeApi::new(),
        ConsumerSettings {
            backoff: Backoff::new(Duration::from_secs(3600), Duration::from_secs(200_000)),
            ..ConsumerSettings::default()
        },
    );
    let mut beyond = 0;
    for _ in 0..200 {
        let (delay, ceiling) = long.backoff(u32::MAX, None);
        assert_eq!(ceiling, Duration::from_secs(200_000));
        assert!(delay <= TWELVE_HOURS, "{delay:?}");
        if delay == TWELVE_HOURS {
            beyond += 1;
        }
    }
    // most jitter draws land beyond 12 h and are clamped to it
    assert!(beyond > 0);
}

/// A latent defect (not reachable from `consumer_from_env`, which caps the backoff at
/// 43,200 s): `Backoff::delay` computes `random % (c + 1)` with `c` the ceiling in
/// nanoseconds as a `u64`; once `ceiling()` saturates at `u64::MAX` ns (a cap of at least
/// ~584 years and `base * 2^32` beyond that), `c + 1` overflows (a panic in debug builds; in
/// release it wraps to 0 and the `%` panics instead).
#[tokio::test]
async fn a_backoff_with_an_unbounded_cap_stays_within_twelve_hours_without_panicking() {
    let c = consumer_with(
        FakeApi::new(),
        ConsumerSettings {
            backoff: Backoff::new(Duration::from_secs(5), Duration::MAX),
            ..ConsumerSettings::default()
        },
    );
    let (delay, _) = c.backoff(40, None);
    assert!(delay <= TWELVE_HOURS, "{delay:?}");
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    let answer = ApiAnswer::Status {
        code: 429,
        retry_after: Some("7".into()),
    };
    let c = consumer(FakeApi::new().answering("k1", [answer]));
    let r = c.process_batch(msgs(2)).await;

    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "rate_limited");
    assert!(delay >= Duration::from_secs(7), "{delay:?}");
    assert!(delay <= TWELVE_HOURS);
    assert_eq!(c.queue.visibility(), [(receipt("m1"), delay)]);
    assert_eq!(
        ledger_state(&c, "k1").await,
        Some((LedgerState::Released, Some(429)))
    );
    assert_eq!(fate(&r, "m2"), &Fate::Applied);
}

// ---------------------------------------------------------------------------------------
// 6. the idempotency ledger
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_already_done_in_the_ledger_is_a_duplicate_without_an_api_call() {
    let c = consumer(FakeApi::new());
    let Take::Owned(h) = c.ledger.take(FEED, "k1", "earlier:1", 1).await.unwrap() else {
        panic!("a fresh key is ours")
    };
    assert!(c
        .ledger
        .finish(&h, LedgerState::Done, Some(201))
        .await
        .unwrap());
    let r = c.process_batch(msgs(1)).await;

    assert_eq!(fate(&r, "m1"), &Fate::Duplicate);
    assert_eq!(r.stats.duplicates, 1);
    assert!(c.api.calls().is_empty());
    assert!(r.failures.is_empty());
    assert!(c.queue.visibility().is_empty());
    assert_eq!(c.queue.dead_letter_calls(), 0);
    let rec = c.ledger.read(FEED, "k1").await.unwrap().unwrap();
    assert_eq!(rec.owner, "earlier:1", "the record is left as it was");
    assert_eq!(rec.http_status, Some(201));
}

#[tokio::test]
async fn a_key_held_by_another_attempt_is_retried_after_its_lease_without_an_api_call() {
    let c = consumer(FakeApi::new());
    let Take::Owned(_) = c.ledger.take(FEED, "k1", "other:1", 1).await.unwrap() else {
        panic!("a fresh key is ours")
    };
    let expires = c
        .ledger
        .read(FEED, "k1")
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms;
    let remaining_before = expires - now_ms();
    let r = c.process_batch(msgs(1)).await;
    let remaining_after = expires - now_ms();

    let (kind, delay) = retry_of(&r, "m1");
    assert_eq!(kind, "in_progress_elsewhere");
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
    let rec = c.ledger.read(FEED, "k1").await.unwrap().unwrap();
    assert_eq!(rec.owner, "other:1", "the holder keeps its record");
    assert_eq!(rec.state, LedgerState::InProgress);
    assert_retries_scheduled(&c, &r);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_call_made() {
    let c = consumer(FakeApi::new());
    let crashed = Ledger {
        store: c.ledger.store.clone(),
        bucket: LEDGER_BUCKET.into(),
        lease: Duration::from_millis(1),
    };
    let Take::Owned(_) = crashed.take(FEED, "k1", "crashed:1", 1).await.unwrap() else {
        panic!("a fresh key is ours")
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let r = c.process_batch(msgs(1)).await;

    assert_eq!(fate(&r, "m1"), &Fate::Applied);
    assert_eq!(c.api.calls(), ["k1"]);
    let rec = c.ledger.read(FEED, "k1").await.unwrap().unwrap();
    assert_eq!(rec.owner, "m1:1");
    assert_eq!(rec.state, LedgerState::Done);
    assert_eq!(rec.http_status, Some(201));
    assert_eq!(rec.attempts, 2, "the crashed attempt is counted");
}

#[tokio::test]
async fn a_released_key_is_taken_by_the_next_delivery_and_applied_once() {
    let c = consumer(FakeApi::new().answering("k1", [status(503), status(201), status(201)]));
    let r1 = c.process_batch(msgs(1)).await;
    assert_eq!(retry_of(&r1, "m1").0, "server_error");

    let mut again = msg("m1", "k1");
    again.receive_count = 2;
    let r2 = c.process_batch(vec![again.clone()]).await;
    assert_eq!(fate(&r2, "m1"), &Fate::Applied);
    let rec = c.ledger.read(FEED, "k1").await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.owner.as_str(), rec.attempts),
        (LedgerState::Done, "m1:2", 2)
    );

    // a third delivery (e.g. SQS at-least-once) is a duplicate, without a call
    again.receive_count = 3;
    let r3 = c.process_batch(vec![again]).await;
    assert_eq!(fate(&r3, "m1"), &Fate::Duplicate);
    assert_eq!(c.api.calls(), ["k1", "k1"]);
}

#[tokio::test]
async fn the_same_key_twice_in_a_batch_is_applied_once() {
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
async fn a_corrupt_ledger_record_is_retried_without_an_api_call() {
    let c = consumer(FakeApi::new());
    c.ledger.store.insert(
        LEDGER_BUCKET,
        &format!("ledger/{FEED}/k1"),
        b"{not json".to_vec(),
    );
    let r = c.process_batch(msgs(2)).await;

    assert_eq!(retry_of(&r, "m1").0, "ledger");
    assert_eq!(fate(&r, "m2"), &Fate::Applied);
    assert_eq!(c.api.calls(), ["k2"]);
    assert!(!r.stats.circuit_opened);
    assert_retries_scheduled(&c, &r);
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
    let r = c.process_batch(vec![msg("m1", "k1"), undecodable]).await;

    for id in ["m1", "m2"] {
        let (kind, delay) = retry_of(&r, id);
        assert_eq!(kind, "dead_letter_failed", "{id}");
        assert!(delay <= c.backoff(1, None).1);
    }
    assert_eq!(r.stats.retried, 2);
    assert_eq!(r.stats.dead_lettered, 0);
    assert_eq!(c.queue.dead_letter_calls(), 2);
    assert!(c.queue.dead().is_empty());
    assert_retries_scheduled(&c, &r);
    assert_eq!(
        ledger_state(&c, "k1").await,
        Some((LedgerState::Rejected, Some(422)))
    );

    // the redelivery takes the rejected key over and dead-letters it
    c.queue.fail_dead_letters(false);
    let mut again = msg("m1", "k1");
    again.receive_count = 2;
    let r2 = c.process_batch(vec![again.clone()]).await;
    assert_eq!(fate(&r2, "m1"), &Fate::DeadLettered { class: "permanent" });
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
        assert_eq!(
            ledger_state(&c, &format!("k{i}")).await,
            Some((LedgerState::Done, Some(201)))
        );
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
    let r = c.process_batch(msgs(12)).await;

    assert!(c.api.max_in_flight() <= 3);
    assert_eq!(
        r.stats,
        BatchStats {
            applied: 3,
            duplicates: 3,
            dead_lettered: 3,
            retried: 3,
            auth_failures: 0,
            circuit_opened: false,
        }
    );
    assert_stats_add_up(&r, 12);
    let retried: BTreeSet<&str> = r.failures.iter().map(String::as_str).collect();
    assert_eq!(retried, BTreeSet::from(["m3", "m7", "m11"]));
    assert_eq!(c.queue.dead().len(), 3);
    assert_retries_scheduled(&c, &r);
}
