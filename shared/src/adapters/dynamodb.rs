//! The ledger table on DynamoDB ([`DynamoLedger`]): one table, partition key `pk` (string),
//! on-demand, TTL on `expires_at`. Two kinds of item (keys in [`crate::contract::layout`]):
//!
//! ```text
//! rec#<feed>#<record key>   feed, record_key, acked (N), acked_key, acked_run, acked_at_ms,
//!                           lease_owner, lease_version (N), lease_until_ms (N), expires_at
//! key#<feed>#<ikey>         feed, idempotency_key, record_key, version, run, fate, detail,
//!                           attempts, at_ms, expires_at
//! ```
//!
//! Every write of a record's item is one conditional `UpdateItem` whose condition is exactly
//! [`admit`]'s `Take` (or "the lease is ours"); a failed condition returns the item as it was
//! (`ReturnValuesOnConditionCheckFailure: ALL_OLD`), and [`admit`] says why.

use super::sdk::describe;
use crate::contract::layout::{ledger_fate_pk, ledger_record_pk};
use crate::ports::ledger::admit;
use crate::ports::ledger::{
    Acquired, FateItem, LeaseItem, LeaseRequest, LedgerError, LedgerTable, RecordItem,
};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use std::collections::HashMap;
use std::time::Duration;

pub(super) type Item = HashMap<String, AttributeValue>;

/// The ledger table on DynamoDB.
#[derive(Clone)]
pub struct DynamoLedger {
    pub(super) client: aws_sdk_dynamodb::Client,
    pub(super) table: String,
    ttl: Duration,
}

impl DynamoLedger {
    /// The table `table`; items expire `ttl` after their last write.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>, ttl: Duration) -> Self {
        DynamoLedger {
            client,
            table: table.into(),
            ttl,
        }
    }

    fn expires_at(&self) -> AttributeValue {
        let at = chrono::Utc::now().timestamp() + self.ttl.as_secs() as i64;
        n(at)
    }
}

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn table_error<E>(op: &'static str) -> impl FnOnce(SdkError<E>) -> LedgerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| {
        let f = describe(&e);
        LedgerError::Table {
            message: format!("{op}: {}", f.message),
            retryable: f.retryable,
        }
    }
}

fn get_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, LedgerError> {
    match item.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|x| x.parse().ok())
            .map(Some)
            .ok_or_else(|| LedgerError::Corrupt(format!("attribute {name} is not a number"))),
    }
}

/// A record's item as the core knows it.
fn record_item(item: &Item) -> Result<RecordItem, LedgerError> {
    let lease = match (
        get_s(item, "lease_owner"),
        get_n::<u64>(item, "lease_version")?,
    ) {
        (Some(owner), Some(version)) => Some(LeaseItem {
            owner,
            version,
            until_ms: get_n(item, "lease_until_ms")?.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(RecordItem {
        acknowledged: get_n(item, "acked")?,
        acknowledged_key: get_s(item, "acked_key"),
        acknowledged_run: get_s(item, "acked_run"),
        lease,
    })
}

const FATES: &[&str] = &["applied", "duplicate", "superseded", "dead_lettered"];

fn fate_item(item: &Item) -> Result<FateItem, LedgerError> {
    let fate = get_s(item, "fate").unwrap_or_default();
    let fate = FATES
        .iter()
        .copied()
        .find(|f| *f == fate)
        .ok_or_else(|| LedgerError::Corrupt("attribute fate is not a known fate".into()))?;
    Ok(FateItem {
        feed: get_s(item, "feed").unwrap_or_default(),
        idempotency_key: get_s(item, "idempotency_key").unwrap_or_default(),
        record_key: get_s(item, "record_key").unwrap_or_default(),
        version: get_n(item, "version")?.unwrap_or(0),
        run: get_s(item, "run").unwrap_or_default(),
        fate,
        detail: get_s(item, "detail"),
        attempts: get_n(item, "attempts")?.unwrap_or(0),
        at_ms: get_n(item, "at_ms")?.unwrap_or(0),
        lineage_ms: get_n(item, "lineage_ms")?,
    })
}

impl DynamoLedger {
    /// The item `pk` read (strongly consistent) and parsed by `parse`.
    async fn read_as<T>(
        &self,
        pk: String,
        parse: fn(&Item) -> Result<T, LedgerError>,
    ) -> Result<Option<T>, LedgerError> {
        self.get(pk).await?.as_ref().map(parse).transpose()
    }

    /// The record's item as a failed condition found it: the `ALL_OLD` item the service
    /// returned, or read again when it sent none.
    async fn old_record(
        &self,
        e: &SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError>,
        pk: String,
    ) -> Result<Option<RecordItem>, LedgerError> {
        match failed_item(e) {
            Some(item) => record_item(&item).map(Some),
            None => self.read_as(pk, record_item).await,
        }
    }

    async fn get(&self, pk: String) -> Result<Option<Item>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(table_error("GetItem"))?;
        Ok(out.item)
    }

    /// Set the acknowledged version without touching the lease (ours was taken over).
    async fn set_acknowledged(
        &self,
        pk: String,
        version: u64,
        idempotency_key: &str,
        run: &str,
    ) -> Result<bool, LedgerError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .update_expression(
                "SET acked = :v, acked_key = :k, acked_run = :r, acked_at_ms = :t, expires_at = :exp",
            )
            .condition_expression("attribute_not_exists(acked) OR acked < :v")
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":k", s(idempotency_key))
            .expression_attribute_values(":r", s(run))
            .expression_attribute_values(":t", n(chrono::Utc::now().timestamp_millis()))
            .expression_attribute_values(":exp", self.expires_at())
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(table_error("UpdateItem")(e)),
        }
    }
}

pub(super) fn conditional_failed<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// The item a failed condition returned (`ALL_OLD`), if the service sent it.
pub(super) fn failed_item(
    e: &SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError>,
) -> Option<Item> {
    match e.as_service_error() {
        Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
            c.item().cloned()
        }
        _ => None,
    }
}

impl LedgerTable for DynamoLedger {
    async fn acquire(&self, req: &LeaseRequest<'_>) -> Result<Acquired, LedgerError> {
        let pk = ledger_record_pk(req.feed, req.record_key);
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(
                "SET #feed = :f, #rk = :rk, lease_owner = :o, lease_version = :v, \
                 lease_until_ms = :until, expires_at = :exp",
            )
            .condition_expression(
                "(attribute_not_exists(acked) OR acked < :v) AND \
                 (attribute_not_exists(lease_owner) OR lease_until_ms <= :now OR lease_owner = :o)",
            )
            .expression_attribute_names("#feed", "feed")
            .expression_attribute_names("#rk", "record_key")
            .expression_attribute_values(":f", s(req.feed))
            .expression_attribute_values(":rk", s(req.record_key))
            .expression_attribute_values(":o", s(req.owner))
            .expression_attribute_values(":v", n(req.version))
            .expression_attribute_values(":until", n(req.until_ms))
            .expression_attribute_values(":now", n(req.now_ms))
            .expression_attribute_values(":exp", self.expires_at())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match r {
            Ok(_) => Ok(Acquired::Owned),
            Err(e) if conditional_failed(&e) => {
                let rec = self.old_record(&e, pk).await?;
                Ok(Acquired::Refused(admit(
                    rec.as_ref(),
                    req.version,
                    req.owner,
                    req.now_ms,
                )))
            }
            Err(e) => Err(table_error("UpdateItem")(e)),
        }
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
        let pk = ledger_record_pk(feed, record_key);
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(
                "SET acked = :v, acked_key = :k, acked_run = :r, acked_at_ms = :t, expires_at = :exp \
                 REMOVE lease_owner, lease_version, lease_until_ms",
            )
            .condition_expression(
                "(attribute_not_exists(acked) OR acked < :v) AND lease_owner = :o",
            )
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":k", s(idempotency_key))
            .expression_attribute_values(":r", s(run))
            .expression_attribute_values(":t", n(chrono::Utc::now().timestamp_millis()))
            .expression_attribute_values(":o", s(owner))
            .expression_attribute_values(":exp", self.expires_at())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => {
                let rec = self.old_record(&e, pk.clone()).await?.unwrap_or_default();
                if rec.acknowledged.is_some_and(|a| a >= version) {
                    // a newer version was acknowledged meanwhile: it stands; our lease (if it
                    // is still ours) must not keep the record busy
                    self.release(feed, record_key, owner).await?;
                    return Ok(false);
                }
                // our lease was taken over: record the version the API acknowledged anyway
                self.set_acknowledged(pk, version, idempotency_key, run)
                    .await
            }
            Err(e) => Err(table_error("UpdateItem")(e)),
        }
    }

    async fn release(
        &self,
        feed: &str,
        record_key: &str,
        owner: &str,
    ) -> Result<bool, LedgerError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&ledger_record_pk(feed, record_key)))
            .update_expression("REMOVE lease_owner, lease_version, lease_until_ms")
            .condition_expression("lease_owner = :o")
            .expression_attribute_values(":o", s(owner))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(table_error("UpdateItem")(e)),
        }
    }

    async fn record_fate(&self, fate: &FateItem) -> Result<(), LedgerError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&ledger_fate_pk(&fate.feed, &fate.idempotency_key)))
            .item("feed", s(&fate.feed))
            .item("idempotency_key", s(&fate.idempotency_key))
            .item("record_key", s(&fate.record_key))
            .item("version", n(fate.version))
            .item("run", s(&fate.run))
            .item("fate", s(fate.fate))
            .item("attempts", n(fate.attempts))
            .item("at_ms", n(fate.at_ms))
            .item("expires_at", self.expires_at());
        if let Some(d) = &fate.detail {
            put = put.item("detail", s(d));
        }
        if let Some(l) = fate.lineage_ms {
            put = put.item("lineage_ms", n(l));
        }
        put.send().await.map_err(table_error("PutItem"))?;
        Ok(())
    }

    async fn record(
        &self,
        feed: &str,
        record_key: &str,
    ) -> Result<Option<RecordItem>, LedgerError> {
        self.read_as(ledger_record_pk(feed, record_key), record_item)
            .await
    }

    async fn fate(
        &self,
        feed: &str,
        idempotency_key: &str,
    ) -> Result<Option<FateItem>, LedgerError> {
        self.read_as(ledger_fate_pk(feed, idempotency_key), fate_item)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_back_as_the_core_knows_them() {
        let mut item: Item = HashMap::new();
        item.insert("acked".into(), n(4));
        item.insert("acked_key".into(), s("k4"));
        item.insert("lease_owner".into(), s("m:2"));
        item.insert("lease_version".into(), n(5));
        item.insert("lease_until_ms".into(), n(1_000));
        let rec = record_item(&item).unwrap();
        assert_eq!(rec.acknowledged, Some(4));
        assert_eq!(rec.acknowledged_key.as_deref(), Some("k4"));
        assert_eq!(
            rec.lease,
            Some(LeaseItem {
                owner: "m:2".into(),
                version: 5,
                until_ms: 1_000
            })
        );
        item.insert("acked".into(), s("four"));
        assert!(matches!(record_item(&item), Err(LedgerError::Corrupt(_))));
        let mut f: Item = HashMap::new();
        f.insert("fate".into(), s("superseded"));
        f.insert("version".into(), n(2));
        assert_eq!(fate_item(&f).unwrap().fate, "superseded");
        f.insert("fate".into(), s("eaten"));
        assert!(fate_item(&f).is_err());
    }
}
