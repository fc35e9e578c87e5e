//! The consumer's idempotency ledger on S3 conditional writes, one small object per
//! idempotency key under `ledger/<feed>/<key>`.
//!
//! * take: create an `in_progress` record with `If-None-Match: *` (it carries an expiry, so
//!   a crashed attempt can be taken over with `If-Match` on its ETag);
//! * a `done` record means the effect was applied: the message is a duplicate, skip it;
//! * an unexpired `in_progress` record of another attempt: retry later;
//! * after the call: `done` (applied / already applied), or `released` (retry later) /
//!   `rejected` (dead-lettered), both of which the next attempt may take over.

use crate::contract::layout::ledger_key;
use crate::ports::store::{ObjectStore, PutCondition, StoreError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where an idempotency key's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// An attempt holds the key's lease (until `expires_at_ms`).
    InProgress,
    /// The effect was applied: a later delivery is a duplicate.
    Done,
    /// The attempt ended without effect and will be retried; the next attempt may take the key.
    Released,
    /// The API refused the record for good (dead-lettered); a later attempt may take the key.
    Rejected,
}

/// The ledger's record of one idempotency key: `ledger/<feed>/<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRecord {
    /// Where the key's delivery stands.
    pub state: LedgerState,
    /// Who holds it: `<message id>:<receive count>`.
    pub owner: String,
    /// Epoch milliseconds after which an `in_progress` record may be taken over.
    pub expires_at_ms: i64,
    /// When the record was last written (RFC 3339, ms).
    pub updated_at: String,
    /// The API's HTTP status at the end of the attempt; `None` while in progress or when
    /// there was no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Attempts at the key so far (at least the message's receive count).
    pub attempts: u32,
}

/// The outcome of [`Ledger::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Ours: call the API, then finish.
    Owned(Lease),
    /// Already applied: a duplicate delivery.
    Done,
    /// Another attempt holds it; it expires in this long.
    Busy(Duration),
}

/// The lease we took on a key: our record, with the ETag of our write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The record's key in the bucket (`ledger/<feed>/<key>`).
    pub key: String,
    /// The ETag of our write: the next write is conditioned on it.
    pub etag: String,
    /// The record as we wrote it.
    pub record: LedgerRecord,
}

/// Why a ledger read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store failed.
    #[error("ledger storage: {0}")]
    Store(#[from] StoreError),
    /// A record is not valid JSON of the ledger's shape (its key).
    #[error("ledger record {0} is unreadable")]
    Corrupt(String),
    /// The store gave no ETag (of a write, or of a record to take over): no write can be
    /// conditioned on it.
    #[error("ledger write returned no ETag")]
    NoEtag,
    /// A record could not be encoded as JSON.
    #[error("ledger record could not be encoded: {0}")]
    Encode(String),
}

/// The consumer's idempotency ledger: one record per idempotency key, written by
/// conditional puts.
#[derive(Clone)]
pub struct Ledger<S: ObjectStore> {
    /// The store holding the records.
    pub store: S,
    /// The bucket of `ledger/`.
    pub bucket: String,
    /// How long a lease lasts before another attempt may take it over.
    pub lease: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<S: ObjectStore> Ledger<S> {
    fn record(
        &self,
        state: LedgerState,
        owner: &str,
        attempts: u32,
        status: Option<u16>,
    ) -> LedgerRecord {
        LedgerRecord {
            state,
            owner: owner.to_string(),
            expires_at_ms: now_ms() + self.lease.as_millis() as i64,
            updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            http_status: status,
            attempts,
        }
    }

    async fn write(
        &self,
        key: &str,
        rec: &LedgerRecord,
        cond: PutCondition,
    ) -> Result<String, LedgerError> {
        let body = serde_json::to_vec(rec).map_err(|e| LedgerError::Encode(e.to_string()))?;
        self.store
            .put(&self.bucket, key, body, "application/json", cond)
            .await?
            .ok_or(LedgerError::NoEtag)
    }

    /// Try to take the key for one attempt.
    pub async fn take(
        &self,
        feed: &str,
        ikey: &str,
        owner: &str,
        attempt: u32,
    ) -> Result<Take, LedgerError> {
        let key = ledger_key(feed, ikey);
        let mine = self.record(LedgerState::InProgress, owner, attempt, None);
        for _ in 0..3 {
            match self.write(&key, &mine, PutCondition::IfAbsent).await {
                Ok(etag) => {
                    return Ok(Take::Owned(Lease {
                        key,
                        etag,
                        record: mine,
                    }))
                }
                Err(LedgerError::Store(StoreError::PreconditionFailed)) => {}
                Err(e) => return Err(e),
            }
            let Some(found) = self.store.get_bytes(&self.bucket, &key).await? else {
                continue; // removed in between: try to create it again
            };
            let rec: LedgerRecord = serde_json::from_slice(&found.bytes)
                .map_err(|_| LedgerError::Corrupt(key.clone()))?;
            let remaining = rec.expires_at_ms - now_ms();
            match rec.state {
                LedgerState::Done => return Ok(Take::Done),
                LedgerState::InProgress if remaining > 0 => {
                    return Ok(Take::Busy(Duration::from_millis(remaining as u64)))
                }
                _ => {}
            }
            // released, rejected, or an expired attempt: take it over
            let etag = found.etag.ok_or(LedgerError::NoEtag)?;
            let mut over = mine.clone();
            over.attempts = over.attempts.max(rec.attempts + 1);
            match self.write(&key, &over, PutCondition::IfMatch(etag)).await {
                Ok(etag) => {
                    return Ok(Take::Owned(Lease {
                        key,
                        etag,
                        record: over,
                    }))
                }
                Err(LedgerError::Store(StoreError::PreconditionFailed)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Take::Busy(Duration::from_secs(1)))
    }

    /// Record the end of our attempt. Losing the condition means our lease expired and
    /// another attempt took over: that attempt's outcome wins (the API dedupes by key).
    pub async fn finish(
        &self,
        lease: &Lease,
        state: LedgerState,
        status: Option<u16>,
    ) -> Result<bool, LedgerError> {
        let mut rec = lease.record.clone();
        rec.state = state;
        rec.http_status = status;
        rec.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match self
            .write(&lease.key, &rec, PutCondition::IfMatch(lease.etag.clone()))
            .await
        {
            Ok(_) => Ok(true),
            Err(LedgerError::Store(StoreError::PreconditionFailed)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The record of a key, `None` if there is none.
    pub async fn read(&self, feed: &str, ikey: &str) -> Result<Option<LedgerRecord>, LedgerError> {
        let key = ledger_key(feed, ikey);
        match self.store.get_bytes(&self.bucket, &key).await? {
            None => Ok(None),
            Some(f) => serde_json::from_slice(&f.bytes)
                .map(Some)
                .map_err(|_| LedgerError::Corrupt(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::store::MemoryStore;

    fn ledger(lease_ms: u64) -> Ledger<MemoryStore> {
        Ledger {
            store: MemoryStore::new(),
            bucket: "b".into(),
            lease: Duration::from_millis(lease_ms),
        }
    }

    #[tokio::test]
    async fn take_finish_and_duplicates() {
        let l = ledger(60_000);
        let Take::Owned(h) = l.take("f", "k1", "m1:1", 1).await.unwrap() else {
            panic!("first take must own")
        };
        assert!(
            matches!(l.take("f", "k1", "m2:1", 1).await.unwrap(), Take::Busy(d) if d > Duration::from_secs(50))
        );
        assert!(l.finish(&h, LedgerState::Done, Some(201)).await.unwrap());
        assert_eq!(l.take("f", "k1", "m3:1", 1).await.unwrap(), Take::Done);
        assert_eq!(
            l.read("f", "k1").await.unwrap().unwrap().http_status,
            Some(201)
        );
    }

    #[tokio::test]
    async fn released_and_expired_records_are_taken_over() {
        let l = ledger(60_000);
        let Take::Owned(h) = l.take("f", "k", "m:1", 1).await.unwrap() else {
            panic!()
        };
        l.finish(&h, LedgerState::Released, Some(503))
            .await
            .unwrap();
        let Take::Owned(h2) = l.take("f", "k", "m:2", 2).await.unwrap() else {
            panic!("released is free")
        };
        assert_eq!(h2.record.attempts, 2);

        let short = ledger(1);
        let Take::Owned(old) = short.take("f", "x", "a:1", 1).await.unwrap() else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Take::Owned(_new) = short.take("f", "x", "b:1", 1).await.unwrap() else {
            panic!("an expired attempt is taken over")
        };
        // the crashed attempt coming back cannot overwrite the new owner's record
        assert!(!short
            .finish(&old, LedgerState::Done, Some(201))
            .await
            .unwrap());
        assert_eq!(short.read("f", "x").await.unwrap().unwrap().owner, "b:1");
    }

    #[tokio::test]
    async fn concurrent_takes_have_one_owner() {
        let l = ledger(60_000);
        let mut handles = Vec::new();
        for i in 0..16 {
            let l = l.clone();
            handles.push(tokio::spawn(async move {
                l.take("f", "k", &format!("m{i}:1"), 1).await.unwrap()
            }));
        }
        let mut owned = 0;
        for h in handles {
            if matches!(h.await.unwrap(), Take::Owned(_)) {
                owned += 1;
            }
        }
        assert_eq!(owned, 1);
    }
}
