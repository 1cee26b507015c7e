//! Handlers for paid and free runs: settling a run (access, price, who pays, which parts),
//! charging it, and refunding a charge.

use crate::buckets::{self, unlimited_part};
use crate::catalog::{Model, PriceUnit};
use crate::command::*;
use crate::credits::Credits;
use crate::events::*;
use crate::rejection::Rejection;

use super::access::{check_access, Access};
use super::pricing::{cost_of, priced_quantity, request_quantity};
use super::receipts::{charge_receipt, RefundReceipt};
use super::trials::trial_run_events;
use super::validation::{check_id, check_text};
use super::{replay_or_conflict, Ctx, Decision, Reply};

/// What a retry of a charge or a hold must repeat to get its first answer: the same run,
/// node, model, route and quantity.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RunRequest<'a> {
    run_id: &'a str,
    node_id: &'a str,
    model: &'a str,
    via: Via,
    /// The `images`/`seconds` pair as sent.
    quantity: (Option<u32>, Option<u32>),
}

impl<'a> RunRequest<'a> {
    pub(super) fn sent(
        run_id: &'a str,
        node_id: &'a str,
        model: &'a str,
        via: Via,
        quantity: Quantity,
    ) -> RunRequest<'a> {
        RunRequest {
            run_id,
            node_id,
            model,
            via,
            quantity: (quantity.images, quantity.seconds),
        }
    }

    /// The request a recorded run answered, its quantity as the price unit was sent.
    pub(super) fn recorded(
        run_id: &'a str,
        node_id: &'a str,
        model: &'a str,
        via: Via,
        unit: PriceUnit,
        quantity: u32,
    ) -> RunRequest<'a> {
        RunRequest {
            run_id,
            node_id,
            model,
            via,
            quantity: request_quantity(unit, quantity),
        }
    }
}

/// The run a charge or hold command asks for (both name these fields alike).
macro_rules! sent_run {
    ($command:expr) => {
        $crate::decide::runs::RunRequest::sent(
            &$command.run_id,
            &$command.node_id,
            &$command.model,
            $command.via,
            $command.quantity,
        )
    };
}
pub(super) use sent_run;

/// The run a recorded charge or hold answered (both events name these fields alike).
macro_rules! recorded_run {
    ($event:expr) => {
        $crate::decide::runs::RunRequest::recorded(
            &$event.run_id,
            &$event.node_id,
            &$event.model,
            $event.via,
            $event.price_unit,
            $event.quantity,
        )
    };
}
pub(super) use recorded_run;

/// The ids a new run must carry.
pub(super) fn check_run(run_id: &str, node_id: &str) -> Result<(), Rejection> {
    check_id("run_id", run_id)?;
    check_id("node_id", node_id)
}

/// How a paid or free run settles: who pays, what it costs, which parts it takes, and the
/// balance after.
pub(super) struct Settlement {
    pub(super) paid_by: PaidBy,
    pub(super) cost: Credits,
    pub(super) parts: Vec<Part>,
    pub(super) balance_after: Option<Credits>,
    pub(super) events: Vec<Event>,
}

impl Ctx<'_> {
    /// Checks a run of `model_id` and settles what it would take, for a charge or a hold.
    pub(super) fn settle(
        &self,
        model_id: &str,
        quantity: Quantity,
        via: Via,
        run_ref: &str,
    ) -> Result<(Settlement, &Model, u32), Rejection> {
        let model = self
            .catalog
            .model(model_id)
            .ok_or_else(|| Rejection::UnknownModel {
                model: model_id.to_string(),
            })?;
        let quantity = priced_quantity(model, quantity)?;
        if via == Via::Api && !self.core.plan.scope.allows_api_runs() {
            return Err(Rejection::ScopeRequired {
                scope: self.core.plan.scope.as_str(),
            });
        }
        let trial = self.core.trials.get(model_id);
        let access = check_access(self.core.plan.tier, trial, model, self.now)?;
        let cost = cost_of(model, quantity)?;
        let settlement = match access {
            Access::Trial => Settlement {
                paid_by: PaidBy::Trial,
                cost: Credits::ZERO,
                parts: Vec::new(),
                balance_after: self.balance(),
                events: trial_run_events(trial, model, run_ref, self.now),
            },
            Access::Paid if self.core.plan.unlimited => Settlement {
                paid_by: PaidBy::Unlimited,
                cost,
                parts: vec![unlimited_part(cost)],
                balance_after: None,
                events: Vec::new(),
            },
            Access::Paid => {
                let parts = self
                    .core
                    .balance
                    .draw(cost, self.now)
                    .map_err(|available| Rejection::InsufficientCredits {
                        required: cost,
                        available,
                    })?;
                let available = self.core.available(self.now);
                Settlement {
                    paid_by: PaidBy::Credits,
                    cost,
                    parts,
                    balance_after: Some(available.checked_sub(cost).unwrap_or(Credits::ZERO)),
                    events: Vec::new(),
                }
            }
        };
        Ok((settlement, model, quantity))
    }

    pub(super) fn charge(&self, c: &Charge) -> Result<Decision, Rejection> {
        check_id("charge_id", &c.charge_id)?;
        if let Some(record) = self.account.records.charges.get(&c.charge_id) {
            let recorded = &record.charge;
            let same = recorded_run!(recorded) == sent_run!(c);
            return replay_or_conflict(
                same,
                charge_receipt(recorded),
                record.version,
                &c.charge_id,
            );
        }
        check_run(&c.run_id, &c.node_id)?;
        let (settlement, model, quantity) =
            self.settle(&c.model, c.quantity, c.via, &c.charge_id)?;
        let charged = CreditsCharged {
            charge_id: c.charge_id.clone(),
            run_id: c.run_id.clone(),
            node_id: c.node_id.clone(),
            model: model.id.clone(),
            via: c.via,
            price_unit: model.price.unit,
            unit_price: model.price.unit_price,
            quantity,
            cost: settlement.cost,
            paid_by: settlement.paid_by,
            drawn_from: settlement.parts,
            balance_after: settlement.balance_after,
        };
        let reply = charge_receipt(&charged);
        let mut events = settlement.events;
        events.push(charged.into());
        Ok(Decision::new(events, reply))
    }

    pub(super) fn refund(&self, charge_id: &str, reason: &str) -> Result<Decision, Rejection> {
        let record =
            self.account
                .records
                .charges
                .get(charge_id)
                .ok_or_else(|| Rejection::NotFound {
                    what: "charge",
                    id: charge_id.to_string(),
                })?;
        if let Some(recorded) = &record.refund {
            let refund = &recorded.event;
            return if refund.reason == reason {
                Ok(Decision::replay(
                    Reply::Refunded(RefundReceipt {
                        charge_id: charge_id.to_string(),
                        returned: refund.returned.clone(),
                        forfeited: refund.forfeited.clone(),
                        balance: refund.balance_after,
                    }),
                    recorded.version,
                ))
            } else {
                Err(Rejection::IdempotencyConflict {
                    id: charge_id.to_string(),
                })
            };
        }
        check_text("reason", reason)?;
        let (returned, forfeited) =
            self.core
                .balance
                .classify_returns(&record.charge.drawn_from, self.now, record.version);
        let balance_after = self
            .balance()
            .map(|balance| balance.saturating_add(buckets::sum(&returned)));
        let event = ChargeRefunded {
            charge_id: charge_id.to_string(),
            model: Some(record.charge.model.clone()),
            charge_version: Some(record.version),
            cost: Some(record.charge.cost),
            reason: reason.to_string(),
            returned: returned.clone(),
            forfeited: forfeited.clone(),
            balance_after,
        };
        Ok(Decision::new(
            vec![event.into()],
            Reply::Refunded(RefundReceipt {
                charge_id: charge_id.to_string(),
                returned,
                forfeited,
                balance: balance_after,
            }),
        ))
    }
}
