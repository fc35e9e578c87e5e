//! The fleet-wide API gate ([`GateTable`]) on the ledger's DynamoDB table: one item,
//! `gate#api` ([`GATE_PK`]), never expiring:
//!
//! ```text
//! gate#api   state ("closed" | "open"), failures (N), tat_us (N: the next free call slot,
//!            epoch µs), probe_at_ms, opened_at_ms, closed_at_ms, paused_until_ms (N),
//!            opens, probes (N: counters for operators)
//! ```
//!
//! Every change is one `UpdateItem` whose condition is the change's precondition; a slot
//! reservation whose guess of the schedule's state was wrong reads the item the failed
//! condition returned (`ALL_OLD`) and tries the other form (at most a few times).

use super::dynamodb::{conditional_failed, failed_item, n, s, DynamoLedger, Item};
use super::sdk::describe;
use crate::contract::layout::GATE_PK;
use crate::ports::gate::{BreakerState, GateError, GateItem, GateTable, Slot, SlotRequest};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};

fn gate_error<E>(op: &'static str) -> impl FnOnce(SdkError<E>) -> GateError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| GateError {
        message: format!("{op}: {}", describe(&e).message),
    }
}

fn num(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The item as the core knows it, with the schedule in µs.
fn gate_item(item: &Item) -> (GateItem, i64) {
    let tat_us = num(item, "tat_us");
    let state = item
        .get("state")
        .and_then(|v| v.as_s().ok())
        .map(|v| BreakerState::parse(v))
        .unwrap_or_default();
    (
        GateItem {
            state,
            failures: u32::try_from(num(item, "failures")).unwrap_or(u32::MAX),
            tat_ms: tat_us / 1000,
            probe_at_ms: num(item, "probe_at_ms"),
            opened_at_ms: num(item, "opened_at_ms"),
            closed_at_ms: num(item, "closed_at_ms"),
            paused_until_ms: num(item, "paused_until_ms"),
        },
        tat_us,
    )
}

const CLOSED: &str = "(attribute_not_exists(#st) OR #st = :closed)";

impl DynamoLedger {
    /// An `UpdateItem` of the gate's item.
    fn gate_update(
        &self,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(GATE_PK))
    }

    async fn gate_get(&self) -> Result<Option<Item>, GateError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(GATE_PK))
            .consistent_read(true)
            .send()
            .await
            .map_err(gate_error("GetItem"))?;
        Ok(out.item)
    }

    /// One try at a slot: `busy` (the schedule is at or past the earliest slot wanted: move
    /// it one spacing on) or idle (it lags: restart it at the earliest slot). `Ok(Err(old item))` when the condition failed.
    async fn try_slot(
        &self,
        req: &SlotRequest,
        busy: bool,
    ) -> Result<Result<Item, Option<Item>>, GateError> {
        let earliest_us = req.earliest_ms.saturating_mul(1000);
        let u = self
            .gate_update()
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":closed", s("closed"))
            .expression_attribute_values(":now", n(earliest_us))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let u = if busy {
            u.update_expression("SET tat_us = tat_us + :sp")
                .condition_expression(format!(
                    "{CLOSED} AND tat_us >= :now AND tat_us <= :horizon"
                ))
                .expression_attribute_values(":horizon", n(req.horizon_ms.saturating_mul(1000)))
                .expression_attribute_values(":sp", n(req.spacing_us))
        } else {
            u.update_expression("SET tat_us = :next")
                .condition_expression(format!(
                    "{CLOSED} AND (attribute_not_exists(tat_us) OR tat_us < :now)"
                ))
                .expression_attribute_values(":next", n(earliest_us.saturating_add(req.spacing_us)))
        };
        match u.send().await {
            Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
            Err(e) if conditional_failed(&e) => Ok(Err(failed_item(&e))),
            Err(e) => Err(gate_error("UpdateItem")(e)),
        }
    }
}

impl GateTable for DynamoLedger {
    async fn read(&self) -> Result<Option<GateItem>, GateError> {
        Ok(self.gate_get().await?.as_ref().map(|i| gate_item(i).0))
    }

    async fn reserve(&self, req: SlotRequest) -> Result<Slot, GateError> {
        let earliest_us = req.earliest_ms.saturating_mul(1000);
        let horizon_us = req.horizon_ms.saturating_mul(1000);
        // under load the schedule is ahead of now: try that form first
        let mut busy = true;
        let mut last = GateItem::default();
        for _ in 0..4 {
            let old = match self.try_slot(&req, busy).await? {
                Ok(new) => {
                    let (item, tat_us) = gate_item(&new);
                    return Ok(Slot::Reserved {
                        at_us: tat_us - req.spacing_us,
                        item,
                    });
                }
                Err(Some(old)) => old,
                Err(None) => self.gate_get().await?.unwrap_or_default(),
            };
            let (item, tat_us) = gate_item(&old);
            if item.state == BreakerState::Open || tat_us > horizon_us {
                return Ok(Slot::Refused(item));
            }
            busy = old.contains_key("tat_us") && tat_us >= earliest_us;
            last = item;
        }
        // the schedule kept moving under us: the caller waits a moment and asks again
        Ok(Slot::Refused(last))
    }

    async fn take_probe(
        &self,
        now_ms: i64,
        interval_ms: i64,
    ) -> Result<Option<GateItem>, GateError> {
        let r = self
            .gate_update()
            .update_expression("SET probe_at_ms = :next ADD probes :one")
            .condition_expression("#st = :open AND probe_at_ms <= :now")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":open", s("open"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":next", n(now_ms.saturating_add(interval_ms)))
            .expression_attribute_values(":one", n(1))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match r {
            Ok(_) => Ok(None),
            Err(e) if conditional_failed(&e) => {
                let item = match failed_item(&e) {
                    Some(i) => Some(i),
                    None => self.gate_get().await?,
                };
                Ok(Some(
                    item.as_ref().map(|i| gate_item(i).0).unwrap_or_default(),
                ))
            }
            Err(e) => Err(gate_error("UpdateItem")(e)),
        }
    }

    async fn succeeded(&self, now_ms: i64) -> Result<bool, GateError> {
        let r = self
            .gate_update()
            .update_expression(
                "SET #st = :closed, failures = :zero, closed_at_ms = :now, tat_us = :now_us",
            )
            .condition_expression("#st = :open")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":open", s("open"))
            .expression_attribute_values(":closed", s("closed"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":now_us", n(now_ms.saturating_mul(1000)))
            .send()
            .await;
        match r {
            Ok(_) => return Ok(true),
            Err(e) if conditional_failed(&e) => {}
            Err(e) => return Err(gate_error("UpdateItem")(e)),
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(GATE_PK))
            .update_expression("SET failures = :zero")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await
            .map_err(gate_error("UpdateItem"))?;
        Ok(false)
    }

    async fn failed(
        &self,
        now_ms: i64,
        threshold: u32,
        interval_ms: i64,
    ) -> Result<bool, GateError> {
        let out = self
            .gate_update()
            .update_expression("ADD failures :one")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(gate_error("UpdateItem"))?;
        let (item, _) = gate_item(&out.attributes.unwrap_or_default());
        if item.state == BreakerState::Open || item.failures < threshold {
            return Ok(false);
        }
        let r = self
            .gate_update()
            .update_expression(
                "SET #st = :open, opened_at_ms = :now, probe_at_ms = :probe ADD opens :one",
            )
            .condition_expression(format!("{CLOSED} AND failures >= :th"))
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":open", s("open"))
            .expression_attribute_values(":closed", s("closed"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":probe", n(now_ms.saturating_add(interval_ms)))
            .expression_attribute_values(":th", n(threshold))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(gate_error("UpdateItem")(e)),
        }
    }

    async fn pause(&self, until_ms: i64) -> Result<(), GateError> {
        let until_us = until_ms.saturating_mul(1000);
        let r = self
            .gate_update()
            .update_expression("SET tat_us = :until_us, paused_until_ms = :until")
            .condition_expression("attribute_not_exists(tat_us) OR tat_us < :until_us")
            .expression_attribute_values(":until_us", n(until_us))
            .expression_attribute_values(":until", n(until_ms))
            .send()
            .await;
        match r {
            // a later schedule already keeps everyone back as long
            Ok(_) => Ok(()),
            Err(e) if conditional_failed(&e) => Ok(()),
            Err(e) => Err(gate_error("UpdateItem")(e)),
        }
    }
}
