//! Tests of the stand-in API over real HTTP: every answer code, the ledger, faults and shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

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
    assert!(lines[0]["at"].as_str().unwrap().ends_with('Z'));
    // No field value is stored in the ledger.
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(!raw.contains("Jane") && !raw.contains("555-0100"));
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
    // Reset clears counters but not the ledger.
    let r = c
        .post(format!("{}/reset", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.stats(), Stats::default());
    assert_eq!(s.applied_keys().len(), 8);
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
            codes.push(status(&c, &s, &format!("k{i}"), "R").await);
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
        "rejected_422",
        "rate_limited_429",
        "server_errors_5xx",
        "unauthorized",
        "bad_requests",
        "dropped_after_apply",
        "timeouts",
        "in_flight",
        "peak_in_flight",
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
