//! Configuring a server: `ApiConfig`, the default body cap and `ApiError` from starting one.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::faults::Faults;

/// Default cap on a `POST /cases` body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

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
    /// The admin Bearer token, which `/control`, `/records`, `/reset` and `/arrivals` must
    /// carry; also the token of `POST /cases` while the `case_tokens` fault is empty.
    pub token: String,
    /// Append-only JSON-lines ledger of applied effects; a restarted server rebuilds from it
    /// the applied keys (it still answers 409) and the records (their fields and versions).
    /// `None`: in memory only.
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
