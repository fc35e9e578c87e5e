//! A file-backed object store and a null queue.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use casefeed::ports::queue::{EntryFailure, MessageQueue, OutMessage, QueueError};
use casefeed::ports::store::{
    Fetched, ObjectMeta, ObjectStore, OpenObject, OpenSpec, PutCondition, StoreError,
};
use serde::Deserialize;

/// Objects are files under `root/<bucket>/<key>`; ETags come from inode, size and mtime;
/// writes go to a temporary file renamed into place (so a hard-linked original is never
/// modified).
#[derive(Clone)]
pub struct FileStore {
    root: Arc<PathBuf>,
}

fn store_io(op: &'static str, bucket: &str, key: &str, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::NotFound {
            bucket: bucket.into(),
            key: key.into(),
        }
    } else {
        StoreError::Service {
            op,
            message: format!("{bucket}/{key}: {e}"),
        }
    }
}

pub(super) fn etag_of(m: &std::fs::Metadata) -> String {
    format!(
        "\"{:x}-{:x}-{:x}.{:x}\"",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    )
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore {
            root: Arc::new(root.into()),
        }
    }

    pub fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        let ok =
            |s: &str| !s.is_empty() && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok(bucket) || bucket.contains('/') || !ok(key) {
            return Err(StoreError::Service {
                op: "path",
                message: format!("unsupported bucket/key `{bucket}/{key}`"),
            });
        }
        Ok(self.root.join(bucket).join(key))
    }

    async fn current_etag(&self, path: &Path) -> Option<String> {
        tokio::fs::metadata(path).await.ok().map(|m| etag_of(&m))
    }
}

impl ObjectStore for FileStore {
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Option<Fetched>, StoreError> {
        let path = self.path(bucket, key)?;
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_io("GetObject", bucket, key, e)),
        };
        let meta = f
            .metadata()
            .await
            .map_err(|e| store_io("GetObject", bucket, key, e))?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut f, &mut bytes)
            .await
            .map_err(|e| StoreError::Body(format!("{bucket}/{key}: {e}")))?;
        Ok(Some(Fetched {
            bytes,
            etag: Some(etag_of(&meta)),
        }))
    }

    async fn open(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> Result<OpenObject, StoreError> {
        let path = self.path(bucket, key)?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| store_io("GetObject", bucket, key, e))?;
        let meta = f
            .metadata()
            .await
            .map_err(|e| store_io("GetObject", bucket, key, e))?;
        let etag = etag_of(&meta);
        if let Some(m) = &spec.if_match {
            if !same_etag(m, &etag) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        Ok(OpenObject {
            meta: ObjectMeta {
                etag: Some(etag),
                version_id: None,
                last_modified: None,
                size: Some(meta.len()),
                // files carry no user metadata: the bench's feed is ordered by upload
                metadata: Default::default(),
            },
            body: Box::pin(f),
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
        let path = self.path(bucket, key)?;
        let current = self.current_etag(&path).await;
        match (&cond, &current) {
            (PutCondition::IfAbsent, Some(_)) | (PutCondition::IfMatch(_), None) => {
                return Err(StoreError::PreconditionFailed)
            }
            (PutCondition::IfMatch(want), Some(have)) if !same_etag(want, have) => {
                return Err(StoreError::PreconditionFailed)
            }
            _ => {}
        }
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| store_io("PutObject", bucket, key, e))?;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        tokio::fs::write(&tmp, body)
            .await
            .map_err(|e| store_io("PutObject", bucket, key, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| store_io("PutObject", bucket, key, e))?;
        Ok(self.current_etag(&path).await)
    }

    async fn copy(
        &self,
        bucket: &str,
        from_key: &str,
        spec: &OpenSpec,
        to_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let from = self.path(bucket, from_key)?;
        let to = self.path(bucket, to_key)?;
        if let Some(m) = &spec.if_match {
            match self.current_etag(&from).await {
                Some(have) if same_etag(m, &have) => {}
                Some(_) => return Err(StoreError::PreconditionFailed),
                None => {
                    return Err(StoreError::NotFound {
                        bucket: bucket.into(),
                        key: from_key.into(),
                    })
                }
            }
        }
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| store_io("CopyObject", bucket, to_key, e))?;
        }
        tokio::fs::copy(&from, &to)
            .await
            .map_err(|e| store_io("CopyObject", bucket, from_key, e))?;
        Ok(self.current_etag(&to).await)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let path = self.path(bucket, key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_io("DeleteObject", bucket, key, e)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let base = self.root.join(bucket);
        let mut keys = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(store_io("ListObjectsV2", bucket, prefix, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| store_io("ListObjectsV2", bucket, prefix, e))?;
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&base) {
                    let k = rel.to_string_lossy().replace('\\', "/");
                    if k.starts_with(prefix) && !k.contains(".tmp-") {
                        keys.push(k);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// Accepts every message; records the `record_key` of each envelope.
#[derive(Clone, Default)]
pub struct NullQueue {
    keys: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize)]
struct EnvelopeKey {
    record_key: String,
}

impl NullQueue {
    pub fn keys(&self) -> Vec<String> {
        match self.keys.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl MessageQueue for NullQueue {
    async fn send_batch(&self, messages: &[OutMessage]) -> Result<Vec<EntryFailure>, QueueError> {
        let mut got = Vec::with_capacity(messages.len());
        for m in messages {
            let e: EnvelopeKey =
                serde_json::from_str(&m.body).map_err(|e| QueueError::Service {
                    op: "SendMessageBatch",
                    message: format!("envelope without a record_key: {e}"),
                    retryable: false,
                })?;
            got.push(e.record_key);
        }
        let mut g = match self.keys.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.extend(got);
        Ok(Vec::new())
    }
}
