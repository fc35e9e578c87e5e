//! End-to-end harness: a real `moto_server` (S3, SQS) on a free loopback port, real Lambda
//! binaries under AWS's Runtime Interface Emulator, and the project's own data generator.
//! Everything listens on 127.0.0.1 and is killed when its guard drops.
//!
//! Needs (installed by `make test`): `.venv/` with `moto[server]` and `aws-sam-cli` (for the
//! emulator binary), and release builds of the workspace binaries.

use serde::Deserialize;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "casefeed-e2e";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn venv() -> PathBuf {
    std::env::var_os("CASEFEED_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv"))
}

/// A binary of the workspace, built with `cargo build --release`.
pub fn release_bin(name: &str) -> PathBuf {
    let p = root().join("target/release").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --workspace --bins` (make test does)",
        p.display()
    );
    p
}

/// AWS's Runtime Interface Emulator, shipped inside the aws-sam-cli package.
pub fn rie_bin() -> PathBuf {
    let lib = venv().join("lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e
                .path()
                .join("site-packages/samcli/local/rapid/aws-lambda-rie-x86_64");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "aws-lambda-rie not found under {}: run `make tools` (installs aws-sam-cli into .venv)",
        lib.display()
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, what: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}");
}

/// A moto server on a free loopback port.
pub struct Moto {
    pub endpoint: String,
    _proc: Proc,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("casefeed-moto-{port}.log"));
        let logf = std::fs::File::create(&log).expect("moto log file");
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto_server (run `make tools`): {e}"));
        let proc = Proc {
            child,
            name: "moto".into(),
        };
        wait_port(port, "moto_server", Duration::from_secs(30));
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _proc: proc,
        }
    }
}

/// AWS SDK configuration aimed at the local endpoint.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "e2e",
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

/// moto + bucket + queues + feed configuration.
pub struct Stack {
    pub moto: Moto,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub dlq_url: String,
    pub work_dir: PathBuf,
    seq: std::sync::atomic::AtomicU64,
}

pub const FEEDS: &str = r#"
[defaults]
first_file = "baseline"
max_row_bytes = 65536

[[feed]]
name = "lab_results"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
required_columns = ["record_id", "patient_id", "test_code", "result"]
"#;

impl Stack {
    pub async fn new(test: &str, feeds_toml: &str) -> Stack {
        let moto = Moto::start();
        let conf = sdk_config(&moto.endpoint).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::new(&conf);
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create bucket");
        let dlq_url = sqs
            .create_queue()
            .queue_name("casefeed-dlq")
            .send()
            .await
            .expect("create dlq")
            .queue_url
            .expect("dlq url");
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq attrs")
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .expect("dlq arn");
        let queue_url = sqs
            .create_queue()
            .queue_name("casefeed-work")
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}).to_string(),
            )
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
                "1048576",
            )
            .send()
            .await
            .expect("create work queue")
            .queue_url
            .expect("queue url");
        s3.put_object()
            .bucket(BUCKET)
            .key("config/feeds.toml")
            .body(feeds_toml.as_bytes().to_vec().into())
            .send()
            .await
            .expect("upload config");
        let work_dir =
            std::env::temp_dir().join(format!("casefeed-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir).expect("work dir");
        Stack {
            moto,
            s3,
            sqs,
            queue_url,
            dlq_url,
            work_dir,
            seq: std::sync::atomic::AtomicU64::new(0x1000),
        }
    }

    /// The environment a Lambda binary gets (as in template.yaml, aimed at moto).
    pub fn lambda_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.moto.endpoint.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            (
                "CASEFEED_CONFIG".into(),
                format!("s3://{BUCKET}/config/feeds.toml"),
            ),
            ("WORK_QUEUE_URL".into(), self.queue_url.clone()),
            ("SEND_CONCURRENCY".into(), "4".into()),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    /// Upload a local file; returns the S3 event for it (with a fresh, increasing sequencer).
    pub async fn upload(&self, key: &str, file: &Path) -> Value {
        let body = std::fs::read(file).expect("read upload");
        let size = body.len();
        let out = self
            .s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into())
            .send()
            .await
            .expect("upload");
        let etag = out
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s3_event(key, &etag, size as u64, &format!("00{seq:016X}"))
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.s3.get_object().bucket(BUCKET).key(key).send().await {
            Ok(o) => Some(o.body.collect().await.expect("body").into_bytes().to_vec()),
            Err(_) => None,
        }
    }

    pub async fn list(&self, prefix: &str) -> Vec<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .expect("list");
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// Run reports under `runs/<feed>/`, oldest first (run ids start with a timestamp).
    pub async fn reports(&self, feed: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for k in self.list(&format!("runs/{feed}/")).await {
            let b = self.get(&k).await.expect("report");
            out.push(serde_json::from_slice(&b).expect("report json"));
        }
        out
    }

    /// Receive and delete every message currently in a queue.
    pub async fn drain(&self, queue_url: &str) -> Vec<Received> {
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
                .expect("receive");
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
                    .expect("delete");
            }
        }
        out
    }
}

fn now_millis() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An S3 `ObjectCreated:Put` notification, as S3 sends it (key URL-encoded, `+` for space).
pub fn s3_event(key: &str, etag: &str, size: u64, sequencer: &str) -> Value {
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
        "eventTime": now_millis(),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "E2E", "x-amz-id-2": "E2E"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "incoming",
            "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": format!("arn:aws:s3:::{BUCKET}")},
            "object": {"key": encoded, "size": size, "eTag": etag, "sequencer": sequencer}
        }
    }]})
}

/// A Lambda binary under the Runtime Interface Emulator (one invocation at a time).
pub struct Rie {
    pub url: String,
    _proc: Proc,
    pub log: PathBuf,
}

impl Rie {
    pub fn start(binary: &Path, env: &[(String, String)], log_name: &str) -> Rie {
        let port = free_port();
        let api_port = free_port();
        let log = std::env::temp_dir().join(format!("casefeed-{log_name}-{port}.log"));
        let logf = std::fs::File::create(&log).expect("rie log");
        let logf2 = logf.try_clone().expect("rie log clone");
        let mut cmd = Command::new(rie_bin());
        cmd.arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg(binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "300")
            .env("CASEFEED_NO_METRICS", "1")
            .stdout(logf)
            .stderr(logf2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start aws-lambda-rie");
        let proc = Proc {
            child,
            name: log_name.into(),
        };
        wait_port(port, "aws-lambda-rie", Duration::from_secs(20));
        Rie {
            url: format!("http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"),
            _proc: proc,
            log,
        }
    }

    /// Invoke and return the function's JSON answer (an error answer has `errorMessage`).
    pub async fn invoke(&self, payload: &Value) -> Value {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("http client");
        let resp = client
            .post(&self.url)
            .json(payload)
            .send()
            .await
            .expect("invoke");
        let text = resp.text().await.expect("invoke body");
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// What the generator says a file contains.
#[derive(Debug, Clone, Deserialize)]
pub struct Expected {
    pub rows: u64,
    pub new: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    #[serde(default)]
    pub malformed_lines: Vec<u64>,
    pub columns: Vec<String>,
}

/// Run `casefeed gen …`; returns what it expects of the file.
pub fn gen(args: &[&str], out: &Path) -> Expected {
    let status = Command::new(release_bin("casefeed"))
        .arg("gen")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("run casefeed gen");
    assert!(status.success(), "casefeed gen {args:?} failed");
    let exp = std::fs::read(format!("{}.expected.json", out.display())).expect("expected.json");
    serde_json::from_slice(&exp).expect("expected.json parses")
}

/// Read a CSV file into record_id → row map (by header name).
pub fn read_rows(
    path: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let mut rdr = csv::Reader::from_path(path).expect("open csv");
    let header: Vec<String> = rdr
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for r in rdr.records().flatten() {
        if r.len() != header.len() {
            continue;
        }
        let row: std::collections::BTreeMap<String, String> = header
            .iter()
            .cloned()
            .zip(r.iter().map(str::to_string))
            .collect();
        if let Some(id) = row.get("record_id") {
            out.entry(id.clone()).or_insert(row);
        }
    }
    out
}
