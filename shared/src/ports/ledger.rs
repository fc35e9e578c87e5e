//! The consumer's ledger table behind a small trait: per record, the highest version the API
//! acknowledged and a lease (owner, version, expiry); per idempotency key, its fate. Every
//! write is conditional and atomic in the table (DynamoDB's conditional `UpdateItem` in
//! production, a mutex in [`MemoryLedger`]); what a record's item *means* for a message is
//! decided once, in [`admit`], by both implementations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// A record's lease: who may call the API for it, with which version, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseItem {
    /// The attempt holding it: `<message id>:<receive count>`.
    pub owner: String,
    /// The version that attempt delivers.
    pub version: u64,
    /// Epoch milliseconds after which another attempt may take the lease over.
    pub until_ms: i64,
}

/// A record's item in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordItem {
    /// The highest version the API acknowledged (`None`: none yet).
    pub acknowledged: Option<u64>,
    /// The idempotency key of that version's transition.
    pub acknowledged_key: Option<String>,
    /// The splitter run that sent it.
    pub acknowledged_run: Option<String>,
    /// The lease, while an attempt holds it (an expired one may still be there).
    pub lease: Option<LeaseItem>,
}

impl RecordItem {
    /// End `owner`'s lease; `false` when the lease is not (or no longer) `owner`'s.
    pub fn clear_lease_if(&mut self, owner: &str) -> bool {
        if self.lease.as_ref().is_some_and(|l| l.owner == owner) {
            self.lease = None;
            true
        } else {
            false
        }
    }
}

/// What became of one idempotency key's message, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FateItem {
    /// The feed.
    pub feed: String,
    /// The transition's key.
    pub idempotency_key: String,
    /// The record it belongs to.
    pub record_key: String,
    /// The transition's version.
    pub version: u64,
    /// The splitter run that sent it.
    pub run: String,
    /// `applied`, `duplicate`, `superseded` or `dead_lettered`.
    pub fate: &'static str,
    /// The dead letter's class, or the API's status, where there is one.
    pub detail: Option<String>,
    /// The message's receive count at the end.
    pub attempts: u32,
    /// When (epoch milliseconds).
    pub at_ms: i64,
    /// The message's lineage: the start of its retry clock, which every copy of it shares
    /// (its requeued copies, a duplicate delivery); a replay starts a new one. A dead letter
    /// is sent once per lineage.
    pub lineage_ms: Option<i64>,
}

/// A lease request: the attempt `owner` wants to deliver `version` of a record.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    /// The feed.
    pub feed: &'a str,
    /// The record.
    pub record_key: &'a str,
    /// The version the attempt delivers.
    pub version: u64,
    /// The attempt: `<message id>:<receive count>`.
    pub owner: &'a str,
    /// Now (epoch milliseconds), as the caller sees it.
    pub now_ms: i64,
    /// When the lease ends unless released first (epoch milliseconds).
    pub until_ms: i64,
}

/// What an acquire found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is ours: call the API.
    Owned,
    /// Not taken: the record's item says why ([`admit`]'s answer other than `Take`).
    Refused(Admit),
}

/// What a record's item means for a message of `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Take the lease and call the API.
    Take,
    /// The API acknowledged a newer version: this one must never be sent.
    Superseded {
        /// The acknowledged version.
        acknowledged: u64,
    },
    /// The API acknowledged this very version: applied before.
    Duplicate,
    /// Another attempt holds a live lease.
    Busy {
        /// The version it delivers.
        holder_version: u64,
        /// Milliseconds until its lease expires.
        remaining_ms: i64,
    },
}

/// The decision: what the record's `item` means for `owner`'s message of `version`, now.
pub fn admit(item: Option<&RecordItem>, version: u64, owner: &str, now_ms: i64) -> Admit {
    let Some(item) = item else {
        return Admit::Take;
    };
    match item.acknowledged {
        Some(a) if a > version => return Admit::Superseded { acknowledged: a },
        Some(a) if a == version => return Admit::Duplicate,
        _ => {}
    }
    match &item.lease {
        Some(l) if l.owner != owner && l.until_ms > now_ms => Admit::Busy {
            holder_version: l.version,
            remaining_ms: l.until_ms - now_ms,
        },
        _ => Admit::Take,
    }
}

/// Why the ledger table could not answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    /// The table (or the way to it) failed; `retryable` says whether a retry may help.
    #[error("ledger table: {message}")]
    Table {
        /// What failed (the operation and the service's code and message).
        message: String,
        /// Worth retrying (a throttle, a timeout, a service fault).
        retryable: bool,
    },
    /// An item is not of the ledger's shape (which attribute).
    #[error("ledger item is unreadable: {0}")]
    Corrupt(String),
}

impl LedgerError {
    /// Whether a retry may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::Table { retryable, .. } => *retryable,
            LedgerError::Corrupt(_) => false,
        }
    }
}

/// The ledger table. Every method is one atomic, conditional operation on one item.
pub trait LedgerTable: Send + Sync + 'static {
    /// Take the record's lease for `req.version` when [`admit`] says `Take`: nothing newer
    /// (or as new) acknowledged, and no live lease of another attempt.
    fn acquire(
        &self,
        req: &LeaseRequest<'_>,
    ) -> impl Future<Output = Result<Acquired, LedgerError>> + Send;

    /// The API acknowledged `version`: record it as the record's acknowledged version unless
    /// a higher one is recorded already, and end `owner`'s lease. Returns whether this
    /// version was recorded (`false`: a newer one was, in the meantime).
    fn acknowledge(
        &self,
        feed: &str,
        record_key: &str,
        version: u64,
        owner: &str,
        idempotency_key: &str,
        run: &str,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// End `owner`'s lease without an acknowledgement (a retry or a dead letter follows).
    /// Returns `false` when the lease was no longer ours (expired and taken over).
    fn release(
        &self,
        feed: &str,
        record_key: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Record a message's fate under its idempotency key.
    fn record_fate(&self, fate: &FateItem) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// A record's item (a strongly consistent read), `None` when there is none.
    fn record(
        &self,
        feed: &str,
        record_key: &str,
    ) -> impl Future<Output = Result<Option<RecordItem>, LedgerError>> + Send;

    /// An idempotency key's fate, `None` when none is recorded.
    fn fate(
        &self,
        feed: &str,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<Option<FateItem>, LedgerError>> + Send;
}

/// How many operations a ledger table served, by kind (for tests and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCalls {
    /// `acquire` calls.
    pub acquire: u64,
    /// `acknowledge` calls.
    pub acknowledge: u64,
    /// `release` calls.
    pub release: u64,
    /// `record_fate` calls.
    pub record_fate: u64,
    /// `record` and `fate` reads.
    pub reads: u64,
}

#[derive(Default)]
struct MemoryInner {
    records: HashMap<(String, String), RecordItem>,
    fates: HashMap<(String, String), FateItem>,
    calls: LedgerCalls,
    failing: bool,
}

/// An in-memory ledger table with the same conditional semantics as the DynamoDB one.
/// Clones share the table.
#[derive(Clone, Default)]
pub struct MemoryLedger {
    inner: Arc<Mutex<MemoryInner>>,
}

impl MemoryLedger {
    /// An empty table.
    pub fn new() -> MemoryLedger {
        MemoryLedger::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryInner) -> T) -> Result<T, LedgerError> {
        let mut g = self.inner.lock().map_err(|_| LedgerError::Table {
            message: "the in-memory ledger's lock is poisoned".into(),
            retryable: false,
        })?;
        if g.failing {
            return Err(LedgerError::Table {
                message: "ServiceUnavailable: injected failure".into(),
                retryable: true,
            });
        }
        Ok(f(&mut g))
    }

    /// Make every call fail (retryable) until set back.
    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut g) = self.inner.lock() {
            g.failing = failing;
        }
    }

    /// Put a record's item as it is (for tests: a lease left by a crashed attempt).
    pub fn put_record(&self, feed: &str, record_key: &str, item: RecordItem) {
        if let Ok(mut g) = self.inner.lock() {
            g.records
                .insert((feed.to_string(), record_key.to_string()), item);
        }
    }

    /// The calls served so far.
    pub fn calls(&self) -> LedgerCalls {
        self.inner.lock().map(|g| g.calls).unwrap_or_default()
    }
}

fn rk(feed: &str, key: &str) -> (String, String) {
    (feed.to_string(), key.to_string())
}

impl LedgerTable for MemoryLedger {
    async fn acquire(&self, req: &LeaseRequest<'_>) -> Result<Acquired, LedgerError> {
        self.with(|g| {
            g.calls.acquire += 1;
            let item = g.records.entry(rk(req.feed, req.record_key)).or_default();
            match admit(Some(item), req.version, req.owner, req.now_ms) {
                Admit::Take => {
                    item.lease = Some(LeaseItem {
                        owner: req.owner.to_string(),
                        version: req.version,
                        until_ms: req.until_ms,
                    });
                    Acquired::Owned
                }
                other => Acquired::Refused(other),
            }
        })
    }

    async fn acknowledge(
        &self,
        feed: &str,
        record_key: &str,
        version: u64,
        owner: &str,
        idempotency_key: &str,
        run: &str,
    ) -> Result<bool, LedgerError> {
        self.with(|g| {
            g.calls.acknowledge += 1;
            let item = g.records.entry(rk(feed, record_key)).or_default();
            item.clear_lease_if(owner);
            if item.acknowledged.is_some_and(|a| a >= version) {
                return false;
            }
            item.acknowledged = Some(version);
            item.acknowledged_key = Some(idempotency_key.to_string());
            item.acknowledged_run = Some(run.to_string());
            true
        })
    }

    async fn release(
        &self,
        feed: &str,
        record_key: &str,
        owner: &str,
    ) -> Result<bool, LedgerError> {
        self.with(|g| {
            g.calls.release += 1;
            g.records
                .get_mut(&rk(feed, record_key))
                .is_some_and(|item| item.clear_lease_if(owner))
        })
    }

    async fn record_fate(&self, fate: &FateItem) -> Result<(), LedgerError> {
        self.with(|g| {
            g.calls.record_fate += 1;
            g.fates
                .insert(rk(&fate.feed, &fate.idempotency_key), fate.clone());
        })
    }

    async fn record(
        &self,
        feed: &str,
        record_key: &str,
    ) -> Result<Option<RecordItem>, LedgerError> {
        self.with(|g| {
            g.calls.reads += 1;
            g.records.get(&rk(feed, record_key)).cloned()
        })
    }

    async fn fate(
        &self,
        feed: &str,
        idempotency_key: &str,
    ) -> Result<Option<FateItem>, LedgerError> {
        self.with(|g| {
            g.calls.reads += 1;
            g.fates.get(&rk(feed, idempotency_key)).cloned()
        })
    }
}
