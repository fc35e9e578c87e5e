//! The running server: the state its handlers share and `ApiServer`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::arrivals::{self, Arrival, ArrivalLog, MAX_ARRIVALS};
use super::config::{ApiConfig, ApiError};
use super::faults::{FaultState, Faults, FaultsPatch};
use super::handlers::{
    get_arrivals, get_control, get_records, get_stats, post_cases, post_control, post_reset,
};
use super::ledger::{Ledger, Record};
use super::net::{accept_loop, is_docker_bridge_address};
use super::stats::{Counters, Stats};

pub(super) struct Shared {
    token: String,
    pub(super) max_body_bytes: usize,
    pub(super) counters: Counters,
    faults: RwLock<Arc<FaultState>>,
    /// What is left of the `rate_limit_next` countdown.
    pub(super) rate_limit_next: AtomicU64,
    draws: AtomicU64,
    ledger: Mutex<Ledger>,
    pub(super) arrivals: Mutex<ArrivalLog>,
}

impl Shared {
    pub(super) fn faults(&self) -> Arc<FaultState> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The faults in effect, with what is left of the `rate_limit_next` countdown.
    pub(super) fn current_faults(&self) -> Faults {
        let mut f = self.faults().faults.clone();
        f.rate_limit_next = self.rate_limit_next.load(Ordering::SeqCst);
        f
    }

    /// Replaces all faults (and the `rate_limit_next` countdown) and restarts the RNG.
    fn set_faults(&self, f: Faults) {
        let mut w = self.faults.write().unwrap_or_else(|e| e.into_inner());
        self.rate_limit_next
            .store(f.rate_limit_next, Ordering::SeqCst);
        *w = Arc::new(FaultState::new(f));
        self.draws.store(0, Ordering::SeqCst);
    }

    pub(super) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `POST /reset`: forgets the records (a `reset` line in the ledger file), then clears
    /// the arrivals log and the counters. A file error changes nothing.
    pub(super) fn reset(&self) -> Result<(), std::io::Error> {
        self.ledger().clear_records()?;
        let mut log = arrivals::lock(&self.arrivals);
        log.clear();
        self.counters.reset();
        drop(log);
        Ok(())
    }

    /// The logged arrivals with `at_ms >= since_ms`, oldest first.
    pub(super) fn arrivals_since(&self, since_ms: u64) -> Vec<Arrival> {
        arrivals::lock(&self.arrivals).since(since_ms)
    }

    /// True with probability `share`: xxh3 of the next draw number, seeded.
    pub(super) fn draw(&self, share: f64, seed: u64) -> bool {
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

    /// Whether the request carries the admin token (`/control`, `/records`, `/reset`,
    /// `/arrivals`).
    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|given| same_token(given, self.token.as_bytes()))
    }

    /// Whether a `POST /cases` carries a case token: one of `case_tokens`, or the admin token
    /// while that list is empty.
    pub(super) fn case_authorized(&self, headers: &HeaderMap, fs: &FaultState) -> bool {
        let Some(given) = bearer(headers) else {
            return false;
        };
        let tokens = &fs.faults.case_tokens;
        if tokens.is_empty() {
            return same_token(given, self.token.as_bytes());
        }
        // Every token is compared, so the time does not tell which one matched.
        tokens
            .iter()
            .fold(false, |ok, t| same_token(given, t.as_bytes()) | ok)
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)?
        .as_bytes()
        .strip_prefix(b"Bearer ")
}

/// Constant time in the tokens' content.
fn same_token(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
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
            rate_limit_next: AtomicU64::new(cfg.faults.rate_limit_next),
            faults: RwLock::new(Arc::new(FaultState::new(cfg.faults))),
            draws: AtomicU64::new(0),
            ledger: Mutex::new(ledger),
            arrivals: Mutex::new(ArrivalLog::new(MAX_ARRIVALS)),
        });
        let router = Router::new()
            .route("/cases", post(post_cases))
            .route("/stats", get(get_stats))
            .route("/control", post(post_control).get(get_control))
            .route("/records", get(get_records))
            .route("/reset", post(post_reset))
            .route("/arrivals", get(get_arrivals))
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

    /// Clears the counters, the arrivals log and the records (not the applied keys), like
    /// `POST /reset`; an error writing the ledger file's `reset` line changes nothing.
    pub fn reset(&self) -> Result<(), std::io::Error> {
        self.shared.reset()
    }

    /// Every record the API holds, sorted by feed and record key, like `GET /records`.
    pub fn records(&self) -> Vec<Record> {
        self.shared.ledger().records()
    }

    /// Applied Idempotency-Keys in the order they were applied (ledger entries loaded at start
    /// first).
    pub fn applied_keys(&self) -> Vec<String> {
        self.shared.ledger().order.clone()
    }

    /// Every logged `POST /cases` arrival (the newest [`MAX_ARRIVALS`]), oldest first, like
    /// `GET /arrivals`.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals_since(0)
    }

    /// The logged arrivals with `at_ms >= since_ms`, oldest first, like
    /// `GET /arrivals?since_ms=N`.
    pub fn arrivals_since(&self, since_ms: u64) -> Vec<Arrival> {
        self.shared.arrivals_since(since_ms)
    }

    pub fn ledger_path(&self) -> Option<&Path> {
        self.ledger_path.as_deref()
    }

    /// The faults in effect (`rate_limit_next`: what is left of the countdown).
    pub fn faults(&self) -> Faults {
        self.shared.current_faults()
    }

    /// Replaces all faults (the `rate_limit_next` countdown included) and restarts the RNG
    /// sequence. Shares are clamped to `0.0..=1.0`, a `limit_per_second` of 0 is no limit
    /// and empty `case_tokens` are dropped.
    pub fn set_faults(&self, mut f: Faults) {
        for s in [
            &mut f.fail_5xx,
            &mut f.rate_limit_429,
            &mut f.timeout_share,
            &mut f.apply_then_drop,
        ] {
            *s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
        }
        f.limit_per_second = f.limit_per_second.filter(|&n| n > 0);
        f.case_tokens.retain(|t| !t.is_empty());
        self.shared.set_faults(f);
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

/// Applies `patch` under the faults' write lock (two patches do not lose each other's
/// changes); the `rate_limit_next` countdown changes only when the patch sets it.
pub(super) fn patch_faults(shared: &Shared, patch: &FaultsPatch) -> Result<Faults, String> {
    let mut w = shared.faults.write().unwrap_or_else(|e| e.into_inner());
    let mut f = w.faults.clone();
    f.rate_limit_next = shared.rate_limit_next.load(Ordering::SeqCst);
    patch.apply_to(&mut f)?;
    if let Some(n) = patch.rate_limit_next {
        shared.rate_limit_next.store(n, Ordering::SeqCst);
    }
    *w = Arc::new(FaultState::new(f.clone()));
    drop(w);
    if patch.seed.is_some() {
        shared.draws.store(0, Ordering::SeqCst);
    }
    Ok(f)
}
