//! The shared fixtures of the splitter's tests: the test config, CSV tables (`Table`), a
//! recording fake queue, the `Harness` over `MemoryStore`, message decoding and count
//! helpers, and the scenarios several files use.

use crate::backoff::Backoff;
use crate::config::{Config, FeedConfig};
use crate::contract::envelope::{idempotency_key, next_chain, Envelope, Previous};
use crate::contract::event::ObjectEvent;
use crate::contract::layout::{run_report_key, snapshot_key};
use crate::contract::report::RunReport;
use crate::ports::queue::{
    EntryFailure, MessageQueue, OutMessage, QueueError, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES,
};
use crate::ports::store::{MemoryStore, ObjectStore};
use crate::splitter::filter::{ColumnPlan, Fingerprinter, Fingerprints};
use crate::splitter::sink::SenderSettings;
use crate::splitter::state::Snapshot;
use crate::splitter::{Outcome, SplitError, Splitter, SplitterSettings};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) const BUCKET: &str = "bkt";
pub(super) const TS1: &str = "2026-03-01T00:00:00Z";
pub(super) const TS2: &str = "2026-03-01T00:30:00Z";
pub(super) const TS3: &str = "2026-03-01T01:00:00Z";
pub(super) const TS4: &str = "2026-03-01T01:30:00Z";

const CONFIG: &str = r#"
[[feed]]
name = "labs"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
required_columns = ["patient_name", "result"]

[[feed]]
name = "cases"
key_columns = ["case_id"]
first_file = "send"

[[feed]]
name = "juris"
key_columns = ["jurisdiction", "case_id"]
first_file = "send"
"#;

pub(super) const LAB_COLS: [&str; 5] = [
    "record_id",
    "patient_name",
    "result",
    "collected",
    "export_timestamp",
];
pub(super) const LAB_HASHED: [&str; 3] = ["collected", "patient_name", "result"];

// ---------------------------------------------------------------------------------------
// a recording fake queue
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sent {
    body: String,
    attrs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum QueueMode {
    #[default]
    Healthy,
    /// Every call fails as a whole with a retryable service error.
    CallErr,
    /// Every entry fails (not the sender's fault).
    EntryErr,
    /// Calls #1 and #3 fail as a whole; every entry whose idempotency key starts with
    /// 0-7 fails its first two attempts.
    Flaky,
}

#[derive(Clone, Default)]
pub(super) struct RecordingQueue {
    sent: Arc<Mutex<Vec<Sent>>>,
    /// Attempts per idempotency key (accepted or not).
    pub(super) attempts: Arc<Mutex<HashMap<String, usize>>>,
    calls: Arc<AtomicUsize>,
    mode: Arc<Mutex<QueueMode>>,
    /// Entries whose body contains one of these are refused for good (sender fault).
    pub(super) refuse: Arc<Mutex<Vec<String>>>,
}

fn attr<'a>(m: &'a OutMessage, name: &str) -> &'a str {
    m.attributes
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

impl RecordingQueue {
    pub(super) fn set_mode(&self, m: QueueMode) {
        *self.mode.lock().unwrap() = m;
    }
    pub(super) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub(super) fn attempted_keys(&self) -> BTreeSet<String> {
        self.attempts.lock().unwrap().keys().cloned().collect()
    }
}

impl MessageQueue for RecordingQueue {
    async fn send_batch(&self, messages: &[OutMessage]) -> Result<Vec<EntryFailure>, QueueError> {
        assert!(!messages.is_empty() && messages.len() <= MAX_BATCH_ENTRIES);
        assert!(messages.iter().map(OutMessage::size).sum::<usize>() <= MAX_BATCH_BYTES);
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::task::yield_now().await;
        let mode = *self.mode.lock().unwrap();
        let call_err = || QueueError::Service {
            op: "SendMessageBatch",
            message: "ServiceUnavailable: try again".into(),
            retryable: true,
        };
        if mode == QueueMode::CallErr || (mode == QueueMode::Flaky && (call == 1 || call == 3)) {
            for m in messages {
                *self
                    .attempts
                    .lock()
                    .unwrap()
                    .entry(attr(m, "idempotency_key").to_string())
                    .or_default() += 1;
            }
            return Err(call_err());
        }
        let refuse = self.refuse.lock().unwrap().clone();
        let mut fails = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let ikey = attr(m, "idempotency_key").to_string();
            let n = {
                let mut a = self.attempts.lock().unwrap();
                let e = a.entry(ikey.clone()).or_default();
                *e += 1;
                *e
            };
            let flaky = mode == QueueMode::Flaky
                && ikey.starts_with(['0', '1', '2', '3', '4', '5', '6', '7'])
                && n <= 2;
            if mode == QueueMode::EntryErr || flaky {
                fails.push(EntryFailure {
                    index: i,
                    code: "InternalError".into(),
                    sender_fault: false,
                });
                continue;
            }
            if refuse.iter().any(|r| m.body.contains(r.as_str())) {
                fails.push(EntryFailure {
                    index: i,
                    code: "InvalidMessageContents".into(),
                    sender_fault: true,
                });
                continue;
            }
            self.sent.lock().unwrap().push(Sent {
                body: m.body.clone(),
                attrs: m
                    .attributes
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.clone()))
                    .collect(),
            });
        }
        Ok(fails)
    }
}

// ---------------------------------------------------------------------------------------
// CSV tables
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) struct Table {
    key: String,
    pub(super) cols: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
}

pub(super) fn lab_row(id: u32, ts: &str) -> Vec<String> {
    vec![
        id.to_string(),
        format!("Patient {id}"),
        "negative".into(),
        format!("2026-01-{:02}", id % 28 + 1),
        ts.into(),
    ]
}

impl Table {
    pub(super) fn new(cols: &[&str], key: &str) -> Table {
        Table {
            key: key.into(),
            cols: cols.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    pub(super) fn labs(ids: impl IntoIterator<Item = u32>, ts: &str) -> Table {
        let mut t = Table::new(&LAB_COLS, "record_id");
        for id in ids {
            t.rows.push(lab_row(id, ts));
        }
        t
    }
    pub(super) fn idx(&self, col: &str) -> usize {
        self.cols
            .iter()
            .position(|c| c == col)
            .unwrap_or_else(|| panic!("no column {col}"))
    }
    fn pos(&self, key: &str) -> usize {
        let k = self.idx(&self.key);
        self.rows
            .iter()
            .position(|r| r[k] == key)
            .unwrap_or_else(|| panic!("no row {key}"))
    }
    pub(super) fn row(&self, key: &str) -> &Vec<String> {
        &self.rows[self.pos(key)]
    }
    pub(super) fn has(&self, key: &str) -> bool {
        let k = self.idx(&self.key);
        self.rows.iter().any(|r| r[k] == key)
    }
    pub(super) fn set(&mut self, key: &str, col: &str, val: &str) {
        let (p, c) = (self.pos(key), self.idx(col));
        self.rows[p][c] = val.into();
    }
    pub(super) fn set_all(&mut self, col: &str, val: &str) {
        let c = self.idx(col);
        for r in &mut self.rows {
            r[c] = val.into();
        }
    }
    pub(super) fn remove(&mut self, key: &str) {
        let p = self.pos(key);
        self.rows.remove(p);
    }
    pub(super) fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.cols.len());
        self.rows.push(row);
    }
    pub(super) fn keys(&self) -> Vec<String> {
        let k = self.idx(&self.key);
        self.rows.iter().map(|r| r[k].clone()).collect()
    }
    pub(super) fn add_column(&mut self, name: &str, f: impl Fn(&str) -> String) {
        let k = self.idx(&self.key);
        self.cols.push(name.into());
        for r in &mut self.rows {
            let v = f(&r[k]);
            r.push(v);
        }
    }
    pub(super) fn drop_column(&self, name: &str) -> Table {
        let c = self.idx(name);
        let mut t = self.clone();
        t.cols.remove(c);
        for r in &mut t.rows {
            r.remove(c);
        }
        t
    }
    pub(super) fn reorder(&self, order: &[&str]) -> Table {
        assert_eq!(order.len(), self.cols.len());
        let idx: Vec<usize> = order.iter().map(|c| self.idx(c)).collect();
        Table {
            key: self.key.clone(),
            cols: order.iter().map(|c| c.to_string()).collect(),
            rows: self
                .rows
                .iter()
                .map(|r| idx.iter().map(|&i| r[i].clone()).collect())
                .collect(),
        }
    }
    pub(super) fn fields(&self, key: &str) -> BTreeMap<String, String> {
        self.cols
            .iter()
            .cloned()
            .zip(self.row(key).iter().cloned())
            .collect()
    }
    pub(super) fn csv(&self) -> Vec<u8> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.cols).unwrap();
        for r in &self.rows {
            w.write_record(r).unwrap();
        }
        w.into_inner().unwrap()
    }
    pub(super) fn fingerprints(&self, feed: &FeedConfig, key: &str) -> Fingerprints {
        let plan = ColumnPlan::new(&self.cols, feed, None).unwrap();
        Fingerprinter::default().fingerprints(
            &plan,
            &crate::splitter::source::Record::from_fields(self.row(key)),
        )
    }
    /// The content fingerprint the snapshot stores for a row of this file.
    pub(super) fn fp(&self, feed: &FeedConfig, key: &str) -> u64 {
        self.fingerprints(feed, key).store
    }
    /// The state `snap` holds for this file's row `key`: its previous state in the next run.
    pub(super) fn state_in(
        &self,
        feed: &FeedConfig,
        snap: &Snapshot,
        key: &str,
    ) -> Option<Previous> {
        let e = snap.entry(self.fingerprints(feed, key).key)?;
        Some(Previous {
            content: e.content,
            chain: e.chain,
        })
    }
    /// The snapshot entries this file should produce (first occurrence of a key wins).
    pub(super) fn entries(&self, feed: &FeedConfig) -> Vec<(u64, u64)> {
        let plan = ColumnPlan::new(&self.cols, feed, None).unwrap();
        let mut fp = Fingerprinter::default();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in &self.rows {
            let p = fp.fingerprints(&plan, &crate::splitter::source::Record::from_fields(r));
            if !out.iter().any(|e| e.0 == p.key) {
                out.push((p.key, p.store));
            }
        }
        out.sort();
        out
    }
}

/// The idempotency key of a record of a single-column-key feed.
pub(super) fn ikey(
    feed: &str,
    key: &str,
    previous: Option<Previous>,
    new: u64,
    version: u64,
) -> String {
    idempotency_key(feed, &[key.as_bytes()], previous, Some(new), version)
}

/// The state of a record first seen with content `content` and changed to each of `then`.
pub(super) fn history(content: u64, then: &[u64]) -> Previous {
    let mut p = Previous {
        content,
        chain: next_chain(None, content),
    };
    for &c in then {
        p = Previous {
            content: c,
            chain: next_chain(Some(p.chain), c),
        };
    }
    p
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------------------
// the harness
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub(super) env: Envelope,
    pub(super) attrs: BTreeMap<String, String>,
}

fn decode(s: &Sent) -> Msg {
    let env = Envelope::decode(&s.body).unwrap_or_else(|e| panic!("body does not decode: {e}"));
    let attrs: BTreeMap<String, String> = s.attrs.iter().cloned().collect();
    assert_eq!(attrs.len(), s.attrs.len(), "attribute names repeat");
    assert_eq!(
        attrs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["change", "feed", "idempotency_key"]
    );
    assert_eq!(attrs["feed"], env.feed);
    assert_eq!(attrs["change"], env.change.as_str());
    assert_eq!(attrs["idempotency_key"], env.idempotency_key);
    assert_eq!(env.v, 2);
    assert!(env.version >= 1, "every message carries a version");
    assert_eq!(env.idempotency_key.len(), 32);
    Msg { env, attrs }
}

/// Messages by record key; each record at most once.
pub(super) fn by_key(msgs: &[Msg]) -> BTreeMap<String, Msg> {
    let mut m = BTreeMap::new();
    for x in msgs {
        assert!(
            m.insert(x.env.record_key.clone(), x.clone()).is_none(),
            "record {} sent twice in one run",
            x.env.record_key
        );
    }
    m
}

fn cfg() -> Arc<Config> {
    Arc::new(Config::from_toml(CONFIG).expect("test config"))
}

fn settings() -> SplitterSettings {
    SplitterSettings {
        sender: SenderSettings {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) struct Harness<S: ObjectStore = MemoryStore> {
    pub(super) mem: MemoryStore,
    pub(super) queue: RecordingQueue,
    pub(super) splitter: Splitter<S, RecordingQueue>,
}

impl Harness<MemoryStore> {
    pub(super) fn new() -> Self {
        let mem = MemoryStore::new();
        Harness::with_store(mem.clone(), mem)
    }
}

impl<S: ObjectStore> Harness<S> {
    pub(super) fn with_store(mem: MemoryStore, store: S) -> Self {
        let queue = RecordingQueue::default();
        Harness {
            mem,
            queue: queue.clone(),
            splitter: Splitter {
                store,
                queue,
                config: cfg(),
                settings: settings(),
            },
        }
    }

    /// The harness with feed `name`'s configuration changed by `f`.
    pub(super) fn configure(mut self, name: &str, f: impl FnOnce(&mut FeedConfig)) -> Self {
        let mut c = (*self.splitter.config).clone();
        if let Some(feed) = c.feeds.iter_mut().find(|x| x.name == name) {
            f(feed);
        }
        self.splitter.config = Arc::new(c);
        self
    }

    pub(super) fn feed(&self, name: &str) -> FeedConfig {
        self.splitter.config.feed(name).unwrap().clone()
    }

    pub(super) fn upload(&self, prefix: &str, name: &str, body: Vec<u8>) -> ObjectEvent {
        let key = format!("incoming/{prefix}/{name}");
        let size = body.len() as u64;
        let etag = self.mem.insert(BUCKET, &key, body);
        ObjectEvent {
            bucket: BUCKET.into(),
            key,
            etag: Some(etag),
            size: Some(size),
            event_name: Some("ObjectCreated:Put".into()),
            ..Default::default()
        }
    }

    /// Upload with S3 user metadata (`x-amz-meta-<name>`: names lowercase, without the prefix).
    pub(super) fn upload_with_metadata(
        &self,
        prefix: &str,
        name: &str,
        body: Vec<u8>,
        metadata: &[(&str, &str)],
    ) -> ObjectEvent {
        let key = format!("incoming/{prefix}/{name}");
        let size = body.len() as u64;
        let meta = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let etag = self.mem.insert_with_metadata(BUCKET, &key, body, meta);
        ObjectEvent {
            bucket: BUCKET.into(),
            key,
            etag: Some(etag),
            size: Some(size),
            event_name: Some("ObjectCreated:Put".into()),
            ..Default::default()
        }
    }

    pub(super) async fn process(&self, ev: &ObjectEvent) -> Result<Outcome, SplitError> {
        tokio::time::timeout(Duration::from_secs(60), self.splitter.process(ev))
            .await
            .expect("process hung")
    }

    /// Process; expect a report, and check the stored copy is the same.
    pub(super) async fn run(&self, ev: &ObjectEvent) -> RunReport {
        match self.process(ev).await {
            Ok(Outcome::Report(r)) => {
                assert_eq!(
                    self.stored_report(&r.feed, &r.run),
                    *r,
                    "stored report differs"
                );
                assert_eq!(
                    r.feed,
                    self.splitter.config.feed_for_key(&ev.key).unwrap().name
                );
                assert_eq!(r.source.key, ev.key);
                assert_eq!(r.source.bucket, BUCKET);
                *r
            }
            other => panic!("expected a report for {}, got {other:?}", ev.key),
        }
    }

    pub(super) async fn run_table(
        &self,
        prefix: &str,
        name: &str,
        t: &Table,
    ) -> (ObjectEvent, RunReport, Vec<Msg>) {
        let ev = self.upload(prefix, name, t.csv());
        let r = self.run(&ev).await;
        let msgs = self.take_sent();
        for m in &msgs {
            assert_eq!(m.env.run, r.run);
            assert_eq!(m.env.feed, r.feed);
            assert_eq!(m.env.source.bucket, BUCKET);
            assert_eq!(m.env.source.key, ev.key);
            assert_eq!(
                m.env.source.etag,
                ev.etag.as_deref().unwrap().trim_matches('"')
            );
        }
        assert_eq!(r.counts.sent, msgs.len() as u64);
        (ev, r, msgs)
    }

    pub(super) fn stored_report(&self, feed: &str, run: &str) -> RunReport {
        let bytes = self
            .mem
            .get(BUCKET, &run_report_key(feed, run))
            .unwrap_or_else(|| panic!("no run report for {run}"));
        serde_json::from_slice(&bytes).expect("run report parses as RunReport")
    }

    pub(super) fn reports(&self, feed: &str) -> Vec<RunReport> {
        self.mem
            .keys(&format!("runs/{feed}/"))
            .iter()
            .map(|k| serde_json::from_slice(&self.mem.get(BUCKET, k).unwrap()).unwrap())
            .collect()
    }

    pub(super) fn take_sent(&self) -> Vec<Msg> {
        let sent = std::mem::take(&mut *self.queue.sent.lock().unwrap());
        sent.iter().map(decode).collect()
    }

    pub(super) fn snapshot_bytes(&self, feed: &str) -> Option<Vec<u8>> {
        self.mem.get(BUCKET, &snapshot_key(feed))
    }

    pub(super) fn snapshot(&self, feed: &str) -> Snapshot {
        let b = self.snapshot_bytes(feed).expect("snapshot exists");
        Snapshot::decode(&b, Some(feed)).expect("snapshot decodes")
    }

    pub(super) fn restore_snapshot(&self, feed: &str, bytes: Vec<u8>) {
        self.mem.insert(BUCKET, &snapshot_key(feed), bytes);
    }

    /// A JSON-lines object of the run (rejects, sent list), parsed.
    pub(super) fn rejects(&self, key: &str) -> Vec<serde_json::Value> {
        let b = self.mem.get(BUCKET, key).expect("rejects object");
        std::str::from_utf8(&b)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("rejects line is JSON"))
            .collect()
    }
}

pub(super) fn assert_counts(
    r: &RunReport,
    read: u64,
    new: u64,
    changed: u64,
    removed: u64,
    unchanged: u64,
    sent: u64,
) {
    let c = &r.counts;
    assert_eq!(
        (c.read, c.new, c.changed, c.removed, c.unchanged, c.sent),
        (read, new, changed, removed, unchanged, sent),
        "counts (read, new, changed, removed, unchanged, sent) of {:?}",
        r.counts
    );
}

// ---------------------------------------------------------------------------------------
// scenarios several files use
// ---------------------------------------------------------------------------------------

pub(super) const LAB_HEADER: &str = "record_id,patient_name,result,collected,export_timestamp";

pub(super) fn cases(ids: impl IntoIterator<Item = u32>) -> Table {
    let mut t = Table::new(&["case_id", "status", "name"], "case_id");
    for i in ids {
        t.push(vec![
            format!("C{i:03}"),
            "open".into(),
            format!("Person {i}, Jr."),
        ]);
    }
    t
}

/// Baseline of ids 1..=30; the next file removes 25..=30, changes 3, 7 and 11, adds 31..=35
/// and moves every row's export timestamp.
pub(super) fn diff_scenario() -> (Table, Table) {
    let t1 = Table::labs(1..=30, TS1);
    let mut t2 = t1.clone();
    for id in 25..=30 {
        t2.remove(&id.to_string());
    }
    t2.set("3", "result", "positive");
    t2.set("7", "patient_name", "Patient 7, renamed");
    t2.set("11", "collected", "2026-02-11");
    for id in 31..=35 {
        t2.push(lab_row(id, TS1));
    }
    t2.set_all("export_timestamp", TS2);
    (t1, t2)
}
