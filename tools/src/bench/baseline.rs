//! The untimed baseline runs, in a child: the snapshot every timed run starts from (files, moto).

use std::path::{Path, PathBuf};
use std::time::Instant;

use casefeed::adapters::s3::S3Store;
use casefeed::contract::layout::snapshot_key;
use casefeed::contract::report::RunStatus;
use casefeed::ports::store::{ObjectStore, OpenSpec};

use crate::local;

use super::child::{vm_hwm_kb, ChildResult};
use super::cli::{ChildArgs, Tool};
use super::errors::{failed, io_ctx, BenchError};
use super::splitter::{event, link_or_copy, report_of, splitter};
use super::store::{etag_of, FileStore, NullQueue};
use super::{BUCKET, FEED, NEXT_KEY, PREV_KEY, S3_BASE_SNAPSHOT};

/// The untimed baseline run on files: builds the snapshot every timed run starts from.
async fn file_baseline(prev: &Path, work: &Path) -> Result<PathBuf, BenchError> {
    let _ = std::fs::remove_dir_all(work);
    let store = FileStore::new(work);
    let prev_path = store
        .path(BUCKET, PREV_KEY)
        .map_err(|e| failed(e.to_string()))?;
    link_or_copy(prev, &prev_path)?;
    let meta = std::fs::metadata(&prev_path)
        .map_err(io_ctx(format!("reading {}", prev_path.display())))?;
    let sp = splitter(store.clone(), NullQueue::default(), Tool::Casefeed);
    let out = sp
        .process(&event(PREV_KEY, Some(etag_of(&meta)), Some(meta.len())))
        .await
        .map_err(|e| failed(format!("baseline run: {e}")))?;
    let r = report_of(out)?;
    if r.status != RunStatus::Baseline {
        return Err(failed(format!(
            "baseline run: status {:?}, expected baseline ({})",
            r.status,
            r.reason.unwrap_or_default()
        )));
    }
    store
        .path(BUCKET, &snapshot_key(FEED))
        .map_err(|e| failed(e.to_string()))
}

pub(super) async fn child_baseline(args: &ChildArgs) -> Result<ChildResult, BenchError> {
    let t = Instant::now();
    let made = if args.tool == Tool::CasefeedS3 {
        let endpoint = args
            .endpoint
            .as_deref()
            .ok_or_else(|| failed("casefeed-s3 needs --endpoint"))?;
        s3_setup(endpoint, &args.prev, &args.next).await?
    } else {
        file_baseline(&args.prev, &args.work)
            .await?
            .display()
            .to_string()
    };
    Ok(ChildResult {
        wall_s: t.elapsed().as_secs_f64(),
        hwm_kb: vm_hwm_kb()?,
        made: Some(made),
        phases: None,
    })
}

/// moto with both files uploaded and the baseline snapshot saved; returns the next
/// object's ETag.
async fn s3_setup(endpoint: &str, prev: &Path, next: &Path) -> Result<String, BenchError> {
    use aws_sdk_s3::primitives::ByteStream;
    let conf = local::sdk_config(endpoint).await;
    let store = S3Store::from_conf(&conf);
    let s3 = store.client();
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .map_err(|e| failed(format!("moto CreateBucket: {e:?}")))?;
    let mut etags = Vec::new();
    for (key, path) in [(PREV_KEY, prev), (NEXT_KEY, next)] {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
        let out = s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| failed(format!("moto PutObject {key}: {e:?}")))?;
        etags.push(out.e_tag().map(str::to_string));
    }
    let prev_etag = etags.first().cloned().flatten();
    let next_etag = etags
        .get(1)
        .cloned()
        .flatten()
        .ok_or_else(|| failed("moto returned no ETag for the next file"))?;
    let sp = splitter(store.clone(), NullQueue::default(), Tool::Casefeed);
    let out = sp
        .process(&event(
            PREV_KEY,
            prev_etag,
            std::fs::metadata(prev).map(|m| m.len()).ok(),
        ))
        .await
        .map_err(|e| failed(format!("baseline run on moto: {e}")))?;
    let r = report_of(out)?;
    if r.status != RunStatus::Baseline {
        return Err(failed(format!(
            "baseline run on moto: status {:?} ({})",
            r.status,
            r.reason.unwrap_or_default()
        )));
    }
    store
        .copy(
            BUCKET,
            &snapshot_key(FEED),
            &OpenSpec::default(),
            S3_BASE_SNAPSHOT,
        )
        .await
        .map_err(|e| failed(format!("saving the baseline snapshot in moto: {e}")))?;
    Ok(next_etag)
}
