//! The stand-in contact-tracing API: a real HTTP/1.1 server (axum on hyper/tokio) bound to a
//! loopback address, with an append-only ledger of applied effects and runtime fault injection.
//!
//! ```text
//! POST /cases     Authorization: Bearer <token>, Idempotency-Key: <key>, JSON body
//!                 {"feed":…, "record_key":…, "change":"new"|"changed", "fields":{…}}
//!   201 applied the first time for that key     409 already applied (replay, no second effect)
//!   400 bad request / missing key                413 body over max_body_bytes
//!   401 wrong or missing token                   422 key or record key on a reject list
//!   429 + Retry-After                            503 outage / injected failure / after a "timeout"
//!   (no answer at all)                           apply_then_drop: applied, connection dropped
//! GET  /stats     counters as JSON                POST /reset   clears counters (Bearer token)
//! POST /control   patch the faults (Bearer token) GET  /control current faults (Bearer token)
//! GET  /healthz   200
//! ```
//!
//! Order of checks for `POST /cases`: in-flight guard → latency → outage → auth → parse (400/413)
//! → reject lists (422) → 429 share → 5xx share → timeout share → apply (atomic check-and-record:
//! already applied → 409, else record → 201, or record and then drop the connection).
//!
//! Only the method, path, status and an 8-character key prefix are ever logged; row field values
//! never appear in a log line or an error body (parse errors report line and column only).
//!
//! The server runs its own accept loop (hyper `http1` per connection) instead of `axum::serve` so
//! that a handler can make its connection be dropped without any response bytes: the handler
//! signals the per-connection [`Notify`] and stays pending; the connection task then drops the
//! hyper connection, which closes the socket, and the client sees "connection closed before
//! message completed".

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tower_service::Service;

/// Default cap on a `POST /cases` body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a shutdown lets open connections finish before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {path}: {source}")]
    Ledger {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fault injection knobs. Shares are probabilities in `0.0..=1.0` decided by a deterministic
/// RNG (xxh3 of a draw counter, seeded by `seed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 503 before applying.
    pub fail_5xx: f64,
    /// Share of requests answered 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_429: f64,
    /// The `Retry-After` value (seconds) of a 429.
    pub retry_after_secs: u64,
    /// Share of requests that sleep `timeout_ms` and then answer 503.
    pub timeout_share: f64,
    /// How long a "timeout" request sleeps before its 503.
    pub timeout_ms: u64,
    /// Latency added to every `POST /cases`.
    pub latency_ms: u64,
    /// Every `POST /cases` answers 503 until this time (Unix epoch, milliseconds).
    pub outage_until_ms: Option<u64>,
    /// Share of first-time applies whose connection is dropped right after recording the effect.
    pub apply_then_drop: f64,
    /// Idempotency-Keys answered 422, permanently.
    pub reject_keys: Vec<String>,
    /// `record_key` values answered 422, permanently.
    pub reject_record_keys: Vec<String>,
    /// Seed of the RNG deciding the shares.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_5xx: 0.0,
            rate_limit_429: 0.0,
            retry_after_secs: 1,
            timeout_share: 0.0,
            timeout_ms: 30_000,
            latency_ms: 0,
            outage_until_ms: None,
            apply_then_drop: 0.0,
            reject_keys: Vec::new(),
            reject_record_keys: Vec::new(),
            seed: 0,
        }
    }
}

impl Faults {
    /// Starts an outage of `d` from now (replaces any outage window).
    pub fn outage_for(&mut self, d: Duration) {
        self.outage_until_ms = if d.is_zero() {
            None
        } else {
            Some(now_ms().saturating_add(d.as_millis() as u64))
        };
    }

    /// Whether an outage window is open now.
    pub fn outage_active(&self) -> bool {
        self.outage_until_ms.is_some_and(|until| now_ms() < until)
    }

    fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("fail_5xx", self.fail_5xx),
            ("rate_limit_429", self.rate_limit_429),
            ("timeout_share", self.timeout_share),
            ("apply_then_drop", self.apply_then_drop),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be a share between 0.0 and 1.0"));
            }
        }
        Ok(())
    }
}

/// A partial update of [`Faults`], the body of `POST /control`: absent fields are unchanged.
/// `outage_secs` starts an outage of that many seconds now (`0` ends it); `outage_until_ms`
/// sets the window's end as Unix epoch milliseconds (`0` ends it). Setting `seed` restarts the
/// RNG's sequence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsPatch {
    pub fail_5xx: Option<f64>,
    pub rate_limit_429: Option<f64>,
    pub retry_after_secs: Option<u64>,
    pub timeout_share: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub outage_until_ms: Option<u64>,
    pub outage_secs: Option<f64>,
    pub apply_then_drop: Option<f64>,
    pub reject_keys: Option<Vec<String>>,
    pub reject_record_keys: Option<Vec<String>>,
    pub seed: Option<u64>,
}

impl FaultsPatch {
    /// Applies the patch to `f`; an invalid result leaves `f` unchanged.
    pub fn apply_to(&self, f: &mut Faults) -> Result<(), String> {
        let mut n = f.clone();
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = &self.$field { n.$field = v.clone(); } )*};
        }
        set!(
            fail_5xx,
            rate_limit_429,
            retry_after_secs,
            timeout_share,
            timeout_ms,
            latency_ms,
            apply_then_drop,
            reject_keys,
            reject_record_keys,
            seed
        );
        if let Some(until) = self.outage_until_ms {
            n.outage_until_ms = (until > 0).then_some(until);
        }
        if let Some(secs) = self.outage_secs {
            if !secs.is_finite() || secs < 0.0 {
                return Err("outage_secs must be a non-negative number".into());
            }
            n.outage_for(Duration::from_secs_f64(secs.min(1e9)));
        }
        n.validate()?;
        *f = n;
        Ok(())
    }
}

/// Configuration of one server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Must be a loopback address (or, with `allow_docker_bridge`, the docker bridge's
    /// gateway address); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Also accept the IPv4 address of this machine's `docker0` interface as `listen`: the
    /// gateway through which a container of your own dockerd reaches the host (for
    /// `sam local invoke`). No other non-loopback address is ever accepted.
    pub allow_docker_bridge: bool,
    /// The Bearer token every `POST /cases`, `/control` and `/reset` must carry.
    pub token: String,
    /// Append-only JSON-lines ledger of applied effects; keys already in it count as applied
    /// (a restarted server still answers 409). `None`: in memory only.
    pub ledger: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub faults: Faults,
}

impl ApiConfig {
    /// 127.0.0.1 on a random port, no ledger file, 1 MiB bodies, no faults.
    pub fn new(token: impl Into<String>) -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_docker_bridge: false,
            token: token.into(),
            ledger: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            faults: Faults::default(),
        }
    }
}

/// Counters, as answered by `GET /stats`.
///
/// `applied` counts first-time applies (= new ledger entries), including the
/// `dropped_after_apply` ones. `server_errors_5xx` counts 503/500 answers that were really
/// sent (outage, `fail_5xx`, ledger write failures); `timeouts` counts requests chosen to
/// sleep `timeout_ms` (their late 503 is not counted again). Every finished `POST /cases`
/// falls in exactly one of applied, replays, rejected_422, rate_limited_429,
/// server_errors_5xx, unauthorized, bad_requests, timeouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub applied: u64,
    pub replays: u64,
    pub rejected_422: u64,
    pub rate_limited_429: u64,
    pub server_errors_5xx: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub dropped_after_apply: u64,
    pub timeouts: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    applied: AtomicU64,
    replays: AtomicU64,
    rejected_422: AtomicU64,
    rate_limited_429: AtomicU64,
    server_errors_5xx: AtomicU64,
    unauthorized: AtomicU64,
    bad_requests: AtomicU64,
    dropped_after_apply: AtomicU64,
    timeouts: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            requests: g(&self.requests),
            applied: g(&self.applied),
            replays: g(&self.replays),
            rejected_422: g(&self.rejected_422),
            rate_limited_429: g(&self.rate_limited_429),
            server_errors_5xx: g(&self.server_errors_5xx),
            unauthorized: g(&self.unauthorized),
            bad_requests: g(&self.bad_requests),
            dropped_after_apply: g(&self.dropped_after_apply),
            timeouts: g(&self.timeouts),
            in_flight: g(&self.in_flight),
            peak_in_flight: g(&self.peak_in_flight),
        }
    }

    /// Clears every counter but `in_flight`; the peak restarts from the current in-flight count.
    fn reset(&self) {
        for a in [
            &self.requests,
            &self.applied,
            &self.replays,
            &self.rejected_422,
            &self.rate_limited_429,
            &self.server_errors_5xx,
            &self.unauthorized,
            &self.bad_requests,
            &self.dropped_after_apply,
            &self.timeouts,
        ] {
            a.store(0, Ordering::SeqCst);
        }
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Counts a `POST /cases` as in flight for as long as it lives (also when its future is dropped).
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(c: &'a Counters) -> Self {
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Faults plus their reject lists as sets.
struct FaultState {
    faults: Faults,
    reject_keys: HashSet<String>,
    reject_record_keys: HashSet<String>,
}

impl FaultState {
    fn new(faults: Faults) -> Self {
        FaultState {
            reject_keys: faults.reject_keys.iter().cloned().collect(),
            reject_record_keys: faults.reject_record_keys.iter().cloned().collect(),
            faults,
        }
    }
}

#[derive(Serialize)]
struct LedgerLine<'a> {
    idempotency_key: &'a str,
    feed: &'a str,
    record_key: &'a str,
    change: Change,
    at: String,
}

#[derive(Deserialize)]
struct LedgerKey {
    idempotency_key: String,
}

struct Ledger {
    file: Option<File>,
    applied: HashSet<String>,
    order: Vec<String>,
}

impl Ledger {
    fn open(path: Option<&Path>) -> Result<Ledger, std::io::Error> {
        let mut ledger = Ledger {
            file: None,
            applied: HashSet::new(),
            order: Vec::new(),
        };
        let Some(path) = path else {
            return Ok(ledger);
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            // A torn last line (a crash mid-write) is skipped: that effect was never answered.
            if let Ok(k) = serde_json::from_str::<LedgerKey>(line.trim_end()) {
                if ledger.applied.insert(k.idempotency_key.clone()) {
                    ledger.order.push(k.idempotency_key);
                }
            }
            line.clear();
        }
        drop(reader);
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        ledger.file = Some(file);
        Ok(ledger)
    }

    /// Records `key` unless already applied. `Ok(true)`: recorded now; `Ok(false)`: a replay.
    fn apply(&mut self, key: &str, case: &CaseBody) -> Result<bool, std::io::Error> {
        if self.applied.contains(key) {
            return Ok(false);
        }
        if let Some(file) = self.file.as_mut() {
            let entry = LedgerLine {
                idempotency_key: key,
                feed: &case.feed,
                record_key: &case.record_key,
                change: case.change,
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            };
            let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            line.push(b'\n');
            file.write_all(&line)?;
            file.flush()?;
        }
        self.applied.insert(key.to_owned());
        self.order.push(key.to_owned());
        Ok(true)
    }
}

struct Shared {
    token: String,
    max_body_bytes: usize,
    counters: Counters,
    faults: RwLock<Arc<FaultState>>,
    draws: AtomicU64,
    ledger: Mutex<Ledger>,
}

impl Shared {
    fn faults(&self) -> Arc<FaultState> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_faults(&self, f: Faults, restart_rng: bool) {
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(FaultState::new(f));
        if restart_rng {
            self.draws.store(0, Ordering::SeqCst);
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True with probability `share`: xxh3 of the next draw number, seeded.
    fn draw(&self, share: f64, seed: u64) -> bool {
        if share <= 0.0 {
            return false;
        }
        if share >= 1.0 {
            return true;
        }
        let n = self.draws.fetch_add(1, Ordering::SeqCst);
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), seed);
        ((h >> 11) as f64 / (1u64 << 53) as f64) < share
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(given) = v.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        let want = self.token.as_bytes();
        // Constant time in the token's content.
        given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// A running server. Dropping it without [`ApiServer::shutdown`] also stops it (without waiting).
pub struct ApiServer {
    /// The bound address (the real port when the config asked for port 0).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    ledger_path: Option<PathBuf>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds, loads the ledger, and spawns the server on the current tokio runtime; returns
    /// once the socket is bound and listening.
    pub async fn start(cfg: ApiConfig) -> Result<ApiServer, ApiError> {
        let ip = cfg.listen.ip();
        let allowed = ip.is_loopback() || (cfg.allow_docker_bridge && is_docker_bridge_address(ip));
        if !allowed {
            return Err(ApiError::Config(format!(
                "listen address {} is not a loopback address{}",
                cfg.listen,
                if cfg.allow_docker_bridge {
                    " nor the address of the docker0 bridge"
                } else {
                    ""
                }
            )));
        }
        if cfg.token.is_empty() {
            return Err(ApiError::Config("the API token must not be empty".into()));
        }
        if cfg.max_body_bytes == 0 {
            return Err(ApiError::Config("max_body_bytes must be positive".into()));
        }
        cfg.faults.validate().map_err(ApiError::Config)?;
        let ledger = Ledger::open(cfg.ledger.as_deref()).map_err(|source| ApiError::Ledger {
            path: cfg.ledger.clone().unwrap_or_default(),
            source,
        })?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ApiError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            token: cfg.token,
            max_body_bytes: cfg.max_body_bytes,
            counters: Counters::default(),
            faults: RwLock::new(Arc::new(FaultState::new(cfg.faults))),
            draws: AtomicU64::new(0),
            ledger: Mutex::new(ledger),
        });
        let router = Router::new()
            .route("/cases", post(post_cases))
            .route("/stats", get(get_stats))
            .route("/control", post(post_control).get(get_control))
            .route("/reset", post(post_reset))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(shared.clone());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, router, stop_rx));
        tracing::info!(%addr, "stand-in contact-tracing API listening");
        Ok(ApiServer {
            addr,
            shared,
            ledger_path: cfg.ledger,
            stop,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Clears the counters (not the ledger), like `POST /reset`.
    pub fn reset(&self) {
        self.shared.counters.reset();
    }

    /// Applied Idempotency-Keys in the order they were applied (ledger entries loaded at start
    /// first).
    pub fn applied_keys(&self) -> Vec<String> {
        self.shared.ledger().order.clone()
    }

    pub fn ledger_path(&self) -> Option<&Path> {
        self.ledger_path.as_deref()
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults().faults.clone()
    }

    /// Replaces all faults and restarts the RNG sequence. Shares are clamped to `0.0..=1.0`.
    pub fn set_faults(&self, mut f: Faults) {
        for s in [
            &mut f.fail_5xx,
            &mut f.rate_limit_429,
            &mut f.timeout_share,
            &mut f.apply_then_drop,
        ] {
            *s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
        }
        self.shared.set_faults(f, true);
    }

    /// Applies a partial update, like `POST /control`.
    pub fn patch_faults(&self, patch: &FaultsPatch) -> Result<Faults, String> {
        patch_faults(&self.shared, patch)
    }

    /// Stops accepting, lets open connections finish for up to a second, then drops them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn patch_faults(shared: &Shared, patch: &FaultsPatch) -> Result<Faults, String> {
    let mut f = shared.faults().faults.clone();
    patch.apply_to(&mut f)?;
    shared.set_faults(f.clone(), patch.seed.is_some());
    Ok(f)
}

/// The interface whose address `allow_docker_bridge` accepts: dockerd's default bridge.
pub const DOCKER_BRIDGE_INTERFACE: &str = "docker0";

/// Whether `ip` is an IPv4 address assigned to the [`DOCKER_BRIDGE_INTERFACE`] interface of
/// this machine (read with `getifaddrs`). False on any error.
pub fn is_docker_bridge_address(ip: std::net::IpAddr) -> bool {
    let std::net::IpAddr::V4(want) = ip else {
        return false;
    };
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free below with freeifaddrs; the
    // list is only read while it is alive, and each pointer is checked for null first.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return false;
        }
        let mut found = false;
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || ifa.ifa_name.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
            {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name);
            if name.to_bytes() != DOCKER_BRIDGE_INTERFACE.as_bytes() {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            if std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == want {
                found = true;
                break;
            }
        }
        libc::freeifaddrs(head);
        found
    }
}

async fn accept_loop(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    while conns.try_join_next().is_some() {}
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(stream, router.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(500), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.shutdown().await;
    }
    tracing::info!("stand-in contact-tracing API stopped");
}

/// Asks the connection task to drop its connection without answering.
#[derive(Clone)]
struct ConnKill(Arc<Notify>);

async fn serve_connection(stream: TcpStream, router: Router, mut stop: watch::Receiver<bool>) {
    let kill = Arc::new(Notify::new());
    let svc = {
        let kill = kill.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnKill(kill.clone()));
            let mut router = router.clone();
            router.call(req.map(Body::new))
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut deadline: Option<tokio::time::Instant> = None;
    if *stop.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = kill.notified() => {
                tracing::debug!("dropping connection without an answer (apply_then_drop)");
                return; // drops `conn`: the socket closes with no response bytes
            }
            _ = stop.changed(), if deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => return,
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    New,
    Changed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseBody {
    feed: String,
    record_key: String,
    change: Change,
    #[allow(dead_code)] // only checked for shape; never stored or logged
    fields: serde_json::Map<String, Value>,
}

fn now_ms() -> u64 {
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

async fn post_cases(State(st): State<Arc<Shared>>, req: Request) -> Response {
    let c = &st.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(c);

    let latency = st.faults().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fs = st.faults();
    let f = &fs.faults;
    let (parts, body) = req.into_parts();
    let key_header = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");

    if f.outage_active() {
        c.server_errors_5xx.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::SERVICE_UNAVAILABLE;
        return answer(s, key_header, error_body(s, "service unavailable (outage)"));
    }
    if !st.authorized(&parts.headers) {
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
                    "body does not have the expected shape {feed, record_key, change: \"new\"|\"changed\", fields: {…}}"
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
    if st.draw(f.rate_limit_429, f.seed) {
        c.rate_limited_429.fetch_add(1, Ordering::SeqCst);
        let s = StatusCode::TOO_MANY_REQUESTS;
        let mut resp = error_body(s, "rate limited");
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(f.retry_after_secs));
        return answer(s, &key, resp);
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

    let applied = st.ledger().apply(&key, &case);
    match applied {
        Ok(true) => {
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
            answer(
                s,
                &key,
                (
                    s,
                    Json(json!({"status": "applied", "idempotency_key": key})),
                )
                    .into_response(),
            )
        }
        Ok(false) => {
            c.replays.fetch_add(1, Ordering::SeqCst);
            let s = StatusCode::CONFLICT;
            answer(
                s,
                &key,
                (
                    s,
                    Json(json!({"status": "already_applied", "idempotency_key": key})),
                )
                    .into_response(),
            )
        }
        Err(e) => {
            c.server_errors_5xx.fetch_add(1, Ordering::SeqCst);
            tracing::error!(error = %e, key = %key_prefix(&key), "ledger write failed");
            let s = StatusCode::INTERNAL_SERVER_ERROR;
            answer(s, &key, error_body(s, "could not record the effect"))
        }
    }
}

async fn get_stats(State(st): State<Arc<Shared>>) -> Json<Stats> {
    Json(st.counters.snapshot())
}

async fn get_control(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    Json(st.faults().faults.clone()).into_response()
}

async fn post_control(
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
            // Shares and list sizes only: the lists hold keys, which are not for the logs.
            tracing::info!(
                fail_5xx = f.fail_5xx,
                rate_limit_429 = f.rate_limit_429,
                timeout_share = f.timeout_share,
                apply_then_drop = f.apply_then_drop,
                latency_ms = f.latency_ms,
                outage = f.outage_active(),
                reject_keys = f.reject_keys.len(),
                reject_record_keys = f.reject_record_keys.len(),
                "faults changed"
            );
            Json(f).into_response()
        }
        Err(reason) => error_body(StatusCode::BAD_REQUEST, &reason),
    }
}

async fn post_reset(State(st): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !st.authorized(&headers) {
        return error_body(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    st.counters.reset();
    Json(st.counters.snapshot()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
