//! The HTTP handlers: `POST /cases` with its checks in order, `/stats`, `/control`, `/records`,
//! `/reset` and `/arrivals`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::arrivals::{self, Arrival, ArrivalEntry, Gate};
use super::faults::{FaultState, FaultsPatch};
use super::ledger::Outcome;
use super::net::ConnKill;
use super::server::{patch_faults, Shared};
use super::stats::{InFlight, RecordInFlight, Stats};

/// What a `POST /cases` says happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Change {
    New,
    Changed,
    /// The record left the export: it keeps its versions, loses its fields.
    Removed,
}

/// The export a write came from, as the client says (`source` of the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSource {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// The body of `POST /cases`. `version` (0 when absent: an old client) and `source` are
/// optional; `fields` is required for `new` and `changed` and must be absent or empty for
/// `removed`. Field values are strings (a CSV row's cells).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CaseBody {
    pub(super) feed: String,
    pub(super) record_key: String,
    pub(super) change: Change,
    #[serde(default)]
    pub(super) version: u64,
    #[serde(default)]
    pub(super) source: Option<CaseSource>,
    #[serde(default)]
    pub(super) fields: Option<BTreeMap<String, String>>,
}

/// The header that repeats the body's `version`.
const VERSION_HEADER: &str = "casefeed-version";

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key_prefix(key: &str) -> String {
    key.chars().take(8).collect()
}

fn error_body(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

fn answer(status: StatusCode, key: &str, resp: Response) -> Response {
    tracing::debug!(
        method = "POST",
        path = "/cases",
        status = status.as_u16(),
        key = %key_prefix(key),
        "answered"
    );
    resp
}

/// A 429 with `Retry-After`, counted in `rate_limited_429` and `last_429_at_ms`.
fn too_many(st: &Shared, retry_after_secs: u64, key: &str, reason: &str) -> Response {
    let c = &st.counters;
    c.rate_limited_429.fetch_add(1, Ordering::SeqCst);
    c.last_429_at_ms.fetch_max(now_ms(), Ordering::SeqCst);
    let s = StatusCode::TOO_MANY_REQUESTS;
    let mut resp = error_body(s, reason);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    answer(s, key, resp)
}

pub(super) async fn post_cases(State(st): State<Arc<Shared>>, req: Request) -> Response {
    let c = &st.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(c);
    let fs = st.faults();
    let (seq, gate) = arrivals::lock(&st.arrivals).arrive(&fs.faults, &st.rate_limit_next, c);
    // Records the status when the call ends; a dropped future leaves it 0.
    let mut entry = ArrivalEntry::new(&st.arrivals, seq);
    let resp = cases(&st, &fs, req, gate, &entry).await;
    entry.answered(resp.status().as_u16());
    resp
}

/// `POST /cases` after its arrival was logged and gated (with the faults `fs`, which also
/// decide the Retry-After of a gate's 429 and the case tokens).
async fn cases(
    st: &Shared,
    fs: &FaultState,
    req: Request,
    gate: Gate,
    entry: &ArrivalEntry<'_>,
) -> Response {
    let c = &st.counters;
    let (parts, body) = req.into_parts();
    let key_header = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");

    match gate {
        Gate::Outage => {
            c.server_errors_5xx.fetch_add(1, Ordering::SeqCst);
            let s = StatusCode::SERVICE_UNAVAILABLE;
            return answer(s, key_header, error_body(s, "service unavailable (outage)"));
        }
        Gate::OverLimit => {
            c.over_limit_429.fetch_add(1, Ordering::SeqCst);
            let secs = fs.faults.retry_after_secs;
            return too_many(st, secs, key_header, "rate limit exceeded");
        }
        Gate::Next429 => {
            let secs = fs.faults.retry_after_secs;
            return too_many(st, secs, key_header, "rate limited");
        }
        Gate::Open => {}
    }
    if !st.case_authorized(&parts.headers, fs) {
        c.unauthorized.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::UNAUTHORIZED;
        let mut resp = error_body(s, "missing or invalid bearer token");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return answer(s, key_header, resp);
    }

    // Parse: 400 / 413.
    let bad = |reason: &str| {
        c.bad_requests.fetch_add(1, Ordering::SeqCst);
        answer(
            StatusCode::BAD_REQUEST,
            key_header,
            error_body(StatusCode::BAD_REQUEST, reason),
        )
    };
    if key_header.is_empty() {
        return bad("missing Idempotency-Key header");
    }
    let key = key_header.to_owned();
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let ok = ct
            .to_str()
            .map(|s| {
                s.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            })
            .unwrap_or(false);
        if !ok {
            return bad("Content-Type must be application/json");
        }
    }
    let header_version = match parts.headers.get(VERSION_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => return bad("Casefeed-Version must be a non-negative integer"),
        },
    };
    let too_large = || {
        c.bad_requests.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::PAYLOAD_TOO_LARGE;
        answer(s, &key, error_body(s, "request body too large"))
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body_bytes as u64) {
        return too_large();
    }
    let bytes = match Limited::new(body, st.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(_) => return bad("could not read the request body"),
    };
    let case: CaseBody = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        // Only the category and position: serde's own message may quote row values.
        Err(e) => {
            let what = match e.classify() {
                serde_json::error::Category::Data => {
                    "body does not have the expected shape {feed, record_key, change: \"new\"|\"changed\"|\"removed\", version, source: {bucket, key, etag, version_id?}, fields: {name: string}}"
                }
                _ => "body is not valid JSON",
            };
            return bad(&format!(
                "{what} (line {}, column {})",
                e.line(),
                e.column()
            ));
        }
    };
    if case.feed.is_empty() || case.record_key.is_empty() {
        return bad("feed and record_key must not be empty");
    }
    match (case.change, &case.fields) {
        (Change::New | Change::Changed, None) => {
            return bad("a new or changed record must carry fields");
        }
        (Change::Removed, Some(f)) if !f.is_empty() => {
            return bad("a removed record carries no fields");
        }
        _ => {}
    }
    if header_version.is_some_and(|h| h != case.version) {
        return bad("the Casefeed-Version header and the body's version disagree");
    }

    entry.parsed(&case.record_key, case.version);

    // From here on the call is in flight for its record, until it is answered or dropped.
    let _record_in_flight = RecordInFlight::enter(c, &case.feed, &case.record_key);
    let fs = st.faults();
    if fs.hang_records.contains(&case.record_key) {
        c.hung.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(method = "POST", path = "/cases", key = %key_prefix(&key), hang_ms = fs.faults.hang_ms, "holding the call (hang_records)");
        tokio::time::sleep(Duration::from_millis(fs.faults.hang_ms)).await;
        let s = StatusCode::SERVICE_UNAVAILABLE;
        return answer(s, &key, error_body(s, "injected hang"));
    }
    let latency = fs.faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fs = st.faults();
    let f = &fs.faults;

    if fs.reject_keys.contains(&key) || fs.reject_record_keys.contains(&case.record_key) {
        c.rejected_422.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::UNPROCESSABLE_ENTITY;
        let reason = if fs.reject_keys.contains(&key) {
            "case rejected: the Idempotency-Key is on the reject list"
        } else {
            "case rejected: the record is on the reject list"
        };
        return answer(s, &key, error_body(s, reason));
    }
    if f.fail_records
        .get(&case.record_key)
        .is_some_and(|&below| case.version < below)
    {
        c.server_errors_5xx.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::SERVICE_UNAVAILABLE;
        return answer(
            s,
            &key,
            error_body(s, "injected failure for this version of the record"),
        );
    }
    if st.draw(f.rate_limit_429, f.seed) {
        return too_many(st, f.retry_after_secs, &key, "rate limited");
    }
    if st.draw(f.fail_5xx, f.seed) {
        c.server_errors_5xx.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::SERVICE_UNAVAILABLE;
        return answer(s, &key, error_body(s, "injected server error"));
    }
    if st.draw(f.timeout_share, f.seed) {
        c.timeouts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(f.timeout_ms)).await;
        let s = StatusCode::SERVICE_UNAVAILABLE;
        return answer(s, &key, error_body(s, "injected timeout"));
    }
    let drop_after = st.draw(f.apply_then_drop, f.seed);

    let outcome = st.ledger().apply(&key, &case);
    match outcome {
        Ok(Outcome::Applied) => {
            c.applied.fetch_add(1, Ordering::SeqCst);
            if drop_after {
                if let Some(kill) = parts.extensions.get::<ConnKill>() {
                    c.dropped_after_apply.fetch_add(1, Ordering::SeqCst);
                    tracing::debug!(method = "POST", path = "/cases", key = %key_prefix(&key), "applied; dropping the connection");
                    kill.0.notify_one();
                    // The connection task drops this future together with the connection.
                    return std::future::pending::<Response>().await;
                }
            }
            let s = StatusCode::CREATED;
            let body = json!({"outcome": "applied", "version": case.version});
            answer(s, &key, (s, Json(body)).into_response())
        }
        Ok(Outcome::Duplicate) => {
            c.replays.fetch_add(1, Ordering::SeqCst);
            let s = StatusCode::CONFLICT;
            let body = json!({"outcome": "duplicate"});
            answer(s, &key, (s, Json(body)).into_response())
        }
        Ok(Outcome::Stale { current_version }) => {
            c.stale_409.fetch_add(1, Ordering::SeqCst);
            let s = StatusCode::CONFLICT;
            let body = json!({"outcome": "stale", "current_version": current_version});
            answer(s, &key, (s, Json(body)).into_response())
        }
        Err(e) => {
            c.server_errors_5xx.fetch_add(1, Ordering::SeqCst);
            tracing::error!(error = %e, key = %key_prefix(&key), "ledger write failed");
            let s = StatusCode::INTERNAL_SERVER_ERROR;
            answer(s, &key, error_body(s, "could not record the effect"))
        }
    }
}

pub(super) async fn get_stats(State(st): State<Arc<Shared>>) -> Json<Stats> {
    Json(st.counters.snapshot())
}

pub(super) async fn get_control(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    Json(st.current_faults()).into_response()
}

pub(super) async fn post_control(
    State(st): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error_body(StatusCode::BAD_REQUEST, &format!("bad control body: {e}")),
    };
    match patch_faults(&st, &patch) {
        Ok(f) => {
            // Shares and list sizes only: the lists hold keys and tokens, which are not for
            // the logs.
            tracing::info!(
                fail_5xx = f.fail_5xx,
                rate_limit_429 = f.rate_limit_429,
                timeout_share = f.timeout_share,
                apply_then_drop = f.apply_then_drop,
                latency_ms = f.latency_ms,
                outage = f.outage_active(),
                limit_per_second = f.limit_per_second,
                rate_limit_next = f.rate_limit_next,
                reject_keys = f.reject_keys.len(),
                reject_record_keys = f.reject_record_keys.len(),
                fail_records = f.fail_records.len(),
                hang_records = f.hang_records.len(),
                hang_ms = f.hang_ms,
                case_tokens = f.case_tokens.len(),
                "faults changed"
            );
            Json(f).into_response()
        }
        Err(reason) => error_body(StatusCode::BAD_REQUEST, &reason),
    }
}

pub(super) async fn get_records(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let records = st.ledger().records();
    Json(json!({"count": records.len(), "records": records})).into_response()
}

pub(super) async fn post_reset(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    if let Err(e) = st.reset() {
        tracing::error!(error = %e, "ledger write failed (reset)");
        return error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not record the reset",
        );
    }
    Json(st.counters.snapshot()).into_response()
}

/// The body of `GET /arrivals`.
#[derive(Serialize)]
struct ArrivalsBody {
    arrivals: Vec<Arrival>,
}

/// The `since_ms` of `GET /arrivals?since_ms=N` (0 when absent); any other parameter is an
/// error.
fn since_ms(query: Option<&str>) -> Result<u64, &'static str> {
    let mut since = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since_ms", n)) => {
                since = n
                    .parse()
                    .map_err(|_| "since_ms must be a non-negative integer (Unix epoch ms)")?;
            }
            _ => return Err("the only query parameter is since_ms"),
        }
    }
    Ok(since)
}

pub(super) async fn get_arrivals(
    State(st): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    match since_ms(uri.query()) {
        Ok(since) => Json(ArrivalsBody {
            arrivals: st.arrivals_since(since),
        })
        .into_response(),
        Err(reason) => error_body(StatusCode::BAD_REQUEST, reason),
    }
}
