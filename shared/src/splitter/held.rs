//! Held files: what a tripped guard leaves under `held/<feed>/`, and the operator's
//! answers to it (approve, discard, list).
//!
//! * `held/<feed>/<id>.source` — a server-side copy of the exact object version that was
//!   held (so approving does not depend on the upload still being there);
//! * `held/<feed>/<id>.json` — the manifest ([`HeldManifest`]): why it was held, the counts,
//!   and the state (snapshot ETag) the diff was made against.
//!
//! Approving re-diffs the copy against the *same* state (refused if the state has moved
//! since), sends exactly those rows and commits; the idempotency keys are those of the
//! transitions, so a crashed approval re-run sends nothing twice in effect. Discarding
//! deletes both objects and leaves a `discarded` run report.

use super::error::HeldError;
use super::run::{new_report, now_rfc3339, Job};
use super::{Outcome, SplitError, Splitter};
use crate::config::FeedConfig;
use crate::contract::held::{held_id, valid_held_id, HeldManifest, MANIFEST_VERSION};
use crate::contract::layout::{held_copy_key, held_manifest_key, held_prefix};
use crate::contract::report::{HeldRef, RunReport, RunStatus};
use crate::contract::source::SourceObject;
use crate::ports::queue::MessageQueue;
use crate::ports::store::{ObjectStore, OpenSpec, PutCondition, StoreError};
use std::time::Instant;

impl<S: ObjectStore, Q: MessageQueue> Splitter<S, Q> {
    /// Approve a held file: send exactly its new/changed rows (once in effect) and commit the
    /// state, provided the state is still the one the file was diffed against.
    pub async fn approve(
        &self,
        bucket: &str,
        feed_name: &str,
        id: &str,
    ) -> Result<Outcome, SplitError> {
        let (feed, manifest) = self.held_manifest(bucket, feed_name, id).await?;
        let job = Job {
            bucket: bucket.to_string(),
            read_key: manifest.copy_key.clone(),
            spec: OpenSpec {
                version_id: None,
                if_match: manifest.copy_etag.clone(),
                size_hint: manifest.source.size,
            },
            approve: Some(&manifest),
        };
        self.reported(
            &feed,
            operator_run("approve", id),
            manifest.source.clone(),
            job,
        )
        .await
    }

    /// Discard a held file: delete the held copy and manifest, leave a `discarded` report.
    pub async fn discard(
        &self,
        bucket: &str,
        feed_name: &str,
        id: &str,
    ) -> Result<Outcome, SplitError> {
        let started = Instant::now();
        let (feed, m) = self.held_manifest(bucket, feed_name, id).await?;
        let mut report = new_report(&feed, operator_run("discard", id), m.source.clone());
        report.previous = m.previous.clone();
        report.counts = m.counts.clone();
        report.counts.sent = 0;
        report.schema = m.schema.clone();
        report.guards = m.guards.clone();
        report.reason = Some(format!(
            "held file {id} (run {}) discarded by an operator; it had been held because: {}",
            m.run, m.reason
        ));
        self.remove_held(bucket, &feed.name, &m).await?;
        self.finish(&mut report, started, RunStatus::Discarded)
            .await
    }

    /// The held files of one feed (or all feeds), oldest first.
    pub async fn list_held(
        &self,
        bucket: &str,
        feed_name: Option<&str>,
    ) -> Result<Vec<HeldManifest>, SplitError> {
        let prefix = held_prefix(feed_name);
        let mut out = Vec::new();
        for key in self.store.list(bucket, &prefix).await? {
            if !key.ends_with(".json") {
                continue;
            }
            if let Some(m) = self.read_manifest(bucket, &key).await? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.held_at.cmp(&b.held_at));
        Ok(out)
    }

    /// A manifest, `None` if it does not exist.
    async fn read_manifest(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<HeldManifest>, SplitError> {
        let Some(f) = self.store.get_bytes(bucket, key).await? else {
            return Ok(None);
        };
        let m =
            serde_json::from_slice(&f.bytes).map_err(|e| HeldError::unreadable(bucket, key, &e))?;
        Ok(Some(m))
    }

    /// The feed and manifest of a held file an operator named.
    async fn held_manifest(
        &self,
        bucket: &str,
        feed_name: &str,
        id: &str,
    ) -> Result<(FeedConfig, HeldManifest), SplitError> {
        let feed = self
            .config
            .feed(feed_name)
            .ok_or_else(|| HeldError::UnknownFeed {
                feed: feed_name.to_string(),
            })?
            .clone();
        if !valid_held_id(id) {
            return Err(HeldError::BadId { id: id.to_string() }.into());
        }
        let key = held_manifest_key(&feed.name, id);
        let Some(m) = self.read_manifest(bucket, &key).await? else {
            return Err(HeldError::NotHeld {
                bucket: bucket.to_string(),
                key,
            }
            .into());
        };
        if m.feed != feed.name || m.id != id {
            return Err(HeldError::Foreign {
                bucket: bucket.to_string(),
                key,
            }
            .into());
        }
        Ok((feed, m))
    }

    /// Stop the file: copy the exact object version aside, write the manifest, report.
    pub(super) async fn hold(
        &self,
        feed: &FeedConfig,
        source: &SourceObject,
        state_etag: Option<String>,
        reason: String,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Outcome, SplitError> {
        let bucket = source.bucket.as_str();
        let id = held_id(source, state_etag.as_deref());
        let copy_key = held_copy_key(&feed.name, &id);
        let manifest_key = held_manifest_key(&feed.name, &id);
        let spec = OpenSpec::pinned(source.version_id.clone(), source.etag.clone(), None);
        let copy_etag = match self.store.copy(bucket, &source.key, &spec, &copy_key).await {
            Ok(e) => e,
            Err(StoreError::NotFound { .. }) | Err(StoreError::PreconditionFailed) => {
                return Ok(Outcome::Skipped {
                    key: source.key.clone(),
                    reason: "the object was deleted or replaced while it was diffed; a later event covers the replacement".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let manifest = HeldManifest {
            v: MANIFEST_VERSION,
            feed: feed.name.clone(),
            id: id.clone(),
            run: report.run.clone(),
            held_at: now_rfc3339(),
            reason: reason.clone(),
            guards: report.guards.clone(),
            source: source.clone(),
            copy_key: copy_key.clone(),
            copy_etag,
            state_etag,
            previous: report.previous.clone(),
            counts: report.counts.clone(),
            schema: report.schema.clone(),
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            SplitError::Internal(format!(
                "held manifest: {}",
                crate::contract::envelope::serde_category(&e)
            ))
        })?;
        self.store
            .put(
                bucket,
                &manifest_key,
                body,
                "application/json",
                PutCondition::None,
            )
            .await?;
        report.reason = Some(format!(
            "held: {reason}. Nothing was sent and the state did not move; approve with `casefeed approve --feed {} {id}` or discard with `casefeed discard --feed {} {id}`",
            feed.name, feed.name
        ));
        report.held = Some(HeldRef {
            id,
            manifest_key,
            copy_key,
        });
        self.finish(report, started, RunStatus::Held).await
    }

    /// Delete a held file's copy and manifest.
    pub(super) async fn remove_held(
        &self,
        bucket: &str,
        feed: &str,
        m: &HeldManifest,
    ) -> Result<(), SplitError> {
        self.store.delete(bucket, &m.copy_key).await?;
        self.store
            .delete(bucket, &held_manifest_key(feed, &m.id))
            .await?;
        Ok(())
    }
}

/// The run id of an operator's action on a held file: `<time>-<action>-<held id>`.
fn operator_run(action: &str, id: &str) -> String {
    format!(
        "{}-{action}-{id}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")
    )
}
