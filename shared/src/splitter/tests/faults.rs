//! `FaultyStore`: the in-memory store with faults a test arms per instance — failing
//! operations, a barrier the next N matching operations meet at, bodies that break after K
//! bytes, and the last-modified time S3 would report.
//!
//! Faults live behind an `Arc`, so a test arms them on its own clone of the store at any
//! point of a test (after a baseline run, say) and the splitter's clone sees them.

use crate::ports::store::{
    Fetched, MemoryStore, ObjectStore, OpenObject, OpenSpec, PutCondition, StoreError,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The store operation a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    GetBytes,
    Open,
    Put,
    Copy,
    Delete,
    /// The key a `List` is matched by is the listed prefix.
    List,
}

/// The keys a fault applies to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Keys {
    Prefix(&'static str),
    Containing(&'static str),
}

impl Keys {
    fn hit(self, key: &str) -> bool {
        match self {
            Keys::Prefix(p) => key.starts_with(p),
            Keys::Containing(p) => key.contains(p),
        }
    }
}

/// The transient error S3 answers a put with when throttled.
pub(super) fn slow_down() -> StoreError {
    StoreError::Service {
        op: "PutObject",
        message: "SlowDown".into(),
    }
}

struct Failure {
    op: Op,
    keys: Keys,
    left: usize,
    /// `StoreError` is not `Clone`: each failure makes its own.
    error: fn() -> StoreError,
}

struct Meeting {
    op: Op,
    keys: Keys,
    barrier: Arc<tokio::sync::Barrier>,
    /// Matching operations that still wait at the barrier.
    left: usize,
}

#[derive(Default)]
struct Faults {
    failures: Vec<Failure>,
    meeting: Option<Meeting>,
    /// Bodies of opened objects with a matching key end after this many bytes, then fail.
    break_after: Option<(Keys, usize)>,
    /// Last-modified times reported by `open`, by key.
    last_modified: HashMap<String, String>,
}

/// A `MemoryStore` (`inner`, shared with the test's harness) with armed faults.
#[derive(Clone, Default)]
pub(super) struct FaultyStore {
    pub(super) inner: MemoryStore,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyStore {
    pub(super) fn new() -> Self {
        Self::default()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    /// Fails the next `times` operations `op` on keys `keys` with `error` (`usize::MAX`:
    /// always), without performing them. Failures armed earlier fire first.
    pub(super) fn fail(
        &self,
        op: Op,
        keys: Keys,
        times: usize,
        error: fn() -> StoreError,
    ) -> &Self {
        self.faults().failures.push(Failure {
            op,
            keys,
            left: times,
            error,
        });
        self
    }

    /// Holds the next `parties` operations `op` on keys `keys` at a barrier until all of
    /// them have arrived. Each performs its operation first and returns its result after
    /// the meeting: runs that meet after reading a state are sure to have read the same one.
    pub(super) fn meet_at(&self, op: Op, keys: Keys, parties: usize) -> &Self {
        self.faults().meeting = Some(Meeting {
            op,
            keys,
            barrier: Arc::new(tokio::sync::Barrier::new(parties)),
            left: parties,
        });
        self
    }

    /// Opened objects with a key in `keys` stream their first `after` bytes (in reads of at
    /// most 4 KiB), then fail as a broken network stream does.
    pub(super) fn break_bodies(&self, keys: Keys, after: usize) -> &Self {
        self.faults().break_after = Some((keys, after));
        self
    }

    /// `open` reports `at` (RFC 3339) as the last-modified time of `key`, as S3 does.
    pub(super) fn set_last_modified(&self, key: &str, at: &str) -> &Self {
        self.faults().last_modified.insert(key.into(), at.into());
        self
    }

    /// Before an operation: the error of the first armed failure that fires for it.
    fn check(&self, op: Op, key: &str) -> Result<(), StoreError> {
        let mut f = self.faults();
        match f
            .failures
            .iter_mut()
            .find(|x| x.op == op && x.left > 0 && x.keys.hit(key))
        {
            Some(x) => {
                x.left -= 1;
                Err((x.error)())
            }
            None => Ok(()),
        }
    }

    /// After an operation: wait at the barrier if the operation is one it still holds.
    async fn meet(&self, op: Op, key: &str) {
        let barrier = {
            let mut f = self.faults();
            match f.meeting.as_mut() {
                Some(m) if m.op == op && m.left > 0 && m.keys.hit(key) => {
                    m.left -= 1;
                    Some(m.barrier.clone())
                }
                _ => None,
            }
        };
        if let Some(b) = barrier {
            b.wait().await;
        }
    }
}

impl ObjectStore for FaultyStore {
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Option<Fetched>, StoreError> {
        self.check(Op::GetBytes, key)?;
        let got = self.inner.get_bytes(bucket, key).await;
        self.meet(Op::GetBytes, key).await;
        got
    }

    async fn open(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> Result<OpenObject, StoreError> {
        self.check(Op::Open, key)?;
        let opened = self.inner.open(bucket, key, spec).await;
        self.meet(Op::Open, key).await;
        let mut o = opened?;
        let (cut, modified) = {
            let f = self.faults();
            let cut = f
                .break_after
                .as_ref()
                .filter(|(keys, _)| keys.hit(key))
                .map(|(_, after)| *after);
            (cut, f.last_modified.get(key).cloned())
        };
        if let Some(cut) = cut {
            let mut data = self.inner.get(bucket, key).unwrap();
            data.truncate(cut);
            o.body = Box::pin(BrokenBody { data, pos: 0 });
        }
        if modified.is_some() {
            o.meta.last_modified = modified;
        }
        Ok(o)
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        cond: PutCondition,
    ) -> Result<Option<String>, StoreError> {
        self.check(Op::Put, key)?;
        let put = self.inner.put(bucket, key, body, content_type, cond).await;
        self.meet(Op::Put, key).await;
        put
    }

    async fn copy(
        &self,
        bucket: &str,
        from_key: &str,
        spec: &OpenSpec,
        to_key: &str,
    ) -> Result<Option<String>, StoreError> {
        self.check(Op::Copy, from_key)?;
        let copied = self.inner.copy(bucket, from_key, spec, to_key).await;
        self.meet(Op::Copy, from_key).await;
        copied
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.check(Op::Delete, key)?;
        let deleted = self.inner.delete(bucket, key).await;
        self.meet(Op::Delete, key).await;
        deleted
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.check(Op::List, prefix)?;
        let listed = self.inner.list(bucket, prefix).await;
        self.meet(Op::List, prefix).await;
        listed
    }
}

/// A body that yields its `data`, then fails as a broken network stream does.
struct BrokenBody {
    data: Vec<u8>,
    pos: usize,
}

impl tokio::io::AsyncRead for BrokenBody {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos >= self.data.len() {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            )));
        }
        let n = buf.remaining().min(self.data.len() - self.pos).min(4096);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}
