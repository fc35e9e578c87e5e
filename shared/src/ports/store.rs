//! Object storage behind a small trait: S3 in production, an in-memory store for unit tests
//! and local tools.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncRead;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object (or the version asked for) does not exist.
    #[error("object s3://{bucket}/{key} does not exist")]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
    /// A condition did not hold: the object is not the version named (`If-Match`), or it
    /// exists where only a create was allowed.
    #[error("conditional write/read lost: the object changed (precondition failed)")]
    PreconditionFailed,
    /// The function may not touch the object (403).
    #[error("access denied to s3://{bucket}/{key}: check the function's IAM policy")]
    Denied {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
    /// Any other failure of an S3 call.
    #[error("S3 {op} failed: {message}")]
    Service {
        /// The S3 operation (`GetObject`, `PutObject`, …).
        op: &'static str,
        /// What went wrong: the service's code and message, or the transport failure.
        message: String,
    },
    /// Reading a whole object's body failed part way.
    #[error("reading the object body failed: {0}")]
    Body(String),
}

impl StoreError {
    /// Worth retrying (by Lambda or a retry loop). Precondition failures are handled by
    /// the caller's own logic; NotFound is an answer, not a failure.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Service { .. } | StoreError::Body(_) | StoreError::Denied { .. }
        )
    }
}

/// Metadata of an object being read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's ETag; `None` when the store gave none.
    pub etag: Option<String>,
    /// The object's version id; `None` when the bucket is not versioned.
    pub version_id: Option<String>,
    /// RFC 3339
    pub last_modified: Option<String>,
    /// The object's size in bytes; `None` when the store did not say.
    pub size: Option<u64>,
    /// The object's user metadata (S3's `x-amz-meta-<name>` headers) by name: lowercase,
    /// without the `x-amz-meta-` prefix.
    pub metadata: BTreeMap<String, String>,
}

/// An object's body, read as it streams.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;

/// An object opened for streaming.
pub struct OpenObject {
    /// What the store said of the object.
    pub meta: ObjectMeta,
    /// Its body.
    pub body: BoxRead,
}

/// A whole (small) object.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The object's bytes.
    pub bytes: Vec<u8>,
    /// Its ETag; `None` when the store gave none.
    pub etag: Option<String>,
}

/// How a put is conditioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Write whatever is there.
    None,
    /// Create only: `If-None-Match: *`.
    IfAbsent,
    /// Replace only this version: `If-Match: <etag>`.
    IfMatch(String),
}

/// Which version of an object to open.
#[derive(Debug, Clone, Default)]
pub struct OpenSpec {
    /// The version id to read; `None` for the current version.
    pub version_id: Option<String>,
    /// Read only if the object's ETag is this (else [`StoreError::PreconditionFailed`]).
    pub if_match: Option<String>,
    /// The object's size as the caller knows it (the S3 event's): large objects may be read
    /// by parallel ranged requests. Only a hint; the store reads what is there.
    pub size_hint: Option<u64>,
}

impl OpenSpec {
    /// The version an event or a manifest names: its version id when the bucket is
    /// versioned, else `If-Match` its ETag (a replaced object then fails the read).
    pub fn pinned(
        version_id: Option<String>,
        etag: Option<String>,
        size_hint: Option<u64>,
    ) -> Self {
        let if_match = if version_id.is_none() { etag } else { None };
        OpenSpec {
            version_id,
            if_match,
            size_hint,
        }
    }
}

/// The data bucket, as the core uses it.
pub trait ObjectStore: Send + Sync + Clone + 'static {
    /// A whole small object, `None` if it does not exist.
    fn get_bytes(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Fetched>, StoreError>> + Send;

    /// Open an object for streaming.
    fn open(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> impl Future<Output = Result<OpenObject, StoreError>> + Send;

    /// Write an object; returns its new ETag.
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        cond: PutCondition,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Server-side copy of one version of an object (`spec` as for `open`) to `to_key` in the
    /// same bucket; returns the copy's ETag.
    fn copy(
        &self,
        bucket: &str,
        from_key: &str,
        spec: &OpenSpec,
        to_key: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Delete an object (no error if it does not exist).
    fn delete(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keys under a prefix, in key order.
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// One stored object: its bytes, ETag and user metadata.
#[derive(Clone)]
struct Stored {
    body: Vec<u8>,
    etag: String,
    metadata: BTreeMap<String, String>,
}

type Objects = HashMap<(String, String), Stored>;

/// In-memory store with S3's conditional-write semantics.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Objects>>,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    /// Put an object unconditionally; returns its new ETag.
    pub fn insert(&self, bucket: &str, key: &str, body: Vec<u8>) -> String {
        self.insert_with_metadata(bucket, key, body, BTreeMap::new())
    }
    /// Put an object with user metadata (names as S3 gives them back: lowercase, without
    /// `x-amz-meta-`) unconditionally; returns its new ETag.
    pub fn insert_with_metadata(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        metadata: BTreeMap<String, String>,
    ) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let etag = format!("\"etag-{n}\"");
        let stored = Stored {
            body,
            etag: etag.clone(),
            metadata,
        };
        self.lock().insert((bucket.into(), key.into()), stored);
        etag
    }
    /// An object's bytes, `None` if it does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.lock()
            .get(&(bucket.to_string(), key.to_string()))
            .map(|v| v.body.clone())
    }
    /// The keys under `prefix` in any bucket, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> = self
            .lock()
            .keys()
            .filter(|(_, k)| k.starts_with(prefix))
            .map(|(_, k)| k.clone())
            .collect();
        k.sort();
        k
    }
}

impl ObjectStore for MemoryStore {
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Option<Fetched>, StoreError> {
        Ok(self
            .lock()
            .get(&(bucket.to_string(), key.to_string()))
            .map(|o| Fetched {
                bytes: o.body.clone(),
                etag: Some(o.etag.clone()),
            }))
    }

    async fn open(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> Result<OpenObject, StoreError> {
        let g = self.lock();
        let o = g
            .get(&(bucket.to_string(), key.to_string()))
            .ok_or_else(|| StoreError::NotFound {
                bucket: bucket.into(),
                key: key.into(),
            })?;
        if let Some(m) = &spec.if_match {
            if m.trim_matches('"') != o.etag.trim_matches('"') {
                return Err(StoreError::PreconditionFailed);
            }
        }
        Ok(OpenObject {
            meta: ObjectMeta {
                etag: Some(o.etag.clone()),
                version_id: None,
                last_modified: None,
                size: Some(o.body.len() as u64),
                metadata: o.metadata.clone(),
            },
            body: Box::pin(std::io::Cursor::new(o.body.clone())),
        })
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        _content_type: &str,
        cond: PutCondition,
    ) -> Result<Option<String>, StoreError> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut g = self.lock();
        let k = (bucket.to_string(), key.to_string());
        match (&cond, g.get(&k)) {
            (PutCondition::IfAbsent, Some(_)) => return Err(StoreError::PreconditionFailed),
            (PutCondition::IfMatch(_), None) => return Err(StoreError::PreconditionFailed),
            (PutCondition::IfMatch(want), Some(have))
                if want.trim_matches('"') != have.etag.trim_matches('"') =>
            {
                return Err(StoreError::PreconditionFailed)
            }
            _ => {}
        }
        let etag = format!("\"etag-{n}\"");
        let stored = Stored {
            body,
            etag: etag.clone(),
            metadata: BTreeMap::new(),
        };
        g.insert(k, stored);
        Ok(Some(etag))
    }

    async fn copy(
        &self,
        bucket: &str,
        from_key: &str,
        spec: &OpenSpec,
        to_key: &str,
    ) -> Result<Option<String>, StoreError> {
        // like S3's CopyObject by default, the copy keeps the user metadata
        let from = {
            let g = self.lock();
            let o = g
                .get(&(bucket.to_string(), from_key.to_string()))
                .ok_or_else(|| StoreError::NotFound {
                    bucket: bucket.into(),
                    key: from_key.into(),
                })?;
            if let Some(m) = &spec.if_match {
                if m.trim_matches('"') != o.etag.trim_matches('"') {
                    return Err(StoreError::PreconditionFailed);
                }
            }
            o.clone()
        };
        Ok(Some(self.insert_with_metadata(
            bucket,
            to_key,
            from.body,
            from.metadata,
        )))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.lock().remove(&(bucket.to_string(), key.to_string()));
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut k: Vec<String> = self
            .lock()
            .keys()
            .filter(|(b, k)| b == bucket && k.starts_with(prefix))
            .map(|(_, k)| k.clone())
            .collect();
        k.sort();
        Ok(k)
    }
}
