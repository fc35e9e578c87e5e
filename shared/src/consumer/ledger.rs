//! The ledger protocol: at most one call per record in flight, never a version at or below
//! the one the API acknowledged.
//!
//! Per record the table keeps the highest acknowledged version and a lease (owner, version,
//! expiry). A message
//! * whose version is **below** the acknowledged one is *superseded*: never sent;
//! * whose version **equals** it is a *duplicate* (that transition was applied);
//! * that finds a live lease of another attempt waits ([`Admit::Busy`]) — briefly in
//!   process, then with a backoff — without calling the API;
//! * otherwise takes the lease (a conditional write), calls the API, and then either
//!   acknowledges its version (applied) or releases the lease (retry, dead letter).
//!
//! A crashed holder's lease expires and is taken over. The lease must outlast the API call
//! (the consumer refuses to start otherwise), so a lease never expires while its call is
//! in flight. The idempotency key still goes with every call: a call the API applied but
//! whose acknowledgement was lost is answered 409 on the retry.
//!
//! [`admit`] is the one decision (part of the table's contract, in [`crate::ports::ledger`]);
//! the table implementations apply it atomically.

pub use crate::ports::ledger::{admit, Admit};
use crate::ports::ledger::{Acquired, FateItem, LeaseRequest, LedgerError, LedgerTable};
use std::time::Duration;

/// The outcome of [`Ledger::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Ours: call the API, then acknowledge or release.
    Owned(Lease),
    /// Never send: a newer version was acknowledged.
    Superseded {
        /// The acknowledged version.
        acknowledged: u64,
    },
    /// Applied before (this version was acknowledged).
    Duplicate,
    /// Another attempt still holds the record after waiting; its lease expires in this long.
    Busy(Duration),
}

/// The lease we hold on a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The feed.
    pub feed: String,
    /// The record.
    pub record_key: String,
    /// The version we deliver.
    pub version: u64,
    /// Us: `<message id>:<receive count>`.
    pub owner: String,
}

/// The ledger: the table and the protocol's timings.
#[derive(Clone)]
pub struct Ledger<L: LedgerTable> {
    /// The table.
    pub table: L,
    /// How long a lease lasts before another attempt may take it over (longer than an API
    /// call can take).
    pub lease: Duration,
    /// How long a message waits in process for another attempt's lease before it is
    /// returned to the queue with a backoff.
    pub wait: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<L: LedgerTable> Ledger<L> {
    /// Take the record's lease to deliver `version`, waiting up to [`Ledger::wait`] while
    /// another attempt holds it.
    pub async fn take(
        &self,
        feed: &str,
        record_key: &str,
        version: u64,
        owner: &str,
    ) -> Result<Take, LedgerError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let now = now_ms();
            let req = LeaseRequest {
                feed,
                record_key,
                version,
                owner,
                now_ms: now,
                until_ms: now.saturating_add(self.lease.as_millis() as i64),
            };
            match self.table.acquire(&req).await? {
                Acquired::Owned => {
                    return Ok(Take::Owned(Lease {
                        feed: feed.to_string(),
                        record_key: record_key.to_string(),
                        version,
                        owner: owner.to_string(),
                    }))
                }
                Acquired::Refused(Admit::Superseded { acknowledged }) => {
                    return Ok(Take::Superseded { acknowledged })
                }
                Acquired::Refused(Admit::Duplicate) => return Ok(Take::Duplicate),
                // the item changed between the condition and the read: ask again
                Acquired::Refused(Admit::Take) => {}
                Acquired::Refused(Admit::Busy { remaining_ms, .. }) => {
                    let remaining = Duration::from_millis(remaining_ms.max(0) as u64);
                    let waited = started.elapsed();
                    if waited + pause.min(remaining) > self.wait {
                        return Ok(Take::Busy(remaining));
                    }
                    tokio::time::sleep(pause.min(remaining).max(Duration::from_millis(10))).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The API acknowledged our version: record it and end our lease. `false`: a newer
    /// version was recorded meanwhile.
    pub async fn acknowledge(
        &self,
        lease: &Lease,
        idempotency_key: &str,
        run: &str,
    ) -> Result<bool, LedgerError> {
        self.table
            .acknowledge(
                &lease.feed,
                &lease.record_key,
                lease.version,
                &lease.owner,
                idempotency_key,
                run,
            )
            .await
    }

    /// End our lease without an acknowledgement. `false`: it had expired and was taken over.
    pub async fn release(&self, lease: &Lease) -> Result<bool, LedgerError> {
        self.table
            .release(&lease.feed, &lease.record_key, &lease.owner)
            .await
    }

    /// Record a message's fate under its idempotency key.
    pub async fn record_fate(&self, fate: &FateItem) -> Result<(), LedgerError> {
        self.table.record_fate(fate).await
    }

    /// The fate recorded under an idempotency key, if any.
    pub async fn fate(
        &self,
        feed: &str,
        idempotency_key: &str,
    ) -> Result<Option<FateItem>, LedgerError> {
        self.table.fate(feed, idempotency_key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ledger::{LeaseItem, MemoryLedger, RecordItem};

    fn item(acked: Option<u64>, lease: Option<(&str, u64, i64)>) -> RecordItem {
        RecordItem {
            acknowledged: acked,
            lease: lease.map(|(owner, version, until_ms)| LeaseItem {
                owner: owner.into(),
                version,
                until_ms,
            }),
            ..RecordItem::default()
        }
    }

    #[test]
    fn a_version_below_the_acknowledged_one_is_superseded_and_equal_is_a_duplicate() {
        let i = item(Some(5), None);
        assert_eq!(
            admit(Some(&i), 4, "m:1", 0),
            Admit::Superseded { acknowledged: 5 }
        );
        assert_eq!(admit(Some(&i), 5, "m:1", 0), Admit::Duplicate);
        assert_eq!(admit(Some(&i), 6, "m:1", 0), Admit::Take);
        assert_eq!(admit(None, 1, "m:1", 0), Admit::Take);
        // superseded wins over a live lease: nothing to wait for
        let leased = item(Some(5), Some(("other:1", 7, 1_000)));
        assert_eq!(
            admit(Some(&leased), 3, "m:1", 0),
            Admit::Superseded { acknowledged: 5 }
        );
    }

    #[test]
    fn a_live_lease_of_another_attempt_is_busy_an_expired_or_own_one_is_taken() {
        let leased = item(None, Some(("other:1", 2, 1_000)));
        assert_eq!(
            admit(Some(&leased), 3, "m:1", 400),
            Admit::Busy {
                holder_version: 2,
                remaining_ms: 600
            }
        );
        assert_eq!(admit(Some(&leased), 3, "m:1", 1_000), Admit::Take);
        assert_eq!(admit(Some(&leased), 3, "other:1", 400), Admit::Take);
    }

    fn ledger(table: MemoryLedger, lease_ms: u64, wait_ms: u64) -> Ledger<MemoryLedger> {
        Ledger {
            table,
            lease: Duration::from_millis(lease_ms),
            wait: Duration::from_millis(wait_ms),
        }
    }

    #[tokio::test]
    async fn an_acknowledged_version_supersedes_older_ones_and_dedupes_itself() {
        let l = ledger(MemoryLedger::new(), 60_000, 0);
        let Take::Owned(v2) = l.take("f", "r1", 2, "a:1").await.unwrap() else {
            panic!("the first take owns the record")
        };
        assert!(l.acknowledge(&v2, "k2", "run-2").await.unwrap());
        assert_eq!(
            l.take("f", "r1", 1, "b:1").await.unwrap(),
            Take::Superseded { acknowledged: 2 }
        );
        assert_eq!(l.take("f", "r1", 2, "c:1").await.unwrap(), Take::Duplicate);
        assert!(matches!(
            l.take("f", "r1", 3, "d:1").await.unwrap(),
            Take::Owned(_)
        ));
        let rec = l.table.record("f", "r1").await.unwrap().unwrap();
        assert_eq!(rec.acknowledged, Some(2));
        assert_eq!(rec.acknowledged_key.as_deref(), Some("k2"));
        assert_eq!(rec.acknowledged_run.as_deref(), Some("run-2"));
    }

    #[tokio::test]
    async fn an_acknowledgement_never_lowers_the_acknowledged_version() {
        let l = ledger(MemoryLedger::new(), 1, 0);
        let Take::Owned(v1) = l.take("f", "r", 1, "a:1").await.unwrap() else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        // v1's lease expired; v3 takes the record over and is acknowledged first
        let Take::Owned(v3) = l.take("f", "r", 3, "b:1").await.unwrap() else {
            panic!("an expired lease is taken over")
        };
        assert!(l.acknowledge(&v3, "k3", "run-3").await.unwrap());
        assert!(!l.acknowledge(&v1, "k1", "run-1").await.unwrap());
        let rec = l.table.record("f", "r").await.unwrap().unwrap();
        assert_eq!(rec.acknowledged, Some(3));
    }

    #[tokio::test]
    async fn a_busy_record_is_waited_for_in_process_then_taken() {
        let table = MemoryLedger::new();
        let holder = ledger(table.clone(), 60_000, 0);
        let Take::Owned(h) = holder.take("f", "r", 1, "a:1").await.unwrap() else {
            panic!()
        };
        // without waiting: busy, with the holder's remaining lease
        assert!(matches!(
            holder.take("f", "r", 2, "b:1").await.unwrap(),
            Take::Busy(d) if d > Duration::from_secs(50)
        ));
        // with a wait: taken as soon as the holder releases
        let waiter = ledger(table.clone(), 60_000, 5_000);
        let release = async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            assert!(holder.release(&h).await.unwrap());
        };
        let (taken, ()) = tokio::join!(waiter.take("f", "r", 2, "b:1"), release);
        assert!(matches!(taken.unwrap(), Take::Owned(_)));
        // a release by someone who no longer holds it changes nothing
        assert!(!holder.release(&h).await.unwrap());
    }

    #[tokio::test]
    async fn concurrent_takes_of_one_record_have_one_owner() {
        let l = ledger(MemoryLedger::new(), 60_000, 0);
        let mut handles = Vec::new();
        for i in 0..16 {
            let l = l.clone();
            handles.push(tokio::spawn(async move {
                l.take("f", "r", 1 + i % 3, &format!("m{i}:1"))
                    .await
                    .unwrap()
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
