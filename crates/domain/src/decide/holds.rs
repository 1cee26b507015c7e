//! Handlers for holds: place, capture, release. Expiry is housekeeping.

use crate::buckets::{self, unlimited_part};
use crate::command::*;
use crate::credits::Credits;
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::*;
use crate::time::DurationS;

use super::pricing::capture_quantity;
use super::receipts::{hold_receipt, resolution_receipt};
use super::runs::{check_run, recorded_run, sent_run};
use super::validation::check_id;
use super::{replay_or_conflict, Ctx, Decision};

/// Holds live 15 minutes unless the caller says otherwise.
pub const HOLD_TTL_DEFAULT: DurationS = DurationS::from_secs(15 * 60);
/// And never longer than a day.
pub const HOLD_TTL_MAX: DurationS = DurationS::from_secs(24 * 60 * 60);

impl Ctx<'_> {
    /// A hold by id: open (and not yet due), or how it ended. A hold that fell due at or
    /// before `now` counts as expired even before its event is written.
    fn find_hold(&self, hold_id: &str) -> Option<Result<&Hold, (&Hold, Option<&ClosedHold>)>> {
        if let Some(hold) = self.core.balance.open_holds.get(hold_id) {
            return Some(Ok(hold));
        }
        if let Some(hold) = self.stored.balance.open_holds.get(hold_id) {
            return Some(Err((hold, None)));
        }
        self.account
            .records
            .closed_holds
            .get(hold_id)
            .map(|closed| Err((&closed.hold, Some(&**closed))))
    }

    pub(super) fn place_hold(&self, c: &PlaceHold) -> Result<Decision, Rejection> {
        check_id("hold_id", &c.hold_id)?;
        let ttl = c.ttl.unwrap_or(HOLD_TTL_DEFAULT);
        if let Some(found) = self.find_hold(&c.hold_id) {
            let hold = match found {
                Ok(hold) | Err((hold, _)) => hold,
            };
            let placed = &hold.placed;
            let same = placed.ttl_s == ttl.as_secs() && recorded_run!(placed) == sent_run!(c);
            return replay_or_conflict(same, hold_receipt(placed), hold.version, &c.hold_id);
        }
        check_run(&c.run_id, &c.node_id)?;
        if ttl > HOLD_TTL_MAX {
            return Err(Rejection::invalid("ttl must be at most 24h"));
        }
        let (settlement, model, quantity) = self.settle(&c.model, c.quantity, c.via, &c.hold_id)?;
        let expires_at = ttl
            .after(self.now)
            .ok_or_else(|| Rejection::invalid("ttl out of range"))?;
        let earmarked = if settlement.paid_by == PaidBy::Unlimited {
            Vec::new()
        } else {
            settlement.parts
        };
        let placed = HoldPlaced {
            hold_id: c.hold_id.clone(),
            run_id: c.run_id.clone(),
            node_id: c.node_id.clone(),
            model: model.id.clone(),
            via: c.via,
            price_unit: model.price.unit,
            unit_price: model.price.unit_price,
            quantity,
            cost: settlement.cost,
            paid_by: settlement.paid_by,
            earmarked,
            ttl_s: ttl.as_secs(),
            expires_at,
            balance_after: settlement.balance_after,
        };
        let reply = hold_receipt(&placed);
        let mut events = settlement.events;
        events.push(placed.into());
        Ok(Decision::new(events, reply))
    }

    fn closed(hold_id: &str, closed: Option<&ClosedHold>) -> Rejection {
        Rejection::HoldClosed {
            hold_id: hold_id.to_string(),
            status: closed
                .map_or(HoldStatus::Expired, |closed| closed.resolution.status())
                .as_str(),
        }
    }

    pub(super) fn capture_hold(&self, c: &CaptureHold) -> Result<Decision, Rejection> {
        check_id("hold_id", &c.hold_id)?;
        let found = self
            .find_hold(&c.hold_id)
            .ok_or_else(|| Rejection::NotFound {
                what: "hold",
                id: c.hold_id.clone(),
            })?;
        let hold = match found {
            Ok(hold) => hold,
            Err((hold, closed)) => {
                let wanted = capture_quantity(&hold.placed, c.quantity);
                return match closed {
                    Some(
                        closed @ ClosedHold {
                            resolution: HoldResolution::Captured(captured),
                            ..
                        },
                    ) if wanted == Ok(captured.quantity) => Ok(Decision::replay(
                        resolution_receipt(&closed.resolution),
                        closed.version,
                    )),
                    _ => Err(Self::closed(&c.hold_id, closed)),
                };
            }
        };
        let placed = &hold.placed;
        let quantity = capture_quantity(placed, c.quantity)?;
        let cost = placed
            .unit_price
            .checked_mul(u64::from(quantity))
            .ok_or_else(|| Rejection::invalid("cost overflows"))?;
        let (cost, drawn_from, rest) = match placed.paid_by {
            PaidBy::Trial | PaidBy::FreeNode => (Credits::ZERO, Vec::new(), Vec::new()),
            PaidBy::Unlimited => (cost, vec![unlimited_part(cost)], Vec::new()),
            PaidBy::Credits => {
                let (drawn, rest) = buckets::split(&placed.earmarked, cost);
                (cost, drawn, rest)
            }
        };
        let (returned, forfeited) =
            self.core
                .balance
                .classify_returns(&rest, self.now, hold.version);
        let balance_after = self
            .balance()
            .map(|balance| balance.saturating_add(buckets::sum(&returned)));
        let captured = HoldCaptured {
            hold_id: c.hold_id.clone(),
            quantity,
            cost,
            drawn_from,
            returned,
            forfeited,
            balance_after,
        };
        let reply = resolution_receipt(&HoldResolution::Captured(captured.clone()));
        Ok(Decision::new(vec![captured.into()], reply))
    }

    pub(super) fn release_hold(&self, hold_id: &str) -> Result<Decision, Rejection> {
        check_id("hold_id", hold_id)?;
        let found = self.find_hold(hold_id).ok_or_else(|| Rejection::NotFound {
            what: "hold",
            id: hold_id.to_string(),
        })?;
        let hold = match found {
            Ok(hold) => hold,
            Err((
                _,
                Some(
                    closed @ ClosedHold {
                        resolution: HoldResolution::Released(_),
                        ..
                    },
                ),
            )) => {
                return Ok(Decision::replay(
                    resolution_receipt(&closed.resolution),
                    closed.version,
                ))
            }
            Err((_, closed)) => return Err(Self::closed(hold_id, closed)),
        };
        let (returned, forfeited) =
            self.core
                .balance
                .classify_returns(&hold.placed.earmarked, self.now, hold.version);
        let balance_after = self
            .balance()
            .map(|balance| balance.saturating_add(buckets::sum(&returned)));
        let released = HoldReleased {
            hold_id: hold_id.to_string(),
            returned,
            forfeited,
            balance_after,
        };
        let reply = resolution_receipt(&HoldResolution::Released(released.clone()));
        Ok(Decision::new(vec![released.into()], reply))
    }
}
