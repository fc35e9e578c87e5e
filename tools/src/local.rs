//! The local stack: `moto_server` (S3, SQS) on a free loopback port, Lambda binaries under
//! AWS's Runtime Interface Emulator, and the resources of template.yaml recreated in moto.
//! Used by `casefeed demo` and by the end-to-end tests. Everything listens on 127.0.0.1 and
//! every process started here is killed when its guard drops.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("{0}")]
    Aws(String),
}

fn setup(what: impl Into<String>, detail: impl std::fmt::Display) -> LocalError {
    LocalError::Setup {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn aws<E: std::fmt::Debug>(op: &str) -> impl FnOnce(E) -> LocalError + '_ {
    move |e| LocalError::Aws(format!("{op}: {e:?}"))
}

/// The workspace root (where `.venv/` and `target/` live).
pub fn root() -> PathBuf {
    if let Some(r) = std::env::var_os("CASEFEED_ROOT") {
        return PathBuf::from(r);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// The project's Python virtualenv (`make tools` fills it).
pub fn venv() -> PathBuf {
    std::env::var_os("CASEFEED_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv"))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (relative to the workspace root),
/// else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

/// A binary of the workspace built with `cargo build --release`.
pub fn release_bin(name: &str) -> Result<PathBuf, LocalError> {
    let p = target_dir().join("release").join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(setup(
            format!("{} is missing", p.display()),
            "run `make build` (cargo build --release --workspace --bins)",
        ))
    }
}

/// AWS's Runtime Interface Emulator, shipped inside the aws-sam-cli package.
pub fn rie_bin() -> Result<PathBuf, LocalError> {
    let lib = venv().join("lib");
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    };
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e
                .path()
                .join("site-packages/samcli/local/rapid")
                .join(format!("aws-lambda-rie-{arch}"));
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(setup(
        format!("aws-lambda-rie not found under {}", lib.display()),
        "run `make tools` (installs aws-sam-cli into .venv/)",
    ))
}

pub fn free_port() -> Result<u16, LocalError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| setup("no free loopback port", e))
}

/// A child process, killed on drop — with its whole process group when it leads one (the
/// emulator and the function binary it runs die together, as when Lambda stops an
/// execution environment).
pub struct Proc {
    child: Child,
    group: bool,
}

impl Proc {
    fn kill(&mut self) {
        if self.group {
            if let Ok(pgid) = i32::try_from(self.child.id()) {
                // SAFETY: killpg only sends a signal; the group is the one this child leads
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's log file, removed when its owner is dropped — kept when the drop comes from a
/// panic (a failed test wants it) or `CASEFEED_KEEP_LOGS` is set.
fn remove_log(log: &Path) {
    if !std::thread::panicking() && std::env::var_os("CASEFEED_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_file(log);
    }
}

pub fn wait_port(port: u16, what: &str, timeout: Duration) -> Result<(), LocalError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(setup(
        format!("{what} did not listen on 127.0.0.1:{port}"),
        format!("within {timeout:?}"),
    ))
}

/// A moto server on a free loopback port.
pub struct Moto {
    pub endpoint: String,
    pub log: PathBuf,
    _proc: Proc,
}

impl Moto {
    pub fn start() -> Result<Moto, LocalError> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("casefeed-moto-{port}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| setup("moto log file", e))?;
        // moto_server with DynamoDB's conditional writes made atomic (see the script)
        let bin = venv().join("bin/python");
        let script = root().join("tools/moto/serial_dynamodb.py");
        let child = Command::new(&bin)
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| setup(format!("starting {} (run `make tools`)", bin.display()), e))?;
        let proc = Proc {
            child,
            group: false,
        };
        wait_port(port, "moto_server", Duration::from_secs(60))?;
        Ok(Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _proc: proc,
        })
    }
}

impl Moto {
    /// The moto server's process id (to read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self._proc.child.id()
    }
}

/// AWS SDK configuration aimed at a local endpoint with dummy credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "local",
        ))
        .load()
        .await
}

/// One received SQS message.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: String,
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The consumer's ledger table in the local stack.
pub const LEDGER_TABLE: &str = "casefeed-ledger";

/// moto with the data bucket (versioned, like production's), the work queue (redrive to the
/// DLQ), the consumer's ledger table and the feed config.
pub struct Stack {
    pub moto: Moto,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub bucket: String,
    pub ledger_table: String,
    pub queue_url: String,
    pub dlq_url: String,
    seq: std::sync::atomic::AtomicU64,
}

impl Stack {
    pub async fn start(
        bucket: &str,
        feeds_toml: &str,
        max_receive_count: u32,
    ) -> Result<Stack, LocalError> {
        let moto = Moto::start()?;
        let conf = sdk_config(&moto.endpoint).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let dynamodb = aws_sdk_dynamodb::Client::new(&conf);
        s3.create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(aws("CreateBucket"))?;
        s3.put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(aws("PutBucketVersioning"))?;
        create_ledger_table(&dynamodb, LEDGER_TABLE).await?;
        let dlq_url = sqs
            .create_queue()
            .queue_name("casefeed-dlq")
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
                "1209600",
            )
            .send()
            .await
            .map_err(aws("CreateQueue dlq"))?
            .queue_url
            .ok_or_else(|| LocalError::Aws("CreateQueue: no URL".into()))?;
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(aws("GetQueueAttributes"))?
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .ok_or_else(|| LocalError::Aws("GetQueueAttributes: no QueueArn".into()))?;
        let queue_url = sqs
            .create_queue()
            .queue_name("casefeed-work")
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count.to_string()})
                    .to_string(),
            )
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
                "1048576",
            )
            .send()
            .await
            .map_err(aws("CreateQueue work"))?
            .queue_url
            .ok_or_else(|| LocalError::Aws("CreateQueue: no URL".into()))?;
        s3.put_object()
            .bucket(bucket)
            .key("config/feeds.toml")
            .body(feeds_toml.as_bytes().to_vec().into())
            .send()
            .await
            .map_err(aws("PutObject config"))?;
        Ok(Stack {
            moto,
            s3,
            sqs,
            dynamodb,
            bucket: bucket.to_string(),
            ledger_table: LEDGER_TABLE.to_string(),
            queue_url,
            dlq_url,
            seq: std::sync::atomic::AtomicU64::new(0x1000),
        })
    }

    /// The environment the splitter gets (as template.yaml sets it, aimed at moto).
    pub fn splitter_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.moto.endpoint.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            (
                "CASEFEED_CONFIG".into(),
                format!("s3://{}/config/feeds.toml", self.bucket),
            ),
            ("WORK_QUEUE_URL".into(), self.queue_url.clone()),
            ("SEND_CONCURRENCY".into(), "4".into()),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    /// The environment the consumer gets, aimed at moto and a local API (plain HTTP and a
    /// plain token are allowed for local runs only).
    pub fn consumer_env(&self, api_base_url: &str, token: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.moto.endpoint.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("API_BASE_URL".into(), api_base_url.into()),
            ("API_ALLOW_HTTP".into(), "1".into()),
            ("API_TOKEN".into(), token.into()),
            ("WORK_QUEUE_URL".into(), self.queue_url.clone()),
            ("DLQ_URL".into(), self.dlq_url.clone()),
            ("LEDGER_TABLE".into(), self.ledger_table.clone()),
            ("RECORD_CONCURRENCY".into(), "2".into()),
            ("BACKOFF_BASE_SECS".into(), "1".into()),
            ("BACKOFF_CAP_SECS".into(), "4".into()),
            ("API_TIMEOUT_MS".into(), "3000".into()),
            ("API_CONNECT_TIMEOUT_MS".into(), "1000".into()),
            // at least twice the longest call (3 s + 1 s): a call whose outcome is unknown
            // keeps its record's lease this long
            ("LEDGER_LEASE_SECS".into(), "10".into()),
            // the fleet-wide gate, compressed: a rate no local run reaches unless a test
            // sets one, a probe every 2 s while the breaker is open, a 2 s ramp
            ("API_RATE_PER_SEC".into(), "1000".into()),
            ("BREAKER_PROBE_SECS".into(), "2".into()),
            ("BREAKER_RAMP_SECS".into(), "2".into()),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    /// Upload a local file; returns the S3 event S3 would send for it (fresh, increasing
    /// sequencer; the current time as event time).
    pub async fn upload(&self, key: &str, file: &Path) -> Result<Value, LocalError> {
        self.upload_with_metadata(key, file, &[]).await
    }

    /// [`Stack::upload`] with S3 user metadata: each `(name, value)` is sent as the header
    /// `x-amz-meta-<name>`.
    pub async fn upload_with_metadata(
        &self,
        key: &str,
        file: &Path,
        metadata: &[(&str, &str)],
    ) -> Result<Value, LocalError> {
        let body =
            std::fs::read(file).map_err(|e| setup(format!("reading {}", file.display()), e))?;
        let size = body.len() as u64;
        let mut put = self.s3.put_object().bucket(&self.bucket).key(key);
        for (name, value) in metadata {
            put = put.metadata(*name, *value);
        }
        let out = put
            .body(body.into())
            .send()
            .await
            .map_err(aws("PutObject"))?;
        let etag = out
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut event = s3_event(&self.bucket, key, &etag, size, &format!("00{seq:016X}"));
        // a versioned bucket: the event names the version, and the splitter reads it
        if let Some(v) = out.version_id() {
            event["Records"][0]["s3"]["object"]["versionId"] = json!(v);
        }
        Ok(event)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LocalError> {
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(
                o.body
                    .collect()
                    .await
                    .map_err(aws("GetObject body"))?
                    .into_bytes()
                    .to_vec(),
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(LocalError::Aws(format!("GetObject {key}: {e:?}"))),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, LocalError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(aws("ListObjectsV2"))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Run reports under `runs/<feed>/`, oldest first (run ids start with a timestamp).
    pub async fn reports(&self, feed: &str) -> Result<Vec<Value>, LocalError> {
        let mut out = Vec::new();
        for k in self.list(&format!("runs/{feed}/")).await? {
            if let Some(b) = self.get(&k).await? {
                out.push(
                    serde_json::from_slice(&b).map_err(|e| LocalError::Aws(format!("{k}: {e}")))?,
                );
            }
        }
        Ok(out)
    }

    /// Approximate number of messages (visible + in flight) in a queue.
    pub async fn depth(&self, queue_url: &str) -> Result<u64, LocalError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(aws("GetQueueAttributes"))?;
        let attrs = out.attributes.unwrap_or_default();
        let n = |a: &A| {
            attrs
                .get(a)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(n(&A::ApproximateNumberOfMessages) + n(&A::ApproximateNumberOfMessagesNotVisible))
    }

    /// Receive and delete every message currently visible in a queue.
    pub async fn drain(&self, queue_url: &str) -> Result<Vec<Received>, LocalError> {
        let mut out = Vec::new();
        let mut empty_polls = 0;
        while empty_polls < 2 {
            let r = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(aws("ReceiveMessage"))?;
            let msgs = r.messages.unwrap_or_default();
            if msgs.is_empty() {
                empty_polls += 1;
                continue;
            }
            for m in msgs {
                let attributes = m
                    .message_attributes
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                    .collect();
                out.push(Received {
                    body: m.body.clone().unwrap_or_default(),
                    attributes,
                });
                self.sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .map_err(aws("DeleteMessage"))?;
            }
        }
        Ok(out)
    }
}

/// Create the consumer's ledger table as template.yaml declares it: partition key `pk`
/// (string), on-demand, TTL on `expires_at`.
pub async fn create_ledger_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(), LocalError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    let build = |e: aws_sdk_dynamodb::error::BuildError| LocalError::Aws(e.to_string());
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .map_err(build)?,
        )
        .send()
        .await
        .map_err(aws("CreateTable"))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expires_at")
                .build()
                .map_err(build)?,
        )
        .send()
        .await
        .map_err(aws("UpdateTimeToLive"))?;
    Ok(())
}

/// An S3 `ObjectCreated:Put` notification as S3 sends it (key URL-encoded, `+` for space).
pub fn s3_event(bucket: &str, key: &str, etag: &str, size: u64, sequencer: &str) -> Value {
    let encoded: String = key
        .split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b' ' => "+".to_string(),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/");
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "LOCAL"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "LOCAL", "x-amz-id-2": "LOCAL"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "incoming",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "LOCAL"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": encoded, "size": size, "eTag": etag, "sequencer": sequencer}
        }
    }]})
}

impl Drop for Moto {
    fn drop(&mut self) {
        remove_log(&self.log);
    }
}

/// A Lambda binary under the Runtime Interface Emulator (one invocation at a time).
pub struct Rie {
    pub url: String,
    pub log: PathBuf,
    client: reqwest::Client,
    _proc: Proc,
}

impl Rie {
    pub fn start(binary: &Path, env: &[(String, String)], name: &str) -> Result<Rie, LocalError> {
        let port = free_port()?;
        let api_port = free_port()?;
        let log = std::env::temp_dir().join(format!("casefeed-{name}-{port}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| setup("RIE log file", e))?;
        let logf2 = logf.try_clone().map_err(|e| setup("RIE log file", e))?;
        let mut cmd = Command::new(rie_bin()?);
        cmd.arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg(binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "300")
            .env("CASEFEED_NO_METRICS", "1")
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2);
        // its own process group, so that a kill takes the function binary with it
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| setup("starting aws-lambda-rie", e))?;
        let proc = Proc { child, group: true };
        wait_port(port, "aws-lambda-rie", Duration::from_secs(20))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(310))
            .build()
            .map_err(|e| setup("HTTP client", e))?;
        Ok(Rie {
            url: format!("http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"),
            log,
            client,
            _proc: proc,
        })
    }

    /// Invoke; the function's JSON answer (a failed invocation answers `errorMessage`).
    pub async fn invoke(&self, payload: &Value) -> Result<Value, LocalError> {
        let resp = self
            .client
            .post(&self.url)
            .json(payload)
            .send()
            .await
            .map_err(|e| setup("invoking the function", e))?;
        let text = resp
            .text()
            .await
            .map_err(|e| setup("reading the invocation answer", e))?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kill the emulator and the function it runs (SIGKILL), mid-invocation or not: a
    /// crashed execution environment.
    pub fn kill(&mut self) {
        self._proc.kill();
    }
}

impl Drop for Rie {
    fn drop(&mut self) {
        remove_log(&self.log);
    }
}
