//! End-to-end harness: thin, panicking wrappers over the local stack of `casefeed-tools`
//! (a real `moto_server` on a free loopback port, release Lambda binaries under AWS's Runtime
//! Interface Emulator) plus the project's data generator. Needs `make tools` and
//! `make build` (both run by `make test`).

pub use casefeed_tools::api::Record;
use casefeed_tools::local;
pub use casefeed_tools::local::{Received, REGION};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BUCKET: &str = "casefeed-e2e";

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

pub fn release_bin(name: &str) -> PathBuf {
    local::release_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

/// moto with the bucket, queues and feed configuration, plus a scratch directory.
pub struct Stack {
    pub inner: local::Stack,
    pub queue_url: String,
    pub dlq_url: String,
    pub work_dir: PathBuf,
}

impl Stack {
    pub async fn new(test: &str, feeds_toml: &str) -> Stack {
        Stack::with_receives(test, feeds_toml, 5).await
    }

    /// With the work queue's redrive after `max_receive_count` receives.
    pub async fn with_receives(test: &str, feeds_toml: &str, max_receive_count: u32) -> Stack {
        let inner = local::Stack::start(BUCKET, feeds_toml, max_receive_count)
            .await
            .unwrap_or_else(|e| panic!("local stack: {e}"));
        let work_dir =
            std::env::temp_dir().join(format!("casefeed-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir).expect("work dir");
        Stack {
            queue_url: inner.queue_url.clone(),
            dlq_url: inner.dlq_url.clone(),
            inner,
            work_dir,
        }
    }

    pub fn lambda_env(&self) -> Vec<(String, String)> {
        self.inner.splitter_env()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    pub async fn upload(&self, key: &str, file: &Path) -> Value {
        self.inner.upload(key, file).await.expect("upload")
    }

    /// Upload with S3 user metadata (`x-amz-meta-<name>`).
    pub async fn upload_with_metadata(
        &self,
        key: &str,
        file: &Path,
        metadata: &[(&str, &str)],
    ) -> Value {
        self.inner
            .upload_with_metadata(key, file, metadata)
            .await
            .expect("upload")
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.get(key).await.expect("get")
    }

    pub async fn list(&self, prefix: &str) -> Vec<String> {
        self.inner.list(prefix).await.expect("list")
    }

    pub async fn reports(&self, feed: &str) -> Vec<Value> {
        self.inner.reports(feed).await.expect("reports")
    }

    pub async fn drain(&self, queue_url: &str) -> Vec<Received> {
        self.inner.drain(queue_url).await.expect("drain")
    }
}

pub fn s3_event(key: &str, etag: &str, size: u64, sequencer: &str) -> Value {
    local::s3_event(BUCKET, key, etag, size, sequencer)
}

/// A Lambda binary under the Runtime Interface Emulator.
pub struct Rie(pub local::Rie);

impl Rie {
    pub fn start(binary: &Path, env: &[(String, String)], name: &str) -> Rie {
        Rie(local::Rie::start(binary, env, name).unwrap_or_else(|e| panic!("{e}")))
    }

    pub async fn invoke(&self, payload: &Value) -> Value {
        self.0.invoke(payload).await.expect("invoke")
    }

    pub fn log_text(&self) -> String {
        self.0.log_text()
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

/// The generator's personal columns: what no log line, output or record may ever show.
pub const PERSONAL_COLUMNS: [&str; 5] = [
    "first_name",
    "last_name",
    "phone",
    "street",
    "date_of_birth",
];

/// The personal values of a CSV file's rows ([`PERSONAL_COLUMNS`]), those of at least
/// `min_chars` characters (shorter ones occur by chance in ids and timestamps).
pub fn personal_values(path: &Path, min_chars: usize) -> std::collections::BTreeSet<String> {
    read_rows(path)
        .values()
        .flat_map(|row| PERSONAL_COLUMNS.iter().filter_map(|c| row.get(*c)))
        .filter(|v| v.chars().count() >= min_chars)
        .cloned()
        .collect()
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

/// `GET {base}/records` of the stand-in API: every record it holds (fields, current version,
/// every acknowledged version), sorted by feed and record key.
pub async fn api_records(base: &str, token: &str) -> Vec<Record> {
    let resp = reqwest::Client::new()
        .get(format!("{}/records", base.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /records");
    assert!(
        resp.status().is_success(),
        "GET /records: {}",
        resp.status()
    );
    let mut body: Value = resp.json().await.expect("GET /records body");
    serde_json::from_value(body["records"].take()).expect("GET /records shape")
}

/// Write `dst` as `src` with each row (by header name) passed through `edit(record_id, row)`,
/// the header and column order kept.
pub fn rewrite_csv(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(&str, &mut std::collections::BTreeMap<String, String>),
) {
    let mut rdr = csv::Reader::from_path(src).expect("open csv");
    let header: Vec<String> = rdr
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let mut w = csv::Writer::from_path(dst).expect("create csv");
    w.write_record(&header).expect("write header");
    for r in rdr.records() {
        let r = r.expect("a generated row parses");
        let mut row: std::collections::BTreeMap<String, String> = header
            .iter()
            .cloned()
            .zip(r.iter().map(str::to_string))
            .collect();
        let id = row.get("record_id").cloned().unwrap_or_default();
        edit(&id, &mut row);
        let out: Vec<&str> = header.iter().map(|h| row[h].as_str()).collect();
        w.write_record(&out).expect("write row");
    }
    w.flush().expect("flush csv");
}

/// One item of the consumer's ledger table, as strings (numbers in their decimal form).
pub type LedgerItem = std::collections::BTreeMap<String, String>;

impl Stack {
    /// Every item of the consumer's ledger table (a Scan: tests only; the consumer itself
    /// may not scan).
    pub async fn ledger_items(&self) -> Vec<LedgerItem> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .inner
                .dynamodb
                .scan()
                .table_name(&self.inner.ledger_table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("Scan the ledger table");
            for item in page.items.unwrap_or_default() {
                out.push(
                    item.into_iter()
                        .filter_map(|(k, v)| match v {
                            AttributeValue::S(s) | AttributeValue::N(s) => Some((k, s)),
                            _ => None,
                        })
                        .collect(),
                );
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        out
    }

    /// The fates the ledger recorded for `record_key`'s transitions: (version, fate).
    pub async fn ledger_fates(&self, record_key: &str) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = self
            .ledger_items()
            .await
            .into_iter()
            .filter(|i| {
                i["pk"].starts_with("key#")
                    && i.get("record_key").map(String::as_str) == Some(record_key)
            })
            .map(|i| (i["version"].parse().expect("a version"), i["fate"].clone()))
            .collect();
        out.sort();
        out
    }

    /// The record's item: (acknowledged version, whether a lease is on it).
    pub async fn ledger_record(&self, feed: &str, record_key: &str) -> Option<(Option<u64>, bool)> {
        let pk = casefeed::contract::layout::ledger_record_pk(feed, record_key);
        self.ledger_items()
            .await
            .into_iter()
            .find(|i| i["pk"] == pk)
            .map(|i| {
                (
                    i.get("acked")
                        .map(|a| a.parse().expect("acked is a number")),
                    i.contains_key("lease_owner"),
                )
            })
    }
}
