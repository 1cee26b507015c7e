//! Receipts: what a charge, refund, hold or hold resolution answers with, built from the
//! event it recorded so that a replay answers exactly as the first time.

use crate::credits::Credits;
use crate::events::*;
use crate::state::{HoldResolution, HoldStatus};
use crate::time::Instant;

use super::Reply;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChargeReceipt {
    pub charge_id: String,
    pub cost: Credits,
    pub paid_by: PaidBy,
    pub drawn_from: Vec<Part>,
    pub balance: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefundReceipt {
    pub charge_id: String,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
    pub balance: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HoldReceipt {
    pub hold_id: String,
    pub cost: Credits,
    pub paid_by: PaidBy,
    pub earmarked: Vec<Part>,
    pub expires_at: Instant,
    pub balance: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HoldResolutionReceipt {
    pub hold_id: String,
    pub status: HoldStatus,
    pub cost: Credits,
    pub drawn_from: Vec<Part>,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
    pub balance: Option<Credits>,
}

pub(super) fn charge_receipt(charge: &CreditsCharged) -> Reply {
    Reply::Charged(ChargeReceipt {
        charge_id: charge.charge_id.clone(),
        cost: charge.cost,
        paid_by: charge.paid_by,
        drawn_from: charge.drawn_from.clone(),
        balance: charge.balance_after,
    })
}

pub(super) fn hold_receipt(placed: &HoldPlaced) -> Reply {
    Reply::HoldPlaced(HoldReceipt {
        hold_id: placed.hold_id.clone(),
        cost: placed.cost,
        paid_by: placed.paid_by,
        earmarked: placed.earmarked.clone(),
        expires_at: placed.expires_at,
        balance: placed.balance_after,
    })
}

pub(super) fn resolution_receipt(resolution: &HoldResolution) -> Reply {
    let (hold_id, cost, drawn_from, returned, forfeited, balance) = match resolution {
        HoldResolution::Captured(c) => (
            &c.hold_id,
            c.cost,
            c.drawn_from.clone(),
            &c.returned,
            &c.forfeited,
            c.balance_after,
        ),
        HoldResolution::Released(r) => (
            &r.hold_id,
            Credits::ZERO,
            Vec::new(),
            &r.returned,
            &r.forfeited,
            r.balance_after,
        ),
        HoldResolution::Expired(e) => (
            &e.hold_id,
            Credits::ZERO,
            Vec::new(),
            &e.returned,
            &e.forfeited,
            None,
        ),
    };
    Reply::HoldResolved(HoldResolutionReceipt {
        hold_id: hold_id.clone(),
        status: resolution.status(),
        cost,
        drawn_from,
        returned: returned.clone(),
        forfeited: forfeited.clone(),
        balance,
    })
}
