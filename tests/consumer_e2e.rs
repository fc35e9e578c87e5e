//! The whole pipeline end to end: generated files in moto's S3 → the release splitter under
//! the Runtime Interface Emulator → moto's SQS → the local event source mapping → release
//! consumer binaries under the emulator → the stand-in contact-tracing API (a real HTTP
//! server on 127.0.0.1) with injected faults.

use casefeed_e2e::*;
use casefeed_tools::api::{ApiConfig, ApiServer, Faults};
use casefeed_tools::esm::{self, EsmConfig, EsmStats};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const TOKEN: &str = "e2e-token";

struct Pipeline {
    stack: Stack,
    splitter: Rie,
    consumers: Vec<casefeed_tools::local::Rie>,
    api: ApiServer,
    ledger: PathBuf,
    baseline_state: std::sync::Mutex<Option<Vec<u8>>>,
}

async fn pipeline(
    test: &str,
    receives: u32,
    consumers: usize,
    extra_env: &[(&str, &str)],
    faults: Faults,
) -> Pipeline {
    pipeline_of(test, FEEDS, receives, consumers, extra_env, faults).await
}

/// [`pipeline`] with another feed configuration.
async fn pipeline_of(
    test: &str,
    feeds: &str,
    receives: u32,
    consumers: usize,
    extra_env: &[(&str, &str)],
    faults: Faults,
) -> Pipeline {
    let stack = Stack::with_receives(test, feeds, receives).await;
    pipeline_on(stack, test, consumers, extra_env, faults).await
}

/// [`pipeline`] on a stack already set up.
async fn pipeline_on(
    stack: Stack,
    test: &str,
    consumers: usize,
    extra_env: &[(&str, &str)],
    faults: Faults,
) -> Pipeline {
    let ledger = stack.path("api-ledger.jsonl");
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.ledger = Some(ledger.clone());
    cfg.faults = faults;
    let api = ApiServer::start(cfg).await.expect("stand-in API");
    let splitter = Rie::start(
        &release_bin("splitter"),
        &stack.lambda_env(),
        &format!("splitter-{test}"),
    );
    let mut env = stack.inner.consumer_env(&api.url(), TOKEN);
    for (k, v) in extra_env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    let consumers = (0..consumers)
        .map(|i| {
            casefeed_tools::local::Rie::start(
                &release_bin("consumer"),
                &env,
                &format!("consumer-{test}-{i}"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    Pipeline {
        stack,
        splitter,
        consumers,
        api,
        ledger,
        baseline_state: Default::default(),
    }
}

impl Pipeline {
    /// Baseline `rows`, then a next file; returns the next file's expectation.
    async fn split(&self, rows: &str, new: &str, changed: &str) -> (PathBuf, Expected, Value) {
        let base = self.stack.path("base.csv");
        gen(&["baseline", "--rows", rows, "--seed", "3"], &base);
        let ev = self
            .stack
            .upload("incoming/lab_results/export-0001.csv", &base)
            .await;
        let r = self.splitter.invoke(&ev).await;
        assert_eq!(r["results"][0]["status"], "baseline", "{r}");
        let next = self.stack.path("next.csv");
        let exp = gen(
            &[
                "next",
                "--prev",
                base.to_str().unwrap(),
                "--new",
                new,
                "--changed",
                changed,
                "--removed",
                "3",
                "--seed",
                "4",
                "--shuffle",
            ],
            &next,
        );
        let ev = self
            .stack
            .upload("incoming/lab_results/export-0002.csv", &next)
            .await;
        *self.baseline_state.lock().unwrap() = self.stack.get("state/lab_results/snapshot").await;
        let r = self.splitter.invoke(&ev).await;
        assert_eq!(r["results"][0]["status"], "applied", "{r}");
        assert_eq!(
            r["results"][0]["counts"]["sent"],
            exp.new.len() + exp.changed.len(),
            "{r}"
        );
        (next, exp, ev)
    }

    async fn drain(&self, max: Duration) -> EsmStats {
        let cfg = EsmConfig {
            queue_url: self.stack.queue_url.clone(),
            batch_size: 10,
            wait_secs: 1,
            max_duration: max,
        };
        esm::drain(&self.stack.inner.sqs, &self.consumers, &cfg)
            .await
            .expect("event source emulation")
    }

    /// Applied effects at the API, from its append-only ledger: record key → count.
    fn applied(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        let mut keys = BTreeSet::new();
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).expect("ledger line");
            assert!(
                keys.insert(v["idempotency_key"].as_str().unwrap().to_string()),
                "an idempotency key applied twice"
            );
            *out.entry(v["record_key"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        out
    }

    fn logs(&self) -> String {
        let mut s = self.splitter.log_text();
        for c in &self.consumers {
            s.push_str(&c.log_text());
        }
        s
    }
}

/// The EMF documents among a function's log lines, each checked well-formed and naming only
/// the metrics casefeed declares.
fn emf_docs(logs: &str) -> Vec<Value> {
    let docs: Vec<Value> = logs
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).expect("an EMF line is JSON"))
        .collect();
    for d in &docs {
        casefeed::metrics::validate_emf(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = m["Name"].as_str().unwrap();
            assert!(casefeed::metrics::EMITTED.contains(&name), "{name}");
        }
    }
    docs
}

fn emf_sum(docs: &[Value], name: &str) -> u64 {
    docs.iter().filter_map(|d| d[name].as_u64()).sum()
}

fn expected_keys(exp: &Expected) -> BTreeSet<String> {
    exp.new.iter().chain(exp.changed.iter()).cloned().collect()
}

/// Every new/changed row applied exactly once; the same messages again (re-sent by a
/// re-run of the splitter, with and without the consumer's ledger) have no second effect;
/// no row value in any log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_applied_exactly_once_and_redelivery_has_no_effect() {
    let p = pipeline(
        "once",
        5,
        2,
        &[("CASEFEED_NO_METRICS", "0")],
        Faults::default(),
    )
    .await;
    let (next, exp, ev) = p.split("3000", "60", "80").await;
    let st = p.drain(Duration::from_secs(300)).await;
    assert!(st.drained, "{st:?}");
    let applied = p.applied();
    assert_eq!(
        applied.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys(&exp)
    );
    assert!(applied.values().all(|&n| n == 1));
    assert_eq!(p.api.stats().applied, 140);
    // the consumers' stdout: the metrics are valid EMF and add up to what the API applied;
    // every line about a message names its feed, run, key, message id and request id
    let consumer_logs: String = p.consumers.iter().map(|c| c.log_text()).collect();
    let docs = emf_docs(&consumer_logs);
    assert_eq!(emf_sum(&docs, "Applied"), 140);
    assert_eq!(emf_sum(&docs, "ApiCalls"), 140);
    // SQS delivers at least once (and a busy machine lets a visibility timeout lapse), so a
    // copy may arrive again: it must count as a duplicate, never as a second application
    assert_eq!(emf_sum(&docs, "DeadLettered"), 0);
    assert!(
        emf_sum(&docs, "Duplicates") <= 140,
        "duplicates are copies of applied rows"
    );
    let uploads: usize = docs
        .iter()
        .filter(|d| d["feed"] == "lab_results")
        .map(|d| d["UploadToAppliedMillis"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(uploads, 140, "an upload-to-applied age per applied row");
    let mut message_lines = 0;
    for line in consumer_logs
        .lines()
        .filter(|l| l.contains("\"message done\""))
    {
        let v: Value = serde_json::from_str(line).expect("a JSON log line");
        let spans = v["spans"].as_array().expect("the line's spans");
        let field = |k: &str| spans.iter().find_map(|s| s.get(k).and_then(Value::as_str));
        assert!(field("requestId").is_some_and(|r| !r.is_empty()), "{line}");
        assert_eq!(field("feed"), Some("lab_results"), "{line}");
        assert!(field("run").is_some_and(|r| !r.is_empty()), "{line}");
        assert!(
            field("idempotency_key").is_some() && field("message_id").is_some(),
            "{line}"
        );
        message_lines += 1;
    }
    assert_eq!(message_lines, 140);

    // the splitter crashed after sending but before its commit, and runs again: the same
    // transitions, the same idempotency keys — the consumer's ledger dedupes them all
    let base_state = p
        .baseline_state
        .lock()
        .unwrap()
        .clone()
        .expect("baseline state");
    p.stack
        .inner
        .s3
        .put_object()
        .bucket(BUCKET)
        .key("state/lab_results/snapshot")
        .body(base_state.into())
        .send()
        .await
        .unwrap();
    let r = p.splitter.invoke(&ev).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    assert_eq!(r["results"][0]["counts"]["sent"], 140, "{r}");
    let st = p.drain(Duration::from_secs(300)).await;
    assert!(st.drained && st.received >= 140, "{st:?}");
    assert_eq!(p.api.stats().applied, 140, "no second effect");
    assert_eq!(
        p.api.stats().replays,
        0,
        "the ledger answered before the API was called"
    );
    // the ledger: one record item per applied record, at the run's version (the baseline
    // is generation 1, the next file 2), no lease left; one applied fate per key
    let items = p.stack.ledger_items().await;
    let records: Vec<_> = items
        .iter()
        .filter(|i| i["pk"].starts_with("rec#"))
        .collect();
    assert_eq!(records.len(), 140, "one ledger record per applied record");
    assert!(records
        .iter()
        .all(|i| i["acked"] == "2" && !i.contains_key("lease_owner")));
    let fates: Vec<_> = items
        .iter()
        .filter(|i| i["pk"].starts_with("key#"))
        .collect();
    assert_eq!(fates.len(), 140, "one fate per transition");
    assert!(fates.iter().all(|i| i["fate"] == "applied"), "{fates:?}");
    let sqs = &p.stack.inner.sqs;

    // without the consumer's ledger (expired by TTL), the API's 409 still dedupes
    for line in std::fs::read_to_string(&p.ledger).unwrap().lines().take(10) {
        let v: Value = serde_json::from_str(line).unwrap();
        let pk = casefeed::contract::layout::ledger_record_pk(
            "lab_results",
            v["record_key"].as_str().unwrap(),
        );
        p.stack
            .inner
            .dynamodb
            .delete_item()
            .table_name(&p.stack.inner.ledger_table)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
            .send()
            .await
            .unwrap();
    }
    for line in std::fs::read_to_string(&p.ledger).unwrap().lines().take(10) {
        let v: Value = serde_json::from_str(line).unwrap();
        let body = serde_json::json!({
            "v": 2, "feed": "lab_results", "run": "replay", "source": {"bucket": BUCKET, "key": "k", "etag": "e"},
            "change": v["change"], "record_key": v["record_key"], "version": v["version"],
            "idempotency_key": v["idempotency_key"], "fields": v["fields"]
        });
        sqs.send_message()
            .queue_url(&p.stack.queue_url)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }
    let st = p.drain(Duration::from_secs(200)).await;
    assert!(st.drained, "{st:?}");
    let s = p.api.stats();
    assert_eq!(s.applied, 140, "no second effect");
    assert_eq!(s.replays, 10, "{s:?}");
    assert_eq!(p.applied().len(), 140);

    // no row value in any log line (splitter and consumers)
    let logs = p.logs();
    assert!(logs.contains("batch finished"), "the consumers logged");
    let rows = read_rows(&next);
    for id in expected_keys(&exp) {
        let row = &rows[&id];
        for col in [
            "first_name",
            "last_name",
            "phone",
            "street",
            "date_of_birth",
            "city",
        ] {
            let v = &row[col];
            if v.chars().count() >= 6 {
                assert!(
                    !logs.contains(v.as_str()),
                    "a log line contains the value of {col}"
                );
            }
        }
    }
}

/// Retry delays the consumers logged: (kind, attempt, ceiling ms, delay ms, not-before ms).
fn retries(logs: &str) -> Vec<(String, u64, u64, u64, Option<u64>)> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "retry scheduled")
        .map(|v| {
            let f = &v["fields"];
            (
                f["kind"].as_str().unwrap_or("").to_string(),
                f["attempt"].as_u64().unwrap_or(0),
                f["ceiling_ms"].as_u64().unwrap_or(0),
                f["delay_ms"].as_u64().unwrap_or(0),
                f["not_before_ms"].as_u64(),
            )
        })
        .collect()
}

/// 30% transient faults (5xx and 429 with Retry-After) → everything applied once, and the
/// backoff is visible: its ceiling grows with the attempt, 429s wait at least as long as
/// asked, and a 429 pauses the others too (`rate_paused`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_and_rate_limits_end_applied_once() {
    let faults = Faults {
        fail_5xx: 0.15,
        rate_limit_429: 0.15,
        retry_after_secs: 2,
        seed: 42,
        ..Faults::default()
    };
    // a breaker threshold above the batch keeps every message exposed to the faults; a
    // gate wait shorter than the 2 s pause makes a paused message go back on the queue
    // (`rate_paused`) instead of sleeping in process, so the pause shows in the retries
    let p = pipeline(
        "faults",
        12,
        2,
        &[("BREAKER_THRESHOLD", "20"), ("GATE_WAIT_MS", "500")],
        faults,
    )
    .await;
    let (_, exp, _) = p.split("2000", "40", "60").await;
    let st = p.drain(Duration::from_secs(600)).await;
    assert!(st.drained, "{st:?}");
    let applied = p.applied();
    assert_eq!(
        applied.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys(&exp)
    );
    let s = p.api.stats();
    assert_eq!(s.applied, 100, "{s:?}");
    assert!(
        s.server_errors_5xx > 0 && s.rate_limited_429 > 0,
        "faults were injected: {s:?}"
    );
    assert!(
        p.stack.drain(&p.stack.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(
        st.reported_failures, 0,
        "every retry was requeued: no receive used"
    );

    let r = retries(&p.logs());
    assert!(
        r.len() as u64 >= (s.server_errors_5xx + s.rate_limited_429).saturating_sub(5),
        "every failure scheduled a retry: {} vs {s:?}",
        r.len()
    );
    for (kind, attempt, ceiling, delay, not_before) in &r {
        let want_ceiling = (1000u64 << (attempt.saturating_sub(1)).min(10)).min(4000);
        assert_eq!(*ceiling, want_ceiling, "ceiling for attempt {attempt}");
        match (kind.as_str(), not_before) {
            ("rate_limited", nb) => {
                assert_eq!(*nb, Some(2000));
                assert!(
                    *delay >= 2000,
                    "a 429 waits at least Retry-After: {delay} ms"
                );
            }
            (_, Some(nb)) => assert!(*delay >= *nb, "{kind}: {delay} ms before {nb} ms"),
            (_, None) => assert!(*delay <= *ceiling, "full jitter stays under the ceiling"),
        }
    }
    assert!(
        r.iter().any(|x| x.0 == "rate_paused"),
        "a 429 paused other messages too"
    );
    let by_attempt = |n: u64| r.iter().filter(|x| x.1 == n).map(|x| x.2).max();
    if let (Some(a), Some(b)) = (by_attempt(1), by_attempt(2)) {
        assert!(b > a, "the backoff grows with the attempt");
    }
    assert!(
        r.iter().any(|x| x.1 >= 2),
        "some message was attempted more than once"
    );
}

/// "Apply then drop the connection": the effect happened, the client saw an error and
/// retried — applied once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_drop_is_applied_once() {
    let faults = Faults {
        apply_then_drop: 0.3,
        seed: 7,
        ..Faults::default()
    };
    let p = pipeline("drop", 10, 2, &[], faults).await;
    let (_, exp, _) = p.split("1500", "30", "30").await;
    let st = p.drain(Duration::from_secs(400)).await;
    assert!(st.drained, "{st:?}");
    let s = p.api.stats();
    assert!(s.dropped_after_apply > 0, "{s:?}");
    assert_eq!(s.applied, 60, "{s:?}");
    assert!(
        s.replays >= s.dropped_after_apply,
        "each dropped answer was retried and found applied: {s:?}"
    );
    let applied = p.applied();
    assert_eq!(
        applied.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys(&exp)
    );
    assert!(p.stack.drain(&p.stack.dlq_url).await.is_empty());
    assert_eq!(
        s.unauthorized, 0,
        "the token from Secrets Manager was accepted"
    );
}

/// Permanent 422s → in the DLQ now, with the reason; everything else applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rejections_go_to_the_dlq_with_the_reason() {
    let p = pipeline("reject", 10, 2, &[], Faults::default()).await;
    // the split sends; five of its records are then refused by the API for good
    let (_, exp, _) = p.split("1500", "30", "30").await;
    let rows: Vec<String> = expected_keys(&exp).into_iter().take(5).collect();
    let mut f = p.api.faults();
    f.reject_record_keys = rows.clone();
    p.api.set_faults(f);
    let st = p.drain(Duration::from_secs(300)).await;
    assert!(st.drained, "{st:?}");
    let dlq = p.stack.drain(&p.stack.dlq_url).await;
    assert_eq!(dlq.len(), 5, "{dlq:?}");
    for m in &dlq {
        assert_eq!(
            m.attributes.get("error_class").map(String::as_str),
            Some("permanent")
        );
        assert_eq!(
            m.attributes.get("http_status").map(String::as_str),
            Some("422")
        );
        assert!(m
            .attributes
            .get("reason")
            .is_some_and(|r| r.contains("422")));
        assert!(
            m.attributes.contains_key("idempotency_key") && m.attributes.contains_key("attempts")
        );
        let env = casefeed::contract::envelope::Envelope::decode(&m.body).unwrap();
        assert!(rows.contains(&env.record_key));
    }
    let applied = p.applied();
    assert_eq!(applied.len(), 55);
    assert!(rows.iter().all(|r| !applied.contains_key(r)));

    // the operator's path: put them back (drained above, so send them to the DLQ again as
    // the consumer did), inspect, fix the cause, replay — each applied once
    let sqs = &p.stack.inner.sqs;
    for m in &dlq {
        let mut req = sqs
            .send_message()
            .queue_url(&p.stack.dlq_url)
            .message_body(&m.body);
        for (k, v) in &m.attributes {
            let a = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .unwrap();
            req = req.message_attributes(k, a);
        }
        req.send().await.unwrap();
    }
    let letters = casefeed_tools::dlq::inspect(sqs, &p.stack.dlq_url, 100)
        .await
        .unwrap();
    assert_eq!(letters.len(), 5);
    assert!(letters
        .iter()
        .all(|l| l.attributes["error_class"] == "permanent"));
    p.api.set_faults(Faults::default());
    let none = casefeed_tools::dlq::replay(
        sqs,
        &p.stack.dlq_url,
        &p.stack.queue_url,
        100,
        Some("undecodable"),
    )
    .await
    .unwrap();
    assert_eq!(none, 0, "the filter keeps other classes in the DLQ");
    let moved = casefeed_tools::dlq::replay(
        sqs,
        &p.stack.dlq_url,
        &p.stack.queue_url,
        100,
        Some("permanent"),
    )
    .await
    .unwrap();
    assert_eq!(moved, 5);
    let st = p.drain(Duration::from_secs(300)).await;
    assert!(st.drained, "{st:?}");
    let applied = p.applied();
    assert_eq!(applied.len(), 60);
    assert!(applied.values().all(|&n| n == 1));
    assert_eq!(
        casefeed_tools::dlq::purge(sqs, &p.stack.dlq_url)
            .await
            .unwrap(),
        0
    );
}

/// A full outage: messages reach the DLQ through redrive after maxReceiveCount, nothing is
/// applied twice, nothing is lost (applied + dead-lettered = expected); the circuit breaker
/// keeps the consumers from hammering the API.
/// The feed configuration of the e2e tests with a retry window of `secs`.
fn feeds_with_window(secs: u64) -> String {
    FEEDS.replace(
        "[[feed]]\nname = \"lab_results\"",
        &format!("[[feed]]\nname = \"lab_results\"\nretry_window_secs = {secs}"),
    )
}

/// An outage longer than the old redrive budget (3 receives here; 10 × a 15-minute backoff
/// in production: ~30 minutes): nothing is dead-lettered, everything is applied once after
/// recovery, and while the breaker was open the API saw at most one probe per interval
/// across all three consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_redrive_budget_is_ridden_out_with_one_probe_per_interval() {
    let mut faults = Faults::default();
    faults.outage_for(Duration::from_secs(25));
    let outage_end_ms = faults.outage_until_ms.unwrap();
    let p = pipeline_of(
        "ride-out",
        &feeds_with_window(600),
        3,
        3,
        &[
            ("BACKOFF_BASE_SECS", "1"),
            ("BACKOFF_CAP_SECS", "3"),
            ("BREAKER_PROBE_SECS", "2"),
        ],
        faults,
    )
    .await;
    let (_, exp, _) = p.split("1000", "20", "20").await;
    let st = p.drain(Duration::from_secs(300)).await;
    assert!(st.drained, "{st:?}");
    assert!(
        p.stack.drain(&p.stack.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(
        st.reported_failures, 0,
        "waiting out the outage used no receive"
    );
    let applied = p.applied();
    assert_eq!(
        applied.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys(&exp)
    );
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    // one probe per interval while open: the outage's calls after the breaker opened are
    // at least an interval apart (less 150 ms of clock and scheduling slack)
    let gate = gate_item(&p).await;
    let opened = num(&gate, "opened_at_ms");
    assert!(opened > 0, "the breaker opened: {gate:?}");
    let during: Vec<u64> = p
        .api
        .arrivals()
        .iter()
        .map(|a| a.at_ms)
        .filter(|t| *t as i64 > opened + 200 && *t < outage_end_ms)
        .collect();
    assert!(!during.is_empty(), "the breaker probed during the outage");
    for w in during.windows(2) {
        assert!(
            w[1] - w[0] >= 1_850,
            "two calls {} ms apart while open: {during:?}",
            w[1] - w[0]
        );
    }
    let outage_calls = p.api.stats().server_errors_5xx;
    assert!(
        outage_calls <= 3 + 6 + 25 / 2 + 2,
        "{outage_calls} calls during a 25 s outage: the threshold, the calls in flight, one probe per 2 s"
    );
    assert!(p.logs().contains("circuit opened"));
    assert!(p.logs().contains("circuit closed"));
}

/// An outage longer than the feed's retry window: every message ends in the DLQ with the
/// reason `retry window exceeded`, its attempts and its age; none by redrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_window_ends_in_the_dlq_with_attempts_and_age() {
    let mut faults = Faults::default();
    faults.outage_for(Duration::from_secs(3600));
    let p = pipeline_of(
        "window",
        &feeds_with_window(12),
        3,
        3,
        &[("BACKOFF_CAP_SECS", "2"), ("BREAKER_PROBE_SECS", "1")],
        faults,
    )
    .await;
    let (_, exp, _) = p.split("1000", "20", "20").await;
    let st = p.drain(Duration::from_secs(180)).await;
    assert!(st.drained, "{st:?}");
    assert_eq!(
        st.reported_failures, 0,
        "no receive used: redrive never moved one"
    );
    let dlq = p.stack.drain(&p.stack.dlq_url).await;
    let mut keys = BTreeSet::new();
    for m in &dlq {
        let env = casefeed::contract::envelope::Envelope::decode(&m.body).unwrap();
        keys.insert(env.record_key);
        let a = &m.attributes;
        assert_eq!(
            a.get("error_class").map(String::as_str),
            Some("retry_window"),
            "{a:?}"
        );
        assert!(a["reason"].starts_with("retry window exceeded"), "{a:?}");
        // at least the attempt that found the window over (on a loaded machine a message
        // can wait out the whole window in the queue before its first attempt)
        let attempts: u64 = a["attempts"].parse().unwrap();
        assert!(attempts >= 1, "{a:?}");
        let age: u64 = a["age_ms"].parse().unwrap();
        assert!((12_000..120_000).contains(&age), "{a:?}");
    }
    assert_eq!(keys, expected_keys(&exp));
    assert_eq!(dlq.len(), 40);
    assert_eq!(p.api.stats().applied, 0);
    assert!(p.applied().is_empty());
}

/// A poison message (its call hangs past the invocation's end, every time): reported
/// unfinished, it reaches the DLQ by redrive after MaxReceiveCount receives, while the other
/// messages of its batch are applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dlq_by_redrive_while_its_batch_is_applied() {
    let p = pipeline(
        "poison",
        3,
        1,
        &[
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "6"),
            ("API_TIMEOUT_MS", "7000"),
            ("API_CONNECT_TIMEOUT_MS", "1000"),
            ("LEDGER_LEASE_SECS", "16"),
        ],
        Faults::default(),
    )
    .await;
    // a redelivery after 5 s (the queue's visibility timeout), not moto's default 30
    p.stack
        .inner
        .sqs
        .set_queue_attributes()
        .queue_url(&p.stack.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "5",
        )
        .send()
        .await
        .unwrap();
    let (_, exp, _) = p.split("200", "8", "0").await;
    let poison = exp.new[0].clone();
    p.api
        .patch_faults(
            &serde_json::from_value(serde_json::json!({"hang_records": [poison]})).unwrap(),
        )
        .unwrap();
    let st = p.drain(Duration::from_secs(120)).await;
    assert!(st.drained, "{st:?}");
    let dlq = p.stack.drain(&p.stack.dlq_url).await;
    assert_eq!(dlq.len(), 1, "only the poison message");
    let env = casefeed::contract::envelope::Envelope::decode(&dlq[0].body).unwrap();
    assert_eq!(env.record_key, poison);
    assert!(
        !dlq[0].attributes.contains_key("error_class"),
        "moved by redrive, not by the consumer"
    );
    let applied = p.applied();
    let mut want = expected_keys(&exp);
    want.remove(&poison);
    assert_eq!(applied.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(applied.values().all(|n| *n == 1));
    assert!(
        st.reported_failures >= 2,
        "the poison message was reported unfinished: {st:?}"
    );
    assert!(p.logs().contains("reported unfinished"));
}

/// The ledger table's gate item (`gate#api`).
async fn gate_item(p: &Pipeline) -> BTreeMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    p.stack
        .inner
        .dynamodb
        .get_item()
        .table_name(&p.stack.inner.ledger_table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("gate#api".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn num(item: &BTreeMap<String, aws_sdk_dynamodb::types::AttributeValue>, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The fleet's rate: 600 messages (`E2E_RATE_MESSAGES=2000` for the 2,000-message run; moto
/// serves ~5-10 messages a second here, so a limit of 5 calls a second is the one that binds)
/// through three consumers — the stand-in API never counts more than 5 in any one-second
/// window — and a 429 with Retry-After 3 mid-run makes no consumer call for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_rate_is_never_exceeded_and_a_429_pauses_every_consumer() {
    let messages: usize = std::env::var("E2E_RATE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let half = (messages / 2).to_string();
    // half the baseline changes: a feed whose flood guard lets that through
    let feeds = FEEDS.replace("[defaults]", "[defaults]\nmax_change_share = 1.0");
    let p = pipeline_of(
        "rate",
        &feeds,
        5,
        3,
        &[("API_RATE_PER_SEC", "5")],
        Faults::default(),
    )
    .await;
    let base = (messages * 2).to_string();
    let (_, exp, _) = p.split(&base, &half, &half).await;
    let pause = async {
        // once a quarter is applied: the next call is answered 429, Retry-After 3
        while (p.api.stats().applied as usize) < messages / 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p.api
            .patch_faults(
                &serde_json::from_value(
                    serde_json::json!({"rate_limit_next": 1, "retry_after_secs": 3}),
                )
                .unwrap(),
            )
            .unwrap();
    };
    let (st, ()) = tokio::join!(p.drain(Duration::from_secs(900)), pause);
    assert!(st.drained, "{st:?}");
    let s = p.api.stats();
    assert!(
        s.peak_per_second <= 5,
        "{} calls in one second: {s:?}",
        s.peak_per_second
    );
    assert_eq!(s.applied as usize, messages, "{s:?}");
    assert_eq!(
        p.applied().keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys(&exp)
    );
    assert!(p.stack.drain(&p.stack.dlq_url).await.is_empty());
    // the pause: after the 429, no call for its 3 s (calls already given a slot — at most
    // the 200 ms horizon ahead — and one ledger write of slack may still land early on)
    let arrivals = p.api.arrivals();
    let t429 = arrivals
        .iter()
        .find(|a| a.status == 429)
        .map(|a| a.at_ms)
        .expect("the 429 was answered");
    let early: Vec<u64> = arrivals
        .iter()
        .map(|a| a.at_ms)
        .filter(|t| *t > t429 + 400 && *t < t429 + 2_950)
        .collect();
    assert!(
        early.is_empty(),
        "calls during the pause: {:?}",
        early.iter().map(|t| t - t429).collect::<Vec<_>>()
    );
    assert!(
        arrivals.iter().any(|a| a.at_ms >= t429 + 2_950),
        "delivery resumed after the pause"
    );
    let first = arrivals.first().map(|a| a.at_ms).unwrap_or(0);
    let last = arrivals.last().map(|a| a.at_ms).unwrap_or(0);
    eprintln!(
        "rate: {messages} messages in {:.1} s = {:.1} calls/s (limit 5), peak {} in a second",
        (last - first) as f64 / 1000.0,
        arrivals.len() as f64 * 1000.0 / (last - first).max(1) as f64,
        s.peak_per_second
    );
}

/// A rotated secret: the API starts refusing the old token; once the secret holds the new
/// one, delivery resumes without a redeploy (the consumers re-read it on a 401) and without
/// dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_resumes_delivery_without_a_redeploy_or_dead_letters() {
    let stack = Stack::with_receives("rotate", &feeds_with_window(600), 3).await;
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&stack.inner.moto.endpoint)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "e2e",
        ))
        .load()
        .await;
    let secrets = aws_sdk_secretsmanager::Client::new(&conf);
    let arn = secrets
        .create_secret()
        .name("casefeed-api-token")
        .secret_string(format!("{{\"token\": \"{TOKEN}\"}}"))
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let p = pipeline_on(
        stack,
        "rotate",
        2,
        &[
            ("API_TOKEN", ""),
            ("API_TOKEN_SECRET_ARN", &arn),
            ("BREAKER_PROBE_SECS", "1"),
            ("BACKOFF_CAP_SECS", "2"),
        ],
        Faults::default(),
    )
    .await;
    let (_, exp, _) = p.split("500", "15", "15").await;
    // the API rotates first: the old token is refused from now on
    p.api
        .patch_faults(
            &serde_json::from_value(serde_json::json!({"case_tokens": ["rotated-token"]})).unwrap(),
        )
        .unwrap();
    let rotate = async {
        while p.api.stats().unauthorized < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // … and then the secret gets the new token (no redeploy, no restart)
        secrets
            .put_secret_value()
            .secret_id(&arn)
            .secret_string("{\"token\": \"rotated-token\"}")
            .send()
            .await
            .unwrap();
    };
    let (st, ()) = tokio::join!(p.drain(Duration::from_secs(240)), rotate);
    assert!(st.drained, "{st:?}");
    assert!(
        p.stack.drain(&p.stack.dlq_url).await.is_empty(),
        "no dead letters"
    );
    let applied = p.applied();
    assert_eq!(
        applied.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys(&exp)
    );
    assert!(applied.values().all(|n| *n == 1));
    assert!(p.api.stats().unauthorized >= 3);
    assert!(
        p.logs().contains("the secret has changed"),
        "a consumer re-read the rotated secret"
    );
}

/// Upload `file` as `incoming/lab_results/<name>` and split it; the run's status.
async fn split_file(p: &Pipeline, name: &str, file: &std::path::Path) -> Value {
    let ev = p
        .stack
        .upload(&format!("incoming/lab_results/{name}"), file)
        .await;
    let r = p.splitter.invoke(&ev).await;
    r["results"][0].clone()
}

/// The stand-in API's records by record key.
fn api_records(p: &Pipeline) -> BTreeMap<String, casefeed_tools::api::Record> {
    p.api
        .records()
        .into_iter()
        .map(|r| (r.record_key.clone(), r))
        .collect()
}

/// A record changes in three successive files while the API keeps failing its older
/// versions (fault by record key): the API ends with the third file's content, and the
/// older messages end superseded — never applied, their fate in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_ends_with_the_newest_file_while_older_versions_keep_failing() {
    let p = pipeline(
        "newest",
        20,
        2,
        &[("BREAKER_THRESHOLD", "1000")],
        Faults::default(),
    )
    .await;
    let base = p.stack.path("e1.csv");
    gen(&["baseline", "--rows", "300", "--seed", "11"], &base);
    assert_eq!(split_file(&p, "e1.csv", &base).await["status"], "baseline");
    let ids: Vec<String> = read_rows(&base).keys().take(4).cloned().collect();
    let x = ids[0].clone();
    // X's old versions (below 4) keep failing with 503
    let mut f = p.api.faults();
    f.fail_records = [(x.clone(), 4u64)].into_iter().collect();
    p.api.set_faults(f);

    // file 2 changes X and three others; the others are applied, X's version 2 keeps failing
    // X takes `rev`; the three others keep their version-2 content
    let revise = |name: &str, rev: &str| {
        let out = p.stack.path(name);
        rewrite_csv(&base, &out, |id, row| {
            if id == x {
                row.insert("notes".into(), rev.to_string());
            } else if ids.iter().any(|i| i == id) {
                row.insert("notes".into(), "rev2".into());
            }
        });
        out
    };
    let f2 = revise("e2.csv", "rev2");
    let r2 = split_file(&p, "e2.csv", &f2).await;
    assert_eq!(
        (r2["status"].as_str(), r2["counts"]["sent"].as_u64()),
        (Some("applied"), Some(4)),
        "{r2}"
    );
    let st = p.drain(Duration::from_secs(8)).await;
    assert!(!st.drained, "X's version 2 is still failing: {st:?}");
    assert!(p.api.stats().server_errors_5xx >= 1);
    assert!(
        !api_records(&p).contains_key(&x),
        "version 2 of X was never applied"
    );

    // files 3 and 4 change X again: version 4 is applied, 2 and 3 are superseded
    for (name, rev) in [("e3.csv", "rev3"), ("e4.csv", "rev4")] {
        let f = revise(name, rev);
        let r = split_file(&p, name, &f).await;
        assert_eq!(
            (r["status"].as_str(), r["counts"]["sent"].as_u64()),
            (Some("applied"), Some(1)),
            "{r}"
        );
    }
    let st = p.drain(Duration::from_secs(120)).await;
    assert!(st.drained, "{st:?}");
    let recs = api_records(&p);
    assert_eq!(
        recs[&x].versions,
        [4],
        "only the newest version reached the API"
    );
    assert_eq!(recs[&x].fields.as_ref().unwrap()["notes"], "rev4");
    for id in &ids[1..] {
        assert_eq!(recs[id].versions, [2], "{id}");
        assert_eq!(recs[id].fields.as_ref().unwrap()["notes"], "rev2", "{id}");
    }
    assert_eq!(
        p.stack.ledger_fates(&x).await,
        [
            (2, "superseded".to_string()),
            (3, "superseded".to_string()),
            (4, "applied".to_string())
        ]
    );
    assert_eq!(
        p.stack.ledger_record("lab_results", &x).await,
        Some((Some(4), false))
    );
    assert!(
        p.stack.drain(&p.stack.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// Two files change the same records (2 × `E2E_ORDER_RECORDS`, default 300, messages; the
/// issue's 2,000-message run is `E2E_ORDER_RECORDS=1000`, ~11 minutes against moto) while
/// 30% of the calls fail transiently and every answer is slow, with three consumers: no
/// record's applied
/// versions ever decrease, no two calls for one record overlap, in-flight calls never
/// exceed the ceiling (consumers × RECORD_CONCURRENCY), every record ends with the last
/// file's content and every transition has its fate; then a DLQ replay of an old
/// transition is superseded, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_two_files_changing_the_same_records_end_with_the_last_one() {
    let faults = Faults {
        fail_5xx: 0.3,
        latency_ms: 20,
        seed: 17,
        ..Faults::default()
    };
    let env = [("RECORD_CONCURRENCY", "2"), ("BREAKER_THRESHOLD", "1000")];
    let p = pipeline("order", 20, 3, &env, faults).await;
    let n: usize = std::env::var("E2E_ORDER_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base = p.stack.path("o1.csv");
    // the changes stay under the flood guard (10%)
    let rows = (n * 12).max(4000).to_string();
    gen(&["baseline", "--rows", &rows, "--seed", "12"], &base);
    assert_eq!(split_file(&p, "o1.csv", &base).await["status"], "baseline");
    let changed: BTreeSet<String> = read_rows(&base).keys().take(n).cloned().collect();
    for (name, rev) in [("o2.csv", "rev2"), ("o3.csv", "rev3")] {
        let out = p.stack.path(name);
        rewrite_csv(&base, &out, |id, row| {
            if changed.contains(id) {
                row.insert("notes".into(), rev.to_string());
            }
        });
        let r = split_file(&p, name, &out).await;
        assert_eq!(
            (r["status"].as_str(), r["counts"]["sent"].as_u64()),
            (Some("applied"), Some(n as u64)),
            "{r}"
        );
    }
    let st = p.drain(Duration::from_secs(900)).await;
    assert!(st.drained, "{st:?}");
    let s = p.api.stats();
    assert!(
        s.server_errors_5xx as usize > n / 5,
        "faults were injected: {s:?}"
    );
    assert_eq!(
        s.overlapping_record_calls, 0,
        "no two calls for one record overlap: {s:?}"
    );
    assert_eq!(s.peak_in_flight_per_record, 1, "{s:?}");
    assert!(
        s.peak_in_flight <= 6,
        "peak {} > 3 consumers × 2",
        s.peak_in_flight
    );
    assert!(
        s.peak_in_flight >= 3,
        "the consumers really ran concurrently: {s:?}"
    );
    assert!(st.peak_concurrency <= 3, "{st:?}");
    let recs = api_records(&p);
    assert_eq!(recs.len(), n);
    for id in &changed {
        let r = &recs[id];
        assert!(
            r.versions.windows(2).all(|w| w[0] < w[1]),
            "{id}: {:?} goes backwards",
            r.versions
        );
        assert_eq!(r.versions.last(), Some(&3), "{id}: {:?}", r.versions);
        assert_eq!(r.fields.as_ref().unwrap()["notes"], "rev3", "{id}");
    }
    // every transition has its fate: version 3 applied (or found applied), version 2
    // applied before it or superseded by it
    let items = p.stack.ledger_items().await;
    let fates: Vec<_> = items
        .iter()
        .filter(|i| i["pk"].starts_with("key#"))
        .collect();
    assert_eq!(fates.len(), 2 * n, "one fate per transition");
    let superseded = fates.iter().filter(|i| i["fate"] == "superseded").count();
    let v2_applied = recs.values().filter(|r| r.versions.contains(&2)).count();
    assert_eq!(
        v2_applied + superseded,
        n,
        "each version 2 applied or superseded"
    );
    assert!(fates
        .iter()
        .filter(|i| i["version"] == "3")
        .all(|i| i["fate"] == "applied" || i["fate"] == "duplicate"));
    assert!(
        p.stack.drain(&p.stack.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );

    // an operator replays an old transition from the DLQ after the newer one was applied:
    // superseded, never sent
    let old = std::fs::read_to_string(&p.ledger)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["version"] == 2)
        .expect("some version 2 was applied before its version 3");
    let body = serde_json::json!({
        "v": 2, "feed": "lab_results", "run": "old-run",
        "source": {"bucket": BUCKET, "key": "incoming/lab_results/o2.csv", "etag": "e"},
        "change": old["change"], "record_key": old["record_key"], "version": 2,
        "idempotency_key": old["idempotency_key"], "fields": old["fields"]
    });
    let sqs = &p.stack.inner.sqs;
    sqs.send_message()
        .queue_url(&p.stack.dlq_url)
        .message_body(body.to_string())
        .send()
        .await
        .unwrap();
    let requests = p.api.stats().requests;
    let moved = casefeed_tools::dlq::replay(sqs, &p.stack.dlq_url, &p.stack.queue_url, 10, None)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let st = p.drain(Duration::from_secs(60)).await;
    assert!(st.drained, "{st:?}");
    assert_eq!(
        p.api.stats().requests,
        requests,
        "the old transition was not sent"
    );
    let rk = old["record_key"].as_str().unwrap();
    assert_eq!(api_records(&p)[rk].versions.last(), Some(&3));
    let ikey = old["idempotency_key"].as_str().unwrap();
    let fate = items_fate(&p, ikey).await;
    assert_eq!(fate.as_deref(), Some("superseded"));
}

async fn items_fate(p: &Pipeline, ikey: &str) -> Option<String> {
    let pk = casefeed::contract::layout::ledger_fate_pk("lab_results", ikey);
    p.stack
        .ledger_items()
        .await
        .into_iter()
        .find(|i| i["pk"] == pk)
        .map(|i| i["fate"].clone())
}

/// A consumer is killed (SIGKILL, with its emulator) while its API call is in flight: the
/// redelivered message finds the record's lease live and waits — no second call — until
/// the lease expires, then takes it over; the record is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_a_consumer_killed_mid_call_is_taken_over_after_expiry_and_applied_once() {
    let faults = Faults {
        latency_ms: 3000,
        ..Faults::default()
    };
    let env = [
        ("API_TIMEOUT_MS", "8000"),
        ("API_CONNECT_TIMEOUT_MS", "1000"),
        ("LEDGER_LEASE_SECS", "18"),
        ("LEDGER_WAIT_MS", "500"),
    ];
    let mut p = pipeline("killed", 10, 2, &env, faults).await;
    let base = p.stack.path("k1.csv");
    gen(&["baseline", "--rows", "100", "--seed", "13"], &base);
    assert_eq!(split_file(&p, "k1.csv", &base).await["status"], "baseline");
    let x = read_rows(&base).keys().next().cloned().unwrap();
    let next = p.stack.path("k2.csv");
    rewrite_csv(&base, &next, |id, row| {
        if id == x {
            row.insert("notes".into(), "rev2".into());
        }
    });
    assert_eq!(split_file(&p, "k2.csv", &next).await["counts"]["sent"], 1);
    let sqs = p.stack.inner.sqs.clone();
    // redelivered 2 s after the crash (the visibility timeout), while the lease is live
    sqs.set_queue_attributes()
        .queue_url(&p.stack.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "2",
        )
        .send()
        .await
        .unwrap();
    let got = sqs
        .receive_message()
        .queue_url(&p.stack.queue_url)
        .max_number_of_messages(1)
        .wait_time_seconds(5)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(got.len(), 1);
    let event =
        casefeed_tools::esm::sqs_event(&got, &casefeed_tools::esm::queue_arn(&p.stack.queue_url));
    let victim = &p.consumers[0];
    let call = victim.invoke(&event);
    // the call is in flight at the API (3 s latency) when the consumer dies
    let kill_after = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
    };
    tokio::select! {
        r = call => panic!("the invocation finished before the kill: {r:?}"),
        () = kill_after => {}
    }
    let leased_at = std::time::Instant::now();
    p.consumers[0].kill();
    assert_eq!(
        p.stack.ledger_record("lab_results", &x).await,
        Some((None, true)),
        "the dead consumer's lease is on the record"
    );
    let survivor = p.consumers.split_off(1);
    let cfg = EsmConfig {
        queue_url: p.stack.queue_url.clone(),
        batch_size: 10,
        wait_secs: 1,
        max_duration: Duration::from_secs(120),
    };
    let st = esm::drain(&sqs, &survivor, &cfg).await.expect("drain");
    assert!(st.drained, "{st:?}");
    assert!(
        leased_at.elapsed() >= Duration::from_secs(15),
        "the survivor waited out the lease ({:?})",
        leased_at.elapsed()
    );
    let recs = api_records(&p);
    assert_eq!(recs[&x].versions, [2], "applied once");
    assert_eq!(recs[&x].fields.as_ref().unwrap()["notes"], "rev2");
    assert_eq!(p.api.stats().overlapping_record_calls, 0);
    assert_eq!(
        p.stack.ledger_record("lab_results", &x).await,
        Some((Some(2), false))
    );
    let fates = p.stack.ledger_fates(&x).await;
    assert_eq!(fates.len(), 1);
    assert!(
        fates[0].1 == "applied" || fates[0].1 == "duplicate",
        "{fates:?}"
    );
    let logs: String = survivor.iter().map(|c| c.log_text()).collect();
    assert!(
        retries(&logs).iter().any(|r| r.0 == "record_busy"),
        "the survivor found the record busy and backed off"
    );
}

/// A feed with `removed = "send"`: one tombstone per record that left the export, applied
/// once (the API holds the record as removed, at the run's version); a re-run of the same
/// file after a crash before its commit sends the same tombstones, which have no second
/// effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_records_are_sent_as_tombstones_and_applied_once() {
    let feeds = FEEDS.replace(
        "first_file = \"baseline\"",
        "first_file = \"baseline\"\nremoved = \"send\"",
    );
    assert!(feeds.contains("removed = \"send\""));
    let p = pipeline_of("tombstones", &feeds, 5, 2, &[], Faults::default()).await;
    let base = p.stack.path("t1.csv");
    gen(&["baseline", "--rows", "400", "--seed", "21"], &base);
    assert_eq!(split_file(&p, "t1.csv", &base).await["status"], "baseline");
    let state = p.stack.get("state/lab_results/snapshot").await;
    let next = p.stack.path("t2.csv");
    let exp = gen(
        &[
            "next",
            "--prev",
            base.to_str().unwrap(),
            "--new",
            "0",
            "--changed",
            "0",
            "--removed",
            "6",
            "--seed",
            "22",
        ],
        &next,
    );
    assert_eq!(exp.removed.len(), 6);
    let ev = p.stack.upload("incoming/lab_results/t2.csv", &next).await;
    let r = p.splitter.invoke(&ev).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    assert_eq!(r["results"][0]["counts"]["sent"], 6, "{r}");
    let st = p.drain(Duration::from_secs(120)).await;
    assert!(st.drained, "{st:?}");
    let recs = api_records(&p);
    let removed: BTreeSet<String> = exp.removed.iter().cloned().collect();
    assert_eq!(recs.keys().cloned().collect::<BTreeSet<_>>(), removed);
    for (k, rec) in &recs {
        assert!(rec.removed && rec.fields.is_none(), "{k}: {rec:?}");
        assert_eq!(rec.versions, [2], "{k}");
    }
    assert_eq!(p.api.stats().applied, 6);

    // the run crashed before its commit and runs again: the same tombstones, no second effect
    p.stack
        .inner
        .s3
        .put_object()
        .bucket(BUCKET)
        .key("state/lab_results/snapshot")
        .body(state.expect("the baseline state").into())
        .send()
        .await
        .unwrap();
    let r = p.splitter.invoke(&ev).await;
    assert_eq!(r["results"][0]["counts"]["sent"], 6, "{r}");
    let st = p.drain(Duration::from_secs(120)).await;
    assert!(st.drained, "{st:?}");
    let s = p.api.stats();
    assert_eq!(s.applied, 6, "no second effect: {s:?}");
    assert_eq!(s.requests, 6, "the ledger answered the repeats: {s:?}");
    for k in &removed {
        assert_eq!(
            p.stack.ledger_fates(k).await,
            [(2, "applied".to_string())],
            "{k}"
        );
    }
}
