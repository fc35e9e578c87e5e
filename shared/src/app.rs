//! Start-up wiring shared by the Lambda binaries and the CLI: read the environment once,
//! build AWS clients once, load and validate the feed configuration. Every failure here is
//! a clear start-up error naming the variable or the feed field.

use crate::config::{env_number, env_required, Config, ConfigError, ConfigSource};
use crate::queue::{SenderSettings, SqsQueue};
use crate::s3::S3Store;
use crate::splitter::{Splitter, SplitterSettings};
use crate::store::ObjectStore;
use std::sync::Arc;

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
/// `SEND_CONCURRENCY` (1-64, default 8), `SQS_MAX_MESSAGE_BYTES` (1024-1048576, default 1 MiB).
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
    let store = S3Store::from_conf(sdk);
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
