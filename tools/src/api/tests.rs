//! Tests of the stand-in API over real HTTP: every answer code, the record model (versions,
//! stale writes, removals), the ledger and restarts, faults, per-record concurrency and shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::arrivals::Arrival;
use super::config::{ApiConfig, ApiError};
use super::faults::Faults;
use super::handlers::now_ms;
use super::net::is_docker_bridge_address;
use super::server::ApiServer;
use super::stats::Stats;

const TOKEN: &str = "test-token";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn case_body(record_key: &str) -> Value {
    json!({"feed": "labs", "record_key": record_key, "change": "new",
           "fields": {"name": "Jane Roe", "phone": "555-0100"}})
}

async fn post_case(
    c: &reqwest::Client,
    s: &ApiServer,
    key: Option<&str>,
    token: Option<&str>,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    let mut rb = c.post(format!("{}/cases", s.url())).json(body);
    if let Some(k) = key {
        rb = rb.header("Idempotency-Key", k);
    }
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await
}

async fn status(c: &reqwest::Client, s: &ApiServer, key: &str, record: &str) -> u16 {
    post_case(c, s, Some(key), Some(TOKEN), &case_body(record))
        .await
        .expect("answer")
        .status()
        .as_u16()
}

fn temp_ledger(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "casefeed-api-{name}-{}-{}.jsonl",
        std::process::id(),
        now_ms()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

async fn server_with(faults: Faults, ledger: Option<PathBuf>) -> ApiServer {
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.faults = faults;
    cfg.ledger = ledger;
    ApiServer::start(cfg).await.expect("start")
}

fn ledger_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger line is JSON"))
        .collect()
}

#[tokio::test]
async fn api_applies_once_then_409_with_one_ledger_line() {
    let path = temp_ledger("once");
    let s = server_with(Faults::default(), Some(path.clone())).await;
    let c = client();
    let r = post_case(&c, &s, Some("k-1"), Some(TOKEN), &case_body("R1"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(status(&c, &s, "k-1", "R1").await, 409);
    assert_eq!(status(&c, &s, "k-1", "R1").await, 409);
    let lines = ledger_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["idempotency_key"], "k-1");
    assert_eq!(lines[0]["feed"], "labs");
    assert_eq!(lines[0]["record_key"], "R1");
    assert_eq!(lines[0]["change"], "new");
    assert_eq!(
        lines[0]["version"], 0,
        "a body without a version is version 0"
    );
    assert!(lines[0]["at"].as_str().unwrap().ends_with('Z'));
    // The ledger is the API's store: it keeps the record's fields to rebuild it on restart.
    assert_eq!(lines[0]["fields"]["name"], "Jane Roe");
    let st = s.stats();
    assert_eq!((st.requests, st.applied, st.replays), (3, 1, 2));
    assert_eq!(s.applied_keys(), vec!["k-1".to_string()]);
    s.shutdown().await;

    // A restarted server with the same ledger still knows the key.
    let s = server_with(Faults::default(), Some(path.clone())).await;
    assert_eq!(status(&c, &s, "k-1", "R1").await, 409);
    assert_eq!(status(&c, &s, "k-2", "R2").await, 201);
    assert_eq!(ledger_lines(&path).len(), 2);
    s.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn api_401_without_or_with_wrong_token() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let r = post_case(&c, &s, Some("k"), None, &case_body("R"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post_case(&c, &s, Some("k"), Some("wrong-token"), &case_body("R"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post_case(&c, &s, Some("k"), Some("test-toke"), &case_body("R"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(s.stats().unauthorized, 3);
    assert!(s.applied_keys().is_empty());
    // Control needs the token too.
    let r = c
        .post(format!("{}/control", s.url()))
        .json(&json!({"fail_5xx": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(s.faults().fail_5xx, 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn api_400_and_413_for_bad_requests_without_echoing_values() {
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.max_body_bytes = 512;
    let s = ApiServer::start(cfg).await.unwrap();
    let c = client();
    let url = format!("{}/cases", s.url());
    // No Idempotency-Key.
    let r = post_case(&c, &s, None, Some(TOKEN), &case_body("R"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Not JSON.
    let r = c
        .post(&url)
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", "k")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Wrong shape, with a value that must not come back in the error.
    let body =
        json!({"feed": "labs", "record_key": "R", "change": "SECRET-VALUE-42", "fields": {}});
    let r = post_case(&c, &s, Some("k"), Some(TOKEN), &body)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains("SECRET"), "error echoes a value: {text}");
    let body = json!({"feed": "labs", "record_key": "R", "change": "new", "fields": "x"});
    let r = post_case(&c, &s, Some("k"), Some(TOKEN), &body)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body = json!({"feed": "labs", "change": "new", "fields": {}});
    let r = post_case(&c, &s, Some("k"), Some(TOKEN), &body)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Too large: declared length, and a chunked body without a length.
    let big = json!({"feed": "labs", "record_key": "R", "change": "new",
                     "fields": {"notes": "x".repeat(2000)}});
    let r = post_case(&c, &s, Some("k"), Some(TOKEN), &big)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(raw_chunked_status(&s, 3, 400).await, 413);
    assert_eq!(s.stats().bad_requests, 7);
    assert!(s.applied_keys().is_empty());
    // Still works after all that.
    assert_eq!(status(&c, &s, "k", "R").await, 201);
    s.shutdown().await;
}

/// Sends a chunked `POST /cases` (no Content-Length) over a raw socket; returns the status.
async fn raw_chunked_status(s: &ApiServer, chunks: usize, chunk_len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = TcpStream::connect(s.addr).await.unwrap();
    let mut req = format!(
        "POST /cases HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Idempotency-Key: chunked\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr
    );
    for _ in 0..chunks {
        req.push_str(&format!("{chunk_len:x}\r\n{}\r\n", " ".repeat(chunk_len)));
    }
    req.push_str("0\r\n\r\n");
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = sock.write_all(req.as_bytes()).await;
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut head)).await;
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test]
async fn api_422_for_reject_lists_permanently() {
    let faults = Faults {
        reject_keys: vec!["bad-key".into()],
        reject_record_keys: vec!["BAD-RECORD".into()],
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    let c = client();
    for _ in 0..2 {
        let r = post_case(&c, &s, Some("bad-key"), Some(TOKEN), &case_body("R"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 422);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("reject"));
        assert_eq!(status(&c, &s, "other-key", "BAD-RECORD").await, 422);
    }
    assert_eq!(s.stats().rejected_422, 4);
    assert!(s.applied_keys().is_empty());
    assert_eq!(status(&c, &s, "good-key", "R").await, 201);
    s.shutdown().await;
}

#[tokio::test]
async fn api_429_carries_retry_after() {
    let faults = Faults {
        rate_limit_429: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    let c = client();
    let r = post_case(&c, &s, Some("k"), Some(TOKEN), &case_body("R"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert!(s.applied_keys().is_empty());
    // Lift it over HTTP.
    let r = c
        .post(format!("{}/control", s.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"rate_limit_429": 0.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(status(&c, &s, "k", "R").await, 201);
    let st = s.stats();
    assert_eq!((st.rate_limited_429, st.applied), (1, 1));
    s.shutdown().await;
}

#[tokio::test]
async fn api_outage_answers_503_then_recovers() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let control = |body: Value| {
        c.post(format!("{}/control", s.url()))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    // An open-ended outage, ended explicitly.
    assert_eq!(
        control(json!({"outage_secs": 60})).await.unwrap().status(),
        200
    );
    assert_eq!(status(&c, &s, "k1", "R1").await, 503);
    // Even without credentials: the outage comes first.
    let r = post_case(&c, &s, Some("k1"), None, &case_body("R1"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        control(json!({"outage_secs": 0})).await.unwrap().status(),
        200
    );
    assert_eq!(status(&c, &s, "k1", "R1").await, 201);
    // A short outage that ends by itself.
    assert_eq!(
        control(json!({"outage_secs": 0.4})).await.unwrap().status(),
        200
    );
    assert_eq!(status(&c, &s, "k2", "R2").await, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&c, &s, "k2", "R2").await, 201);
    let st = s.stats();
    assert_eq!((st.server_errors_5xx, st.applied), (3, 2));
    // Bad control bodies.
    let r = control(json!({"fail_5xx": 1.5})).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = control(json!({"no_such_knob": 1})).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(s.faults().fail_5xx, 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn api_50_concurrent_same_key_exactly_one_201() {
    let path = temp_ledger("concurrent");
    let faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let s = server_with(faults, Some(path.clone())).await;
    let c = client();
    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        let c = c.clone();
        let url = format!("{}/cases", s.url());
        tasks.spawn(async move {
            c.post(url)
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", "same-key")
                .json(&case_body("R"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut codes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        codes.push(r.unwrap());
    }
    assert_eq!(codes.iter().filter(|&&c| c == 201).count(), 1);
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 49);
    assert_eq!(ledger_lines(&path).len(), 1);
    let st = s.stats();
    assert_eq!((st.applied, st.replays, st.in_flight), (1, 49, 0));
    s.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn api_peak_in_flight_with_latency() {
    let faults = Faults {
        latency_ms: 1_000,
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    let c = client();
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let c = c.clone();
        let url = format!("{}/cases", s.url());
        tasks.spawn(async move {
            c.post(url)
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", format!("key-{i}"))
                .json(&case_body(&format!("R{i}")))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    // All 8 are seen in flight at once over GET /stats while they sleep.
    let mut mid = Stats::default();
    for _ in 0..60 {
        mid = c
            .get(format!("{}/stats", s.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if mid.in_flight == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mid.in_flight, 8);
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), 201);
    }
    let st = s.stats();
    assert_eq!((st.peak_in_flight, st.in_flight, st.applied), (8, 0, 8));
    // Reset clears counters and records but not the applied keys.
    assert_eq!(s.records().len(), 8);
    let r = c
        .post(format!("{}/reset", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.stats(), Stats::default());
    assert_eq!(s.applied_keys().len(), 8);
    assert!(s.records().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn api_apply_then_drop_client_errors_ledger_has_key_retry_409() {
    let path = temp_ledger("drop");
    let faults = Faults {
        apply_then_drop: 1.0,
        ..Faults::default()
    };
    let s = server_with(faults, Some(path.clone())).await;
    let c = client();
    let err = post_case(&c, &s, Some("drop-key"), Some(TOKEN), &case_body("R"))
        .await
        .expect_err("the connection must be dropped without an answer");
    eprintln!("apply_then_drop: the client saw {err:?}");
    assert!(!err.is_timeout(), "expected a dropped connection: {err:?}");
    assert!(err.is_request(), "expected a request error: {err:?}");
    assert_eq!(s.applied_keys(), vec!["drop-key".to_string()]);
    assert_eq!(ledger_lines(&path).len(), 1);
    // The handler's future is dropped with the connection; give that a moment.
    for _ in 0..100 {
        if s.stats().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = s.stats();
    assert_eq!(
        (st.applied, st.dropped_after_apply, st.in_flight),
        (1, 1, 0)
    );
    // The retry of the same key is a replay even while drops are on (no second effect)…
    assert_eq!(status(&c, &s, "drop-key", "R").await, 409);
    // …and with them off.
    s.set_faults(Faults::default());
    assert_eq!(status(&c, &s, "drop-key", "R").await, 409);
    assert_eq!(ledger_lines(&path).len(), 1);
    s.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn api_timeout_share_makes_a_client_time_out() {
    let faults = Faults {
        timeout_share: 1.0,
        timeout_ms: 3_000,
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = post_case(&c, &s, Some("k"), Some(TOKEN), &case_body("R"))
        .await
        .expect_err("must time out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(s.stats().timeouts, 1);
    assert!(s.applied_keys().is_empty());
    // Shutdown does not wait for the sleeping request beyond its grace period.
    let t = std::time::Instant::now();
    s.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_millis(2_800),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn api_shares_are_deterministic_by_seed() {
    let faults = Faults {
        fail_5xx: 0.5,
        seed: 42,
        ..Faults::default()
    };
    let c = client();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let s = server_with(faults.clone(), None).await;
        let mut codes = Vec::new();
        for i in 0..40 {
            codes.push(status(&c, &s, &format!("k{i}"), &format!("R{i}")).await);
        }
        s.shutdown().await;
        runs.push(codes);
    }
    assert_eq!(runs[0], runs[1]);
    let fails = runs[0].iter().filter(|&&c| c == 503).count();
    assert!((8..=32).contains(&fails), "{fails} of 40 failed");
    assert!(runs[0].iter().all(|&c| c == 503 || c == 201));
}

#[tokio::test]
async fn api_healthz_stats_shape_and_loopback_only() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let r = c.get(format!("{}/healthz", s.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = c
        .get(format!("{}/stats", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for k in [
        "requests",
        "applied",
        "replays",
        "stale_409",
        "rejected_422",
        "rate_limited_429",
        "over_limit_429",
        "last_429_at_ms",
        "server_errors_5xx",
        "unauthorized",
        "bad_requests",
        "dropped_after_apply",
        "timeouts",
        "hung",
        "in_flight",
        "peak_in_flight",
        "peak_in_flight_per_record",
        "overlapping_record_calls",
        "peak_per_second",
        "peak_per_calendar_second",
    ] {
        assert!(v[k].is_u64(), "missing {k} in {v}");
    }
    s.shutdown().await;
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(
        ApiServer::start(cfg.clone()).await,
        Err(ApiError::Config(_))
    ));
    // allowing the docker bridge does not open any other address
    cfg.allow_docker_bridge = true;
    assert!(matches!(
        ApiServer::start(cfg).await,
        Err(ApiError::Config(_))
    ));
    assert!(!is_docker_bridge_address("127.0.0.1".parse().unwrap()));
    assert!(!is_docker_bridge_address("0.0.0.0".parse().unwrap()));
    assert!(!is_docker_bridge_address("::1".parse().unwrap()));
}

// ---- the record model: versions, stale writes, removals, restarts ----

/// A version-2 body: `change` at `version`, from export `etag`; a removal has no fields.
fn versioned(record_key: &str, change: &str, version: u64, name: &str) -> Value {
    let mut body = json!({"feed": "labs", "record_key": record_key, "change": change,
        "version": version,
        "source": {"bucket": "data", "key": "incoming/labs/export.csv", "etag": format!("e{version}")},
        "fields": {"name": name}});
    if change == "removed" {
        body["fields"] = json!({});
    }
    body
}

/// Posts `body` with `key` (and `Casefeed-Version` when given); the status and JSON answer.
async fn post_json(
    c: &reqwest::Client,
    s: &ApiServer,
    key: &str,
    version_header: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut rb = c
        .post(format!("{}/cases", s.url()))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .json(body);
    if let Some(v) = version_header {
        rb = rb.header("Casefeed-Version", v);
    }
    let r = rb.send().await.expect("answer");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// `GET /records` over HTTP.
async fn get_records(c: &reqwest::Client, s: &ApiServer) -> Value {
    let r = c
        .get(format!("{}/records", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn api_refuses_a_version_at_or_below_the_records_with_409_stale_and_applies_nothing() {
    let path = temp_ledger("stale");
    let s = server_with(Faults::default(), Some(path.clone())).await;
    let c = client();
    let (code, body) = post_json(&c, &s, "k5", None, &versioned("R1", "new", 5, "Ann")).await;
    assert_eq!(
        (code, body),
        (201, json!({"outcome": "applied", "version": 5}))
    );
    for (key, version) in [("k4", 4), ("k5-again", 5)] {
        let (code, body) = post_json(
            &c,
            &s,
            key,
            None,
            &versioned("R1", "changed", version, "Old"),
        )
        .await;
        assert_eq!(
            (code, body),
            (409, json!({"outcome": "stale", "current_version": 5})),
            "version {version}"
        );
    }
    // Nothing applied: the record, the keys and the file are as after the first write.
    let r = s.records();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].version, &r[0].versions), (5, &vec![5]));
    assert_eq!(r[0].fields.as_ref().unwrap()["name"], "Ann");
    assert_eq!(s.applied_keys(), vec!["k5".to_string()]);
    assert_eq!(ledger_lines(&path).len(), 1);
    let st = s.stats();
    assert_eq!((st.applied, st.stale_409, st.replays), (1, 2, 0));
    // A newer version passes; the same record in another feed has its own versions.
    let (code, _) = post_json(&c, &s, "k6", None, &versioned("R1", "changed", 6, "New")).await;
    assert_eq!(code, 201);
    let mut other_feed = versioned("R1", "new", 1, "Bo");
    other_feed["feed"] = json!("clinics");
    assert_eq!(post_json(&c, &s, "c1", None, &other_feed).await.0, 201);
    s.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn api_answers_a_key_applied_before_with_409_duplicate_whatever_its_version() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    assert_eq!(
        post_json(&c, &s, "k1", None, &versioned("R1", "new", 1, "Ann"))
            .await
            .0,
        201
    );
    for version in [1, 9] {
        let (code, body) = post_json(
            &c,
            &s,
            "k1",
            None,
            &versioned("R1", "changed", version, "X"),
        )
        .await;
        assert_eq!((code, body), (409, json!({"outcome": "duplicate"})));
    }
    let st = s.stats();
    assert_eq!((st.applied, st.replays, st.stale_409), (1, 2, 0));
    assert_eq!(s.records()[0].versions, vec![1]);
    s.shutdown().await;
}

#[tokio::test]
async fn api_lists_each_records_acknowledged_versions_in_order_sorted_by_feed_and_key() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    for (key, record, change, version) in [
        ("a", "R2", "new", 1),
        ("b", "R1", "new", 1),
        ("c", "R2", "changed", 2),
        ("d", "R2", "changed", 5),
        ("e", "R2", "changed", 3), // stale: not acknowledged
    ] {
        post_json(&c, &s, key, None, &versioned(record, change, version, key)).await;
    }
    let mut z = versioned("A0", "new", 7, "z");
    z["feed"] = json!("zeta");
    post_json(&c, &s, "z", None, &z).await;
    let v = get_records(&c, &s).await;
    assert_eq!(v["count"], 3);
    let recs = v["records"].as_array().unwrap();
    let order: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["feed"].as_str().unwrap(),
                r["record_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [("labs", "R1"), ("labs", "R2"), ("zeta", "A0")]);
    assert_eq!(
        recs[1],
        json!({"feed": "labs", "record_key": "R2", "version": 5, "versions": [1, 2, 5],
               "removed": false, "fields": {"name": "d"},
               "source": {"bucket": "data", "key": "incoming/labs/export.csv", "etag": "e5"}})
    );
    assert_eq!(recs[0]["versions"], json!([1]));
    // The same as the in-process view, and only with the token.
    let typed: Vec<super::ledger::Record> = serde_json::from_value(v["records"].clone()).unwrap();
    assert_eq!(typed, s.records());
    let r = c.get(format!("{}/records", s.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.shutdown().await;
}

#[tokio::test]
async fn api_removed_clears_the_fields_keeps_the_versions_and_a_newer_version_restores_it() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    assert_eq!(
        post_json(&c, &s, "k1", None, &versioned("R1", "new", 1, "Ann"))
            .await
            .0,
        201
    );
    let mut tomb = versioned("R1", "removed", 2, "");
    tomb.as_object_mut().unwrap().remove("fields");
    assert_eq!(post_json(&c, &s, "k2", None, &tomb).await.0, 201);
    let r = &get_records(&c, &s).await["records"][0];
    assert_eq!((&r["removed"], &r["fields"]), (&json!(true), &Value::Null));
    assert_eq!((&r["version"], &r["versions"]), (&json!(2), &json!([1, 2])));
    // A removal does not reopen older versions…
    let (code, body) = post_json(&c, &s, "k1b", None, &versioned("R1", "new", 1, "Ann")).await;
    assert_eq!((code, &body["outcome"]), (409, &json!("stale")));
    // …and a newer one brings the record back.
    assert_eq!(
        post_json(&c, &s, "k3", None, &versioned("R1", "new", 3, "Bo"))
            .await
            .0,
        201
    );
    let r = &s.records()[0];
    assert!(!r.removed);
    assert_eq!(r.versions, vec![1, 2, 3]);
    assert_eq!(r.fields.as_ref().unwrap()["name"], "Bo");
    // Shapes: a removal with fields, a change without, are bad requests.
    let mut bad = versioned("R1", "removed", 4, "");
    bad["fields"] = json!({"name": "Ann"});
    assert_eq!(post_json(&c, &s, "k4", None, &bad).await.0, 400);
    let mut bad = versioned("R1", "changed", 4, "");
    bad.as_object_mut().unwrap().remove("fields");
    assert_eq!(post_json(&c, &s, "k4", None, &bad).await.0, 400);
    assert_eq!(s.stats().bad_requests, 2);
    s.shutdown().await;
}

#[tokio::test]
async fn api_fail_records_fails_only_the_versions_below_the_listed_one() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let r = c
        .post(format!("{}/control", s.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"fail_records": {"R1": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.faults().fail_records.get("R1"), Some(&3));
    for attempt in 0..2 {
        for version in [1, 2] {
            let body = versioned("R1", "changed", version, "x");
            let key = format!("k{version}");
            assert_eq!(
                post_json(&c, &s, &key, None, &body).await.0,
                503,
                "{attempt}"
            );
        }
    }
    // Another record is not affected at any version; the listed one passes from 3 on.
    assert_eq!(
        post_json(&c, &s, "o1", None, &versioned("R2", "new", 1, "x"))
            .await
            .0,
        201
    );
    assert_eq!(
        post_json(&c, &s, "k3", None, &versioned("R1", "new", 3, "x"))
            .await
            .0,
        201
    );
    assert_eq!(
        post_json(&c, &s, "k4", None, &versioned("R1", "changed", 4, "x"))
            .await
            .0,
        201
    );
    let st = s.stats();
    assert_eq!((st.server_errors_5xx, st.applied), (4, 3));
    assert_eq!(s.records()[0].versions, vec![3, 4]);
    s.shutdown().await;
}

#[tokio::test]
async fn api_400_when_the_casefeed_version_header_disagrees_with_the_body() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let body = versioned("R1", "new", 7, "Jane Roe");
    for header in ["6", "abc", "-1"] {
        let (code, answer) = post_json(&c, &s, "k", Some(header), &body).await;
        assert_eq!(code, 400, "Casefeed-Version: {header}");
        assert!(!answer.to_string().contains("Jane"), "{answer}");
    }
    // A header without a version in the body disagrees with its version 0.
    let (code, _) = post_json(&c, &s, "k", Some("7"), &case_body("R1")).await;
    assert_eq!(code, 400);
    assert_eq!(s.stats().bad_requests, 4);
    assert!(s.records().is_empty());
    assert_eq!(post_json(&c, &s, "k", Some("7"), &body).await.0, 201);
    s.shutdown().await;
}

/// Two `POST /cases` at once, started together; their statuses.
async fn two_at_once(
    c: &reqwest::Client,
    s: &ApiServer,
    a: (&str, Value),
    b: (&str, Value),
) -> Vec<u16> {
    let mut tasks = JoinSet::new();
    for (key, body) in [a, b] {
        let rb = c
            .post(format!("{}/cases", s.url()))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .json(&body);
        tasks.spawn(async move { rb.send().await.unwrap().status().as_u16() });
    }
    let mut codes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        codes.push(r.unwrap());
    }
    codes
}

#[tokio::test]
async fn api_counts_an_overlap_when_two_slow_calls_for_one_record_overlap_and_not_for_two_records()
{
    let faults = Faults {
        latency_ms: 400,
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    let c = client();
    let codes = two_at_once(
        &c,
        &s,
        ("a1", versioned("A", "new", 1, "x")),
        ("b1", versioned("B", "new", 1, "x")),
    )
    .await;
    assert_eq!(codes, [201, 201]);
    let st = s.stats();
    assert_eq!(
        (
            st.peak_in_flight,
            st.peak_in_flight_per_record,
            st.overlapping_record_calls
        ),
        (2, 1, 0)
    );
    let codes = two_at_once(
        &c,
        &s,
        ("a2", versioned("A", "changed", 2, "x")),
        ("a3", versioned("A", "changed", 3, "x")),
    )
    .await;
    // whichever came second may have found the other's newer version
    assert!(
        codes.contains(&201) && codes.iter().all(|&c| c == 201 || c == 409),
        "{codes:?}"
    );
    let st = s.stats();
    assert_eq!(
        (st.peak_in_flight_per_record, st.overlapping_record_calls),
        (2, 1)
    );
    // One call after the other is no overlap.
    s.reset().unwrap();
    for (key, v) in [("a4", 4), ("a5", 5)] {
        assert_eq!(
            post_json(&c, &s, key, None, &versioned("A", "changed", v, "x"))
                .await
                .0,
            201
        );
    }
    let st = s.stats();
    assert_eq!(
        (st.peak_in_flight_per_record, st.overlapping_record_calls),
        (1, 0)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn api_a_record_is_no_longer_in_flight_after_injected_faults_timeouts_and_dropped_connections(
) {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let fast = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let fault_sets = [
        json!({"fail_5xx": 1.0}),
        json!({"fail_5xx": 0.0, "rate_limit_429": 1.0}),
        json!({"rate_limit_429": 0.0, "reject_record_keys": ["A"]}),
        json!({"reject_record_keys": [], "fail_records": {"A": 100}}),
        json!({"fail_records": {}, "timeout_share": 1.0, "timeout_ms": 300}),
        json!({"timeout_share": 0.0, "apply_then_drop": 1.0}),
    ];
    for (i, patch) in fault_sets.iter().enumerate() {
        let patch: super::faults::FaultsPatch = serde_json::from_value(patch.clone()).unwrap();
        s.patch_faults(&patch).unwrap();
        let body = versioned("A", "new", i as u64 + 1, "x");
        let key = format!("k{i}");
        let _ = fast
            .post(format!("{}/cases", s.url()))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
    }
    s.set_faults(Faults::default());
    // The timed-out call sleeps on for its timeout_ms; wait for every call to end.
    for _ in 0..100 {
        if s.stats().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.stats().in_flight, 0);
    let st = s.stats();
    assert_eq!(
        (
            st.server_errors_5xx,
            st.rate_limited_429,
            st.rejected_422,
            st.timeouts
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(st.dropped_after_apply, 1);
    // No call for A is left counted: the next one is alone for its record.
    assert_eq!(
        post_json(&c, &s, "next", None, &versioned("A", "changed", 10, "x"))
            .await
            .0,
        201
    );
    let st = s.stats();
    assert_eq!(
        (st.peak_in_flight_per_record, st.overlapping_record_calls),
        (1, 0)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn api_restart_from_the_ledger_file_restores_the_records() {
    let path = temp_ledger("records");
    let s = server_with(Faults::default(), Some(path.clone())).await;
    let c = client();
    for (key, record, change, version) in [
        ("a", "R1", "new", 1),
        ("b", "R1", "changed", 2),
        ("c", "R2", "new", 1),
        ("d", "R2", "removed", 3),
    ] {
        let body = versioned(record, change, version, key);
        assert_eq!(post_json(&c, &s, key, None, &body).await.0, 201);
    }
    let before = s.records();
    s.shutdown().await;
    // A line of an older server (no version, no fields), then a torn last line.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(
            b"{\"idempotency_key\":\"old\",\"feed\":\"archive\",\"record_key\":\"X\",\
              \"change\":\"new\",\"at\":\"2024-01-01T00:00:00.000Z\"}\n\
              {\"idempotency_key\":\"torn\",\"feed\":\"labs\",\"record_key\":\"R9\",\"cha",
        )
        .unwrap();
    }
    let s = server_with(Faults::default(), Some(path.clone())).await;
    let after = s.records();
    assert_eq!(after.len(), 3);
    let old = &after[0];
    assert_eq!(
        (old.feed.as_str(), old.record_key.as_str()),
        ("archive", "X")
    );
    assert_eq!(
        (old.version, &old.versions, old.removed),
        (0, &vec![0], false)
    );
    assert_eq!(after[1..], before[..]);
    assert!(after[2].removed && after[2].fields.is_none());
    // The restored versions and keys still decide.
    assert_eq!(
        post_json(&c, &s, "b", None, &versioned("R1", "changed", 2, "b"))
            .await
            .1,
        json!({"outcome": "duplicate"})
    );
    assert_eq!(
        post_json(&c, &s, "e", None, &versioned("R1", "changed", 2, "e"))
            .await
            .1,
        json!({"outcome": "stale", "current_version": 2})
    );
    assert_eq!(
        post_json(&c, &s, "torn", None, &versioned("R9", "new", 1, "t"))
            .await
            .0,
        201
    );
    s.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn api_reset_forgets_the_records_but_not_the_keys_and_a_restart_agrees() {
    let path = temp_ledger("reset");
    let s = server_with(Faults::default(), Some(path.clone())).await;
    let c = client();
    assert_eq!(
        post_json(&c, &s, "a", None, &versioned("R1", "new", 5, "a"))
            .await
            .0,
        201
    );
    let r = c
        .post(format!("{}/reset", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        get_records(&c, &s).await,
        json!({"count": 0, "records": []})
    );
    s.shutdown().await;
    let s = server_with(Faults::default(), Some(path.clone())).await;
    assert!(s.records().is_empty());
    assert_eq!(s.applied_keys(), vec!["a".to_string()]);
    assert_eq!(
        post_json(&c, &s, "a", None, &versioned("R1", "new", 5, "a"))
            .await
            .0,
        409
    );
    // The record starts afresh: a lower version than before the reset applies.
    assert_eq!(
        post_json(&c, &s, "b", None, &versioned("R1", "new", 1, "b"))
            .await
            .0,
        201
    );
    assert_eq!(s.records()[0].versions, vec![1]);
    s.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn api_accepts_what_the_consumers_http_client_sends_and_refuses_its_stale_versions() {
    use casefeed::adapters::http_api::HttpApi;
    use casefeed::contract::envelope::{Change, Envelope, EnvelopeSource, ENVELOPE_VERSION};
    use casefeed::ports::api::{Api, ApiAnswer};

    let s = server_with(Faults::default(), None).await;
    let t = Duration::from_secs(5);
    let api = HttpApi::new(&s.url(), TOKEN, true, t, t).unwrap();
    let envelope = |key: &str, change: Change, version: u64| Envelope {
        v: ENVELOPE_VERSION,
        feed: "labs".into(),
        run: "run".into(),
        source: EnvelopeSource {
            bucket: "data".into(),
            key: "incoming/labs/export.csv".into(),
            etag: format!("e{version}"),
            version_id: Some("v1".into()),
        },
        change,
        record_key: "CA|7".into(),
        version,
        idempotency_key: key.into(),
        fields: match change {
            Change::Removed => Default::default(),
            _ => [("name".to_string(), format!("n{version}"))].into(),
        },
        sent_at_ms: None,
        uploaded_at_ms: None,
        retry_window_secs: None,
    };
    let code = |a: ApiAnswer| match a {
        ApiAnswer::Status { code, .. } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(api.deliver(&envelope("k1", Change::New, 1)).await),
        201
    );
    assert_eq!(
        code(api.deliver(&envelope("k1", Change::New, 1)).await),
        409
    );
    assert_eq!(
        code(api.deliver(&envelope("k3", Change::Changed, 3)).await),
        201
    );
    assert_eq!(
        code(api.deliver(&envelope("k2", Change::Changed, 2)).await),
        409
    );
    assert_eq!(
        code(api.deliver(&envelope("k4", Change::Removed, 4)).await),
        201
    );
    let st = s.stats();
    assert_eq!(
        (st.applied, st.replays, st.stale_409, st.bad_requests),
        (3, 1, 1, 0)
    );
    let r = &s.records()[0];
    assert_eq!(
        (r.record_key.as_str(), &r.versions, r.removed),
        ("CA|7", &vec![1, 3, 4], true)
    );
    let src = r.source.as_ref().unwrap();
    assert_eq!(
        (src.etag.as_str(), src.version_id.as_deref()),
        ("e4", Some("v1"))
    );
    s.shutdown().await;
}

// ---- the arrivals log, the per-second peaks, the rate limit, token rotation, hangs ----

/// `GET /arrivals` (with `?since_ms=N` when given) over HTTP with the admin token.
async fn get_arrivals(c: &reqwest::Client, s: &ApiServer, since_ms: Option<u64>) -> Vec<Arrival> {
    let url = match since_ms {
        Some(n) => format!("{}/arrivals?since_ms={n}", s.url()),
        None => format!("{}/arrivals", s.url()),
    };
    let r = c.get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    serde_json::from_value(v["arrivals"].clone()).unwrap()
}

/// `POST /control` over HTTP with the admin token; the status.
async fn control(c: &reqwest::Client, s: &ApiServer, body: Value) -> u16 {
    c.post(format!("{}/control", s.url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `GET /stats` over HTTP.
async fn http_stats(c: &reqwest::Client, s: &ApiServer) -> Stats {
    c.get(format!("{}/stats", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The peaks computed the slow way from a log: the most arrivals in any `[t-999, t]` window
/// (every `t` of a millisecond tried), and in any calendar second.
fn brute_force_peaks(log: &[Arrival]) -> (u64, u64) {
    let (Some(first), Some(last)) = (log.first(), log.last()) else {
        return (0, 0);
    };
    let mut sliding = 0;
    for t in first.at_ms..=last.at_ms + 999 {
        let n = log
            .iter()
            .filter(|a| a.at_ms <= t && a.at_ms + 999 >= t)
            .count();
        sliding = sliding.max(n as u64);
    }
    let mut per_second = std::collections::BTreeMap::<u64, u64>::new();
    for a in log {
        *per_second.entry(a.at_ms / 1000).or_default() += 1;
    }
    (sliding, per_second.values().copied().max().unwrap_or(0))
}

#[tokio::test]
async fn api_arrivals_log_has_every_post_with_its_status_record_and_version_and_reset_clears_it() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let before = now_ms();
    assert_eq!(
        post_json(&c, &s, "k1", None, &versioned("R1", "new", 3, "Ann"))
            .await
            .0,
        201
    );
    assert_eq!(
        post_json(&c, &s, "k1", None, &versioned("R1", "new", 3, "Ann"))
            .await
            .0,
        409
    );
    let r = post_case(&c, &s, Some("k2"), Some("wrong"), &case_body("R2"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post_case(&c, &s, None, Some(TOKEN), &case_body("R2"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(status(&c, &s, "k3", "R3").await, 201);
    let after = now_ms();

    let log = get_arrivals(&c, &s, None).await;
    assert_eq!(log, s.arrivals());
    let seen: Vec<(u16, Option<&str>, Option<u64>)> = log
        .iter()
        .map(|a| (a.status, a.record_key.as_deref(), a.version))
        .collect();
    assert_eq!(
        seen,
        [
            (201, Some("R1"), Some(3)),
            (409, Some("R1"), Some(3)),
            (401, None, None),
            (400, None, None),
            (201, Some("R3"), Some(0)),
        ]
    );
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert!(log.iter().all(|a| (before..=after).contains(&a.at_ms)));
    // The JSON shape: every key present, null before the body was parsed.
    let v: Value = c
        .get(format!("{}/arrivals", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["arrivals"][2],
        json!({"at_ms": log[2].at_ms, "status": 401, "record_key": null, "version": null})
    );

    // since_ms: from an arrival on, inclusive; in the future, nothing.
    let t = log[4].at_ms;
    let tail = get_arrivals(&c, &s, Some(t)).await;
    assert_eq!(tail, s.arrivals_since(t));
    assert!(!tail.is_empty() && tail.iter().all(|a| a.at_ms >= t));
    assert_eq!(tail.last(), log.last());
    assert!(get_arrivals(&c, &s, Some(after + 60_000)).await.is_empty());
    assert_eq!(get_arrivals(&c, &s, Some(0)).await, log);
    // Only with the admin token, and only since_ms.
    let r = c.get(format!("{}/arrivals", s.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for q in ["since_ms=abc", "since_ms=-1", "other=1"] {
        let r = c
            .get(format!("{}/arrivals?{q}", s.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{q}");
    }

    // A dropped connection is logged with status 0, its record known.
    s.set_faults(Faults {
        apply_then_drop: 1.0,
        ..Faults::default()
    });
    // The arrivals so far are at least a millisecond older than `since`.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let since = now_ms();
    // A fresh client: on a pooled connection the client would resend the dropped request.
    assert!(
        post_case(&client(), &s, Some("k4"), Some(TOKEN), &case_body("R4"))
            .await
            .is_err()
    );
    for _ in 0..100 {
        if s.stats().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = s.arrivals_since(since);
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(
        (dropped[0].status, dropped[0].record_key.as_deref()),
        (0, Some("R4"))
    );

    // POST /reset clears the log (and the peaks); new arrivals are logged afresh.
    let r = c
        .post(format!("{}/reset", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(s.arrivals().is_empty());
    assert!(get_arrivals(&c, &s, None).await.is_empty());
    assert_eq!(
        (
            s.stats().peak_per_second,
            s.stats().peak_per_calendar_second
        ),
        (0, 0)
    );
    s.set_faults(Faults::default());
    assert_eq!(status(&c, &s, "k5", "R5").await, 201);
    let log = s.arrivals();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].status, log[0].record_key.as_deref()),
        (201, Some("R5"))
    );
    s.shutdown().await;
}

#[test]
fn api_arrivals_log_keeps_only_the_newest_entries_and_a_late_answer_of_a_dropped_one_changes_nothing(
) {
    use super::arrivals::{ArrivalEntry, ArrivalLog};
    use super::stats::Counters;
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    let log = Mutex::new(ArrivalLog::new(3));
    let counters = Counters::default();
    let next = AtomicU64::new(0);
    let f = Faults::default();
    let mut entries = Vec::new();
    for i in 0..5u16 {
        let (seq, _) = log.lock().unwrap().arrive(&f, &next, &counters);
        let mut e = ArrivalEntry::new(&log, seq);
        e.parsed(&format!("R{i}"), u64::from(i));
        e.answered(200 + i);
        entries.push(e);
    }
    // Answer them all, the oldest (dropped from the log) first.
    drop(entries);
    let kept = log.lock().unwrap().since(0);
    let seen: Vec<(u16, Option<&str>)> = kept
        .iter()
        .map(|a| (a.status, a.record_key.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [(202, Some("R2")), (203, Some("R3")), (204, Some("R4"))]
    );
    // The peaks count every arrival, also those the log no longer holds.
    assert_eq!(counters.snapshot().peak_per_second, 5);
    // After a clear, an entry of an arrival from before it finds nothing to change.
    let (seq, _) = log.lock().unwrap().arrive(&f, &next, &counters);
    log.lock().unwrap().clear();
    let (seq2, _) = log.lock().unwrap().arrive(&f, &next, &counters);
    assert_ne!(seq, seq2);
    let mut late = ArrivalEntry::new(&log, seq);
    late.answered(500);
    drop(late);
    let kept = log.lock().unwrap().since(0);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].status, 0);
}

#[tokio::test]
async fn api_peak_per_second_is_the_busiest_sliding_window_and_calendar_second_of_the_log() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    assert_eq!(
        (
            s.stats().peak_per_second,
            s.stats().peak_per_calendar_second
        ),
        (0, 0)
    );
    // A burst of 12 at once, a pause longer than a window, then 3 one after the other.
    let mut tasks = JoinSet::new();
    for i in 0..12 {
        let c = c.clone();
        let url = format!("{}/cases", s.url());
        tasks.spawn(async move {
            c.post(url)
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", format!("b{i}"))
                .json(&case_body(&format!("B{i}")))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), 201);
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for i in 0..3 {
        assert_eq!(
            status(&c, &s, &format!("s{i}"), &format!("S{i}")).await,
            201
        );
    }
    let log = s.arrivals();
    assert_eq!(log.len(), 15);
    let st = http_stats(&c, &s).await;
    assert_eq!(st, s.stats());
    assert_eq!(
        (st.peak_per_second, st.peak_per_calendar_second),
        brute_force_peaks(&log)
    );
    // The burst's 12 arrive within far less than a second (checked: the machine may be
    // loaded), so one window holds them all, and one of the (at most two) calendar seconds
    // it spans half of them; the pause keeps the last 3 out of the burst's windows.
    let burst = &log[..12];
    if burst[11].at_ms - burst[0].at_ms < 1000 {
        assert_eq!(st.peak_per_second, 12);
        assert!(st.peak_per_calendar_second >= 6, "{st:?}");
    }
    assert!(st.peak_per_calendar_second <= st.peak_per_second);
    s.shutdown().await;
}

/// Replays `limit_per_second` over a log whose only 429s come from the limit and only 503s
/// from an outage (not admitted): each other arrival is refused exactly when the admitted
/// ones in its window reach `limit`.
fn assert_log_obeys_the_limit(log: &[Arrival], limit: usize) {
    let mut admitted: Vec<u64> = Vec::new();
    for (i, a) in log.iter().enumerate() {
        if a.status == 503 {
            continue;
        }
        let in_window = admitted.iter().filter(|&&t| t + 999 >= a.at_ms).count();
        let over = in_window >= limit;
        assert_eq!(a.status == 429, over, "arrival {i} of {log:?}");
        if !over {
            admitted.push(a.at_ms);
        }
    }
}

#[tokio::test]
async fn api_limit_per_second_answers_429_over_the_limit_before_auth_and_logs_every_arrival() {
    let faults = Faults {
        limit_per_second: Some(3),
        retry_after_secs: 2,
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    let c = client();
    // 8 calls at once: only 3 admitted if they arrive within one window (they do, by far).
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let rb = c
            .post(format!("{}/cases", s.url()))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", format!("k{i}"))
            .json(&case_body(&format!("R{i}")));
        tasks.spawn(async move {
            let r = rb.send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry)
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        answers.push(r.unwrap());
    }
    let log = s.arrivals();
    assert_eq!(log.len(), 8, "arrivals over the limit are logged too");
    assert_log_obeys_the_limit(&log, 3);
    let refused = answers.iter().filter(|(code, _)| *code == 429).count();
    assert!(answers
        .iter()
        .all(|(code, retry)| (*code == 201 && retry.is_none())
            || (*code == 429 && retry.as_deref() == Some("2"))));
    if log[7].at_ms - log[0].at_ms < 1000 {
        assert_eq!(refused, 5, "{answers:?}");
    }
    let st = s.stats();
    assert_eq!(
        (st.rate_limited_429, st.over_limit_429, st.applied),
        (refused as u64, refused as u64, 8 - refused as u64)
    );
    if refused > 0 {
        assert!(st.last_429_at_ms >= log[0].at_ms && st.last_429_at_ms <= now_ms());
    }
    assert_eq!(st.peak_per_second, brute_force_peaks(&log).0);

    // Before auth: over the limit, a call without a token is a 429, not a 401. Fill a fresh
    // window first.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let since = now_ms();
    for i in 0..3 {
        assert_eq!(
            status(&c, &s, &format!("f{i}"), &format!("F{i}")).await,
            201
        );
    }
    let r = post_case(&c, &s, Some("nt"), None, &case_body("NT"))
        .await
        .unwrap();
    let window = s.arrivals_since(since);
    assert_log_obeys_the_limit(&window, 3);
    if window[3].at_ms - window[0].at_ms < 1000 {
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(
            window[3].record_key, None,
            "refused before its body was read"
        );
    }
    // After a quiet window calls pass again; without a token that is now a 401.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = post_case(&c, &s, Some("nt"), None, &case_body("NT"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(status(&c, &s, "after", "A").await, 201);

    // An outage comes first: those calls are 503 and not admitted, so after it, in a window
    // holding nothing else, 3 calls pass.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let since = now_ms();
    assert_eq!(control(&c, &s, json!({"outage_secs": 60})).await, 200);
    let st0 = s.stats();
    for i in 0..5 {
        assert_eq!(status(&c, &s, &format!("o{i}"), "O").await, 503);
    }
    assert_eq!(s.stats().over_limit_429, st0.over_limit_429);
    assert_eq!(control(&c, &s, json!({"outage_secs": 0})).await, 200);
    for i in 0..3 {
        assert_eq!(
            status(&c, &s, &format!("p{i}"), &format!("P{i}")).await,
            201
        );
    }
    assert_log_obeys_the_limit(&s.arrivals_since(since), 3);

    // A patch's 0 lifts the limit; a Faults with Some(0) is refused at start.
    assert_eq!(control(&c, &s, json!({"limit_per_second": 0})).await, 200);
    assert_eq!(s.faults().limit_per_second, None);
    for i in 0..6 {
        assert_eq!(
            status(&c, &s, &format!("u{i}"), &format!("U{i}")).await,
            201
        );
    }
    assert_eq!(control(&c, &s, json!({"limit_per_second": 2})).await, 200);
    assert_eq!(s.faults().limit_per_second, Some(2));
    s.shutdown().await;
    let mut cfg = ApiConfig::new(TOKEN);
    cfg.faults.limit_per_second = Some(0);
    assert!(matches!(
        ApiServer::start(cfg).await,
        Err(ApiError::Config(_))
    ));
}

#[tokio::test]
async fn api_rate_limit_next_answers_the_next_n_calls_429_then_lets_them_pass() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    assert_eq!(status(&c, &s, "k0", "R0").await, 201);
    assert_eq!(s.stats().last_429_at_ms, 0);
    assert_eq!(
        control(&c, &s, json!({"rate_limit_next": 3, "retry_after_secs": 5})).await,
        200
    );
    let v: Value = c
        .get(format!("{}/control", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rate_limit_next"], 3);
    let t0 = now_ms();
    for i in 0..2 {
        let r = post_case(
            &c,
            &s,
            Some(&format!("k{i}")),
            Some(TOKEN),
            &case_body("R1"),
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()["retry-after"], "5");
    }
    // Before auth: the third one is a 429 even without a token.
    let r = post_case(&c, &s, Some("k2"), None, &case_body("R1"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let t1 = now_ms();
    assert_eq!(s.faults().rate_limit_next, 0);
    assert_eq!(status(&c, &s, "k1", "R1").await, 201);
    let st = s.stats();
    assert_eq!(
        (st.rate_limited_429, st.over_limit_429, st.applied),
        (3, 0, 2)
    );
    assert!((t0..=t1).contains(&st.last_429_at_ms), "{st:?}");
    let statuses: Vec<u16> = s.arrivals().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [201, 429, 429, 429, 201]);
    // A patch without rate_limit_next leaves a running countdown alone.
    assert_eq!(control(&c, &s, json!({"rate_limit_next": 1})).await, 200);
    assert_eq!(control(&c, &s, json!({"latency_ms": 0})).await, 200);
    assert_eq!(s.faults().rate_limit_next, 1);
    assert_eq!(status(&c, &s, "k9", "R9").await, 429);
    assert_eq!(status(&c, &s, "k9", "R9").await, 201);
    // A reset clears last_429_at_ms with the counters.
    s.reset().unwrap();
    assert_eq!(s.stats().last_429_at_ms, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn api_case_tokens_rotate_the_secret_of_post_cases_and_the_admin_token_keeps_the_rest() {
    let s = server_with(Faults::default(), None).await;
    let c = client();
    let with = |key: &'static str, token: &'static str| {
        let rb = c
            .post(format!("{}/cases", s.url()))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&case_body(key));
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(with("a1", TOKEN).await, 201);
    assert_eq!(with("a2", "new-secret").await, 401);
    // Rotate: the consumer still holding the old secret gets 401 until it reads the new one.
    assert_eq!(
        control(&c, &s, json!({"case_tokens": ["new-secret", "other"]})).await,
        200
    );
    assert_eq!(with("a3", TOKEN).await, 401);
    assert_eq!(with("a3", "new-secret").await, 201);
    assert_eq!(with("a4", "other").await, 201);
    assert_eq!(with("a5", "new-secre").await, 401);
    // The admin token still opens everything else; a case token opens none of it.
    for path in ["control", "records", "arrivals"] {
        let url = format!("{}/{path}", s.url());
        let ok = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(ok.status().as_u16(), 200, "{path}");
        let no = c.get(&url).bearer_auth("new-secret").send().await.unwrap();
        assert_eq!(no.status().as_u16(), 401, "{path}");
    }
    let r = c
        .post(format!("{}/control", s.url()))
        .bearer_auth("new-secret")
        .json(&json!({"case_tokens": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let st = s.stats();
    assert_eq!((st.applied, st.unauthorized), (3, 3));
    // An empty token is refused; an empty list brings the admin token back.
    assert_eq!(control(&c, &s, json!({"case_tokens": [""]})).await, 400);
    assert_eq!(s.faults().case_tokens, ["new-secret", "other"]);
    assert_eq!(control(&c, &s, json!({"case_tokens": []})).await, 200);
    assert_eq!(with("a6", "new-secret").await, 401);
    assert_eq!(with("a6", TOKEN).await, 201);
    s.shutdown().await;
}

#[tokio::test]
async fn api_hang_records_hold_the_call_in_flight_without_an_answer_then_503() {
    let faults = Faults {
        hang_records: vec!["POISON".into()],
        hang_ms: 1_000,
        ..Faults::default()
    };
    let s = server_with(faults, None).await;
    assert_eq!(Faults::default().hang_ms, 600_000);
    let c = client();
    let t = std::time::Instant::now();
    let poisoned = {
        let rb = c
            .post(format!("{}/cases", s.url()))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "p1")
            .json(&versioned("POISON", "new", 4, "x"));
        tokio::spawn(async move { rb.send().await.unwrap().status().as_u16() })
    };
    // While it is held: in flight, for its record too; other records pass meanwhile.
    let mut mid = Stats::default();
    for _ in 0..50 {
        mid = http_stats(&c, &s).await;
        if mid.hung == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((mid.hung, mid.in_flight), (1, 1), "{mid:?}");
    assert_eq!(mid.peak_in_flight_per_record, 1);
    assert_eq!(
        post_json(&c, &s, "o1", None, &versioned("OTHER", "new", 1, "x"))
            .await
            .0,
        201
    );
    let held = s.arrivals();
    assert_eq!(
        (
            held[0].status,
            held[0].record_key.as_deref(),
            held[0].version
        ),
        (0, Some("POISON"), Some(4))
    );
    assert!(!poisoned.is_finished());
    // A second call for the record while the first is held is an overlap.
    let second = {
        let rb = c
            .post(format!("{}/cases", s.url()))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "p2")
            .json(&versioned("POISON", "new", 5, "x"));
        tokio::spawn(async move { rb.send().await.unwrap().status().as_u16() })
    };
    for _ in 0..50 {
        if s.stats().hung == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.stats().hung, 2);
    assert_eq!(poisoned.await.unwrap(), 503);
    assert!(
        t.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(second.await.unwrap(), 503);
    let st = s.stats();
    assert_eq!(
        (
            st.hung,
            st.server_errors_5xx,
            st.applied,
            st.in_flight,
            st.peak_in_flight_per_record,
            st.overlapping_record_calls
        ),
        (2, 0, 1, 0, 2, 1)
    );
    let log = s.arrivals();
    let seen: Vec<(u16, &str)> = log
        .iter()
        .map(|a| (a.status, a.record_key.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(seen, [(503, "POISON"), (201, "OTHER"), (503, "POISON")]);
    assert_eq!(s.applied_keys(), ["o1".to_string()]);
    // Lifted over HTTP, the record applies.
    assert_eq!(control(&c, &s, json!({"hang_records": []})).await, 200);
    assert_eq!(
        post_json(&c, &s, "p3", None, &versioned("POISON", "new", 6, "x"))
            .await
            .0,
        201
    );
    s.shutdown().await;
}
