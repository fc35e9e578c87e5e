//! Start-up wiring shared by the Lambda binaries and the CLI: read the environment once,
//! build AWS clients once, load and validate the feed configuration. Every failure here is
//! a clear start-up error naming the variable or the feed field.

use super::dynamodb::DynamoLedger;
use super::http_api::HttpApi;
use super::s3::{RangedReads, S3Store};
use super::secrets::TokenSecret;
use super::sqs::{SqsQueue, SqsWork};
use crate::backoff::Backoff;
use crate::config::{env_number, env_required, Config, ConfigError, ConfigSource};
use crate::consumer::{Consumer, ConsumerSettings, Gate, GateSettings, Ledger};
use crate::ports::store::ObjectStore;
use crate::splitter::sink::SenderSettings;
use crate::splitter::{Splitter, SplitterSettings};
use std::sync::Arc;
use std::time::Duration;

/// Logs for CloudWatch, once per container: JSON (each line with its spans' fields: the
/// Lambda request id, and a message's feed, run, idempotency key and message id), or text
/// when `AWS_LAMBDA_LOG_FORMAT` is `Text`. The level: `RUST_LOG`, else
/// `AWS_LAMBDA_LOG_LEVEL`, else `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .ok()
                .map(|l| tracing_subscriber::EnvFilter::new(l.to_ascii_lowercase()))
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let text = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time();
    if text {
        fmt.with_ansi(false).init();
    } else {
        fmt.json()
            .with_current_span(false)
            .with_span_list(true)
            .init();
    }
}

/// Load the AWS configuration (region, credentials, `AWS_ENDPOINT_URL`) once.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// Read the feed configuration from a path or an `s3://` URI.
pub async fn load_config<S: ObjectStore>(location: &str, store: &S) -> Result<Config, ConfigError> {
    let source = ConfigSource::parse(location)?;
    let text = match &source {
        ConfigSource::Path(p) => std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
            source_ref: p.clone(),
            problem: e.to_string(),
        })?,
        ConfigSource::S3 { bucket, key } => {
            let fetched = store
                .get_bytes(bucket, key)
                .await
                .map_err(|e| ConfigError::Read {
                    source_ref: location.to_string(),
                    problem: e.to_string(),
                })?
                .ok_or_else(|| ConfigError::Read {
                    source_ref: location.to_string(),
                    problem: "the object does not exist".into(),
                })?;
            String::from_utf8(fetched.bytes).map_err(|_| ConfigError::Read {
                source_ref: location.to_string(),
                problem: "not UTF-8 text".into(),
            })?
        }
    };
    Config::from_toml(&text)
}

/// The splitter, configured from the environment:
/// `CASEFEED_CONFIG` (path or s3:// URI, required), `WORK_QUEUE_URL` (required),
/// `SEND_CONCURRENCY` (1-64, default 8), `SQS_MAX_MESSAGE_BYTES` (1024-1048576, default 1 MiB),
/// `S3_READ_CONCURRENCY` (1-16, default 4; 1 reads every object as one stream) and
/// `S3_READ_PART_MIB` (1-64, default 4): objects of 16 MiB or more are read by that many
/// ranged GETs of that size in parallel.
pub async fn splitter_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<Splitter<S3Store, SqsQueue>, ConfigError> {
    let location = env_required("CASEFEED_CONFIG")?;
    let queue_url = env_required("WORK_QUEUE_URL")?;
    if !(queue_url.starts_with("https://") || queue_url.starts_with("http://")) {
        return Err(ConfigError::Env {
            name: "WORK_QUEUE_URL".into(),
            problem: "must be a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)"
                .into(),
        });
    }
    let concurrency = env_number("SEND_CONCURRENCY", 8, 1, 64)? as usize;
    let max_message_bytes =
        env_number("SQS_MAX_MESSAGE_BYTES", 1024 * 1024, 1024, 1024 * 1024)? as usize;
    let ranged = RangedReads {
        concurrency: env_number("S3_READ_CONCURRENCY", 4, 1, 16)? as usize,
        part_size: env_number("S3_READ_PART_MIB", 4, 1, 64)? << 20,
        ..RangedReads::default()
    };
    let store = S3Store::from_conf(sdk).with_ranged_reads(ranged);
    let config = load_config(&location, &store).await?;
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(sdk), queue_url);
    Ok(Splitter {
        store,
        queue,
        config: Arc::new(config),
        settings: SplitterSettings {
            sender: SenderSettings {
                concurrency,
                max_message_bytes,
                ..SenderSettings::default()
            },
            ..SplitterSettings::default()
        },
    })
}

/// The consumer, configured from the environment:
/// `API_BASE_URL` (https; `API_ALLOW_HTTP=1` for local runs only), `API_TOKEN_SECRET_ARN`
/// (Secrets Manager; the secret is the token, or JSON `{"token": "…"}`; re-read when the API
/// refuses the token) — or `API_TOKEN` when `API_ALLOW_HTTP=1` —, `WORK_QUEUE_URL`,
/// `DLQ_URL`, `LEDGER_TABLE` (required); `RECORD_CONCURRENCY` (1-10, default 2),
/// `BACKOFF_BASE_SECS` (default 5), `BACKOFF_CAP_SECS` (default 900, at most 900: SQS's
/// longest delay), `RETRY_WINDOW_SECS` (default 86400, at most 259200: for messages whose
/// envelope names no window), `API_TIMEOUT_MS` (default 10000), `API_CONNECT_TIMEOUT_MS`
/// (default 2000), `LEDGER_LEASE_SECS` (default 120; at least twice `API_TIMEOUT_MS +
/// API_CONNECT_TIMEOUT_MS`), `LEDGER_WAIT_MS` (default 2000: how long a message waits in
/// process for another attempt's lease on its record), `LEDGER_TTL_DAYS` (default 30;
/// longer than a message can live in the work queue and the DLQ); the fleet-wide gate:
/// `API_RATE_PER_SEC` (1-100000, default 10), `API_RATE_HEADROOM_PCT` (0-50, default 5),
/// `API_RATE_HORIZON_MS` (10-5000, default 200), `GATE_WAIT_MS` (0-60000, default 2000),
/// `BREAKER_THRESHOLD` (default 3), `BREAKER_PROBE_SECS` (1-3600, default 30),
/// `BREAKER_RAMP_SECS` (0-3600, default 60); `DEADLINE_MARGIN_MS` (100-60000, default
/// 1500: the end of an invocation kept for reporting the batch).
pub async fn consumer_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<Consumer<DynamoLedger, DynamoLedger, HttpApi, SqsWork>, ConfigError> {
    let base_url = env_required("API_BASE_URL")?;
    let allow_http = matches!(
        std::env::var("API_ALLOW_HTTP").as_deref(),
        Ok("1") | Ok("true")
    );
    let work_queue_url = env_required("WORK_QUEUE_URL")?;
    let dlq_url = env_required("DLQ_URL")?;
    let table = env_required("LEDGER_TABLE")?;
    let concurrency = env_number("RECORD_CONCURRENCY", 2, 1, 10)? as usize;
    let base = env_number("BACKOFF_BASE_SECS", 5, 1, 3600)?;
    let cap = env_number("BACKOFF_CAP_SECS", 900, 1, 900)?;
    if cap < base {
        return Err(ConfigError::Env {
            name: "BACKOFF_CAP_SECS".into(),
            problem: format!("{cap} is below BACKOFF_BASE_SECS ({base})"),
        });
    }
    let timeout = env_number("API_TIMEOUT_MS", 10_000, 100, 60_000)?;
    let connect = env_number("API_CONNECT_TIMEOUT_MS", 2_000, 100, 30_000)?;
    let lease = env_number("LEDGER_LEASE_SECS", 120, 5, 43_200)?;
    // a lease must outlast the call it guards: one that expired while its call is in flight
    // would let a second call for the same record start
    let longest_call_ms = timeout + connect;
    if lease * 1000 < longest_call_ms * 2 {
        return Err(ConfigError::Env {
            name: "LEDGER_LEASE_SECS".into(),
            problem: format!(
                "{lease} s is too short: it must be at least twice the longest API call \
                 (API_TIMEOUT_MS + API_CONNECT_TIMEOUT_MS = {longest_call_ms} ms)"
            ),
        });
    }
    let wait = env_number("LEDGER_WAIT_MS", 2_000, 0, 60_000)?;
    let ttl_days = env_number("LEDGER_TTL_DAYS", 30, 1, 3_650)?;
    let window = env_number(
        "RETRY_WINDOW_SECS",
        86_400,
        1,
        crate::config::MAX_RETRY_WINDOW_SECS,
    )?;
    let gate = GateSettings {
        rate_per_sec: env_number("API_RATE_PER_SEC", 10, 1, 100_000)? as f64,
        headroom: env_number("API_RATE_HEADROOM_PCT", 5, 0, 50)? as f64 / 100.0,
        horizon: Duration::from_millis(env_number("API_RATE_HORIZON_MS", 200, 10, 5_000)?),
        threshold: env_number("BREAKER_THRESHOLD", 3, 1, 1000)? as u32,
        probe_interval: Duration::from_secs(env_number("BREAKER_PROBE_SECS", 30, 1, 3_600)?),
        ramp: Duration::from_secs(env_number("BREAKER_RAMP_SECS", 60, 0, 3_600)?),
    };
    let gate_wait = env_number("GATE_WAIT_MS", 2_000, 0, 60_000)?;
    let deadline_margin = env_number("DEADLINE_MARGIN_MS", 1_500, 100, 60_000)?;

    let secret_arn = std::env::var("API_TOKEN_SECRET_ARN").unwrap_or_default();
    let secret = (!secret_arn.trim().is_empty()).then(|| TokenSecret::new(sdk, secret_arn.trim()));
    let token = if let Some(secret) = &secret {
        secret.read().await?
    } else if allow_http {
        env_required("API_TOKEN")?
    } else {
        return Err(ConfigError::Env {
            name: "API_TOKEN_SECRET_ARN".into(),
            problem: "is not set (a plain API_TOKEN is accepted only for local runs with API_ALLOW_HTTP=1)".into(),
        });
    };
    let api = HttpApi::new(
        &base_url,
        &token,
        allow_http,
        Duration::from_millis(connect),
        Duration::from_millis(timeout),
    )
    .map_err(|e| ConfigError::Env {
        name: "API_BASE_URL".into(),
        problem: e.to_string(),
    })?;
    let api = match secret {
        Some(secret) => api.with_secret(secret),
        None => api,
    };
    let table = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(sdk),
        table,
        Duration::from_secs(ttl_days * 86_400),
    );
    Ok(Consumer {
        ledger: Ledger {
            table: table.clone(),
            lease: Duration::from_secs(lease),
            wait: Duration::from_millis(wait),
        },
        gate: Gate::new(table, gate),
        api,
        queue: SqsWork {
            client: aws_sdk_sqs::Client::new(sdk),
            work_queue_url,
            dlq_url,
        },
        settings: ConsumerSettings {
            concurrency,
            backoff: Backoff::new(Duration::from_secs(base), Duration::from_secs(cap)),
            retry_window: Duration::from_secs(window),
            gate_wait: Duration::from_millis(gate_wait),
            deadline_margin: Duration::from_millis(deadline_margin),
        },
    })
}
