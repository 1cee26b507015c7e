//! What an explain entry's summary is made of: the event, and what it resolves as the
//! account knew it just before (a refund's charge, a hold's placement), which the event itself
//! does not repeat. Data only; the words are the interfaces'.

use crate::catalog::PriceUnit;
use crate::credits::Credits;
use crate::events::Event;
use crate::state::{resolved_hold_id, Account};

/// An entry's summary as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub event: Event,
    /// For a refund: the charge it refunds, if the account knew it.
    pub charge: Option<ChargeOrigin>,
    /// For a capture, release or expiry: the hold as placed, if it was open.
    pub hold: Option<HoldOrigin>,
}

/// The charge a refund refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeOrigin {
    /// The stream version of `credits_charged`.
    pub version: u64,
    pub cost: Credits,
}

/// The hold a capture, release or expiry resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldOrigin {
    /// The stream version of `hold_placed`.
    pub version: u64,
    pub model: String,
    pub price_unit: PriceUnit,
}

impl Note {
    /// The note of `event`, given the account just before it.
    pub fn before(event: &Event, before: &Account) -> Note {
        let charge = match event {
            Event::ChargeRefunded(data) => {
                before
                    .records
                    .charges
                    .get(&data.charge_id)
                    .map(|record| ChargeOrigin {
                        version: record.version,
                        cost: record.charge.cost,
                    })
            }
            _ => None,
        };
        let hold = resolved_hold_id(event)
            .and_then(|hold_id| before.core.as_ref()?.balance.open_holds.get(hold_id))
            .map(|hold| HoldOrigin {
                version: hold.version,
                model: hold.placed.model.clone(),
                price_unit: hold.placed.price_unit,
            });
        Note {
            event: event.clone(),
            charge,
            hold,
        }
    }
}
