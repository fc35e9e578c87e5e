//! The S3 adapter of [`ObjectStore`]: streaming and ranged reads pinned to one object
//! version, conditional writes, server-side copies.

use super::sdk::describe;
use crate::ports::store::{
    Fetched, ObjectMeta, ObjectStore, OpenObject, OpenSpec, PutCondition, StoreError,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

/// The data bucket's store over an S3 client.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    ranged: RangedReads,
}

/// How large objects are read: one GET stream tops out at a few tens of MB/s on a Lambda,
/// so an object of at least `min_size` bytes (by the caller's size hint) is read as ranged
/// GETs of `part_size` bytes, `concurrency` of them in flight, handed to the parser in
/// order. Memory: about `(concurrency + 2) × part_size`. Every part is pinned to the first
/// response's version (version id, else `If-Match` its ETag), so a replaced object fails
/// the read (retryable) instead of mixing two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangedReads {
    /// Objects of at least this many bytes are read in ranged parts.
    pub min_size: u64,
    /// Bytes per ranged GET.
    pub part_size: u64,
    /// Ranged GETs in flight (1 turns ranged reads off).
    pub concurrency: usize,
}

impl Default for RangedReads {
    fn default() -> Self {
        RangedReads {
            min_size: 16 << 20,
            part_size: 4 << 20,
            concurrency: 4,
        }
    }
}

/// `bytes a-b/total` → total.
fn content_range_total(v: &str) -> Option<u64> {
    v.rsplit('/').next()?.trim().parse().ok()
}

impl S3Store {
    /// A store over `client`, with the default ranged reads.
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Store {
            client,
            ranged: RangedReads::default(),
        }
    }

    /// Read large objects this way (`concurrency` 1 turns ranged reads off).
    pub fn with_ranged_reads(mut self, ranged: RangedReads) -> Self {
        self.ranged = ranged;
        self
    }

    /// A GetObject of the version `spec` names.
    fn get_request(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        let mut req = self.client.get_object().bucket(bucket).key(key);
        if let Some(v) = &spec.version_id {
            req = req.version_id(v);
        }
        if let Some(m) = &spec.if_match {
            req = req.if_match(m);
        }
        req
    }

    /// The first part of a ranged read, then the rest fetched in parallel, in order.
    async fn open_ranged(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> Result<OpenObject, StoreError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncReadExt;
        let part = self.ranged.part_size.max(1);
        let first = self
            .get_request(bucket, key, spec)
            .range(format!("bytes=0-{}", part - 1))
            .send()
            .await
            .map_err(|e| classify("GetObject", bucket, key, e))?;
        let total = first.content_range().and_then(content_range_total);
        let meta = ObjectMeta {
            etag: first.e_tag().map(str::to_string),
            version_id: first.version_id().map(str::to_string),
            last_modified: fmt_time(first.last_modified()),
            size: total.or_else(|| first.content_length().and_then(|n| u64::try_from(n).ok())),
            metadata: user_metadata(first.metadata()),
        };
        let head = first.body.into_async_read();
        let total = match total {
            Some(t) if t > part => t,
            // the whole object came in this answer
            _ => {
                return Ok(OpenObject {
                    meta,
                    body: Box::pin(head),
                })
            }
        };
        let ranges: Vec<(u64, u64)> = (1..total.div_ceil(part))
            .map(|i| (i * part, ((i + 1) * part).min(total) - 1))
            .collect();
        let version = meta.version_id.clone().or_else(|| spec.version_id.clone());
        let etag = meta.etag.clone();
        let (client, bucket_s, key_s) = (self.client.clone(), bucket.to_string(), key.to_string());
        let fetch = move |(a, b): (u64, u64)| {
            let (client, bucket, key) = (client.clone(), bucket_s.clone(), key_s.clone());
            let (version, etag) = (version.clone(), etag.clone());
            async move {
                let mut req = client
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .range(format!("bytes={a}-{b}"));
                req = match (version, etag) {
                    (Some(v), _) => req.version_id(v),
                    (None, Some(e)) => req.if_match(e),
                    (None, None) => req,
                };
                let out = req.send().await.map_err(|e| {
                    std::io::Error::other(classify("GetObject (range)", &bucket, &key, e))
                })?;
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| {
                        std::io::Error::other(format!("reading a part of s3://{bucket}/{key}: {e}"))
                    })?
                    .into_bytes();
                if bytes.len() as u64 != b - a + 1 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "a part of s3://{bucket}/{key} (bytes {a}-{b}) came back with {} bytes",
                            bytes.len()
                        ),
                    ));
                }
                Ok::<bytes::Bytes, std::io::Error>(bytes)
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(1);
        let concurrency = self.ranged.concurrency.max(1);
        tokio::spawn(async move {
            let mut parts = futures_util::stream::iter(ranges)
                .map(fetch)
                .buffered(concurrency);
            while let Some(part) = parts.next().await {
                let failed = part.is_err();
                // the reader stopped (the file was rejected, say): stop fetching
                if tx.send(part).await.is_err() || failed {
                    return;
                }
            }
        });
        let rest = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = head.chain(tokio_util::io::StreamReader::new(rest));
        Ok(OpenObject {
            meta,
            body: Box::pin(body),
        })
    }

    /// Build the client once per container. `AWS_ENDPOINT_URL` (local stacks) is honoured by
    /// the SDK; path-style addressing is forced when an endpoint is set, as emulators need.
    pub fn from_conf(conf: &aws_config::SdkConfig) -> Self {
        let mut b = aws_sdk_s3::config::Builder::from(conf);
        if conf.endpoint_url().is_some() {
            b = b.force_path_style(true);
        }
        S3Store::new(aws_sdk_s3::Client::from_conf(b.build()))
    }

    /// The SDK client underneath.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

/// An S3 error as the store port knows it: the status decides (404 absent, 412/409 lost
/// condition, 403 denied); anything else is a service failure described by [`describe`].
fn classify<E>(
    op: &'static str,
    bucket: &str,
    key: &str,
    e: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = describe(&e);
    match failure.status {
        Some(404) => StoreError::NotFound {
            bucket: bucket.into(),
            key: key.into(),
        },
        Some(412) | Some(409) => StoreError::PreconditionFailed,
        Some(403) => StoreError::Denied {
            bucket: bucket.into(),
            key: key.into(),
        },
        _ => StoreError::Service {
            op,
            message: failure.message,
        },
    }
}

fn fmt_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<String> {
    t.and_then(|t| t.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime).ok())
}

/// The user metadata of a GetObject answer (the SDK gives the names without `x-amz-meta-`),
/// names lowercased: S3 treats them case-insensitively.
fn user_metadata(
    m: Option<&std::collections::HashMap<String, String>>,
) -> std::collections::BTreeMap<String, String> {
    m.into_iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

impl ObjectStore for S3Store {
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Option<Fetched>, StoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                return match classify("GetObject", bucket, key, e) {
                    StoreError::NotFound { .. } => Ok(None),
                    other => Err(other),
                }
            }
        };
        let etag = out.e_tag().map(str::to_string);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Body(e.to_string()))?
            .into_bytes()
            .to_vec();
        Ok(Some(Fetched { bytes, etag }))
    }

    async fn open(
        &self,
        bucket: &str,
        key: &str,
        spec: &OpenSpec,
    ) -> Result<OpenObject, StoreError> {
        if self.ranged.concurrency > 1 && spec.size_hint.is_some_and(|n| n >= self.ranged.min_size)
        {
            return self.open_ranged(bucket, key, spec).await;
        }
        let out = self
            .get_request(bucket, key, spec)
            .send()
            .await
            .map_err(|e| classify("GetObject", bucket, key, e))?;
        let meta = ObjectMeta {
            etag: out.e_tag().map(str::to_string),
            version_id: out.version_id().map(str::to_string),
            last_modified: fmt_time(out.last_modified()),
            size: out.content_length().and_then(|n| u64::try_from(n).ok()),
            metadata: user_metadata(out.metadata()),
        };
        Ok(OpenObject {
            meta,
            body: Box::pin(out.body.into_async_read()),
        })
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        cond: PutCondition,
    ) -> Result<Option<String>, StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        match cond {
            PutCondition::None => {}
            PutCondition::IfAbsent => req = req.if_none_match("*"),
            PutCondition::IfMatch(etag) => req = req.if_match(etag),
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify("PutObject", bucket, key, e))?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn copy(
        &self,
        bucket: &str,
        from_key: &str,
        spec: &OpenSpec,
        to_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut source = format!("{bucket}/{}", encode_copy_key(from_key));
        if let Some(v) = &spec.version_id {
            source.push_str("?versionId=");
            source.push_str(v);
        }
        let mut req = self
            .client
            .copy_object()
            .bucket(bucket)
            .key(to_key)
            .copy_source(source);
        if let Some(m) = &spec.if_match {
            req = req.copy_source_if_match(m);
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify("CopyObject", bucket, from_key, e))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(str::to_string))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("DeleteObject", bucket, key, e))?;
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListObjectsV2", bucket, prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    keys.push(k.to_string());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// `CopySource` is `bucket/key` with the key URL-encoded (slashes kept).
fn encode_copy_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
