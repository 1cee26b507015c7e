//! Pricing: the quantity a request must carry for a model's price unit, and what it costs.

use crate::catalog::{Model, PriceUnit};
use crate::command::Quantity;
use crate::credits::Credits;
use crate::events::HoldPlaced;
use crate::rejection::Rejection;

/// How a request counts a price unit: the field that carries the count, the field that must
/// stay out, and the largest count a run may ask for. The one map from price units to
/// request fields; per-call prices count nothing.
struct Counted {
    field: &'static str,
    unit: &'static str,
    other: &'static str,
    max: u32,
    images: bool,
}

impl Counted {
    fn of(unit: PriceUnit) -> Option<Counted> {
        match unit {
            PriceUnit::PerImage => Some(Counted {
                field: "images",
                unit: "image",
                other: "seconds",
                max: 100,
                images: true,
            }),
            PriceUnit::PerSecond => Some(Counted {
                field: "seconds",
                unit: "second",
                other: "images",
                max: 3_600,
                images: false,
            }),
            PriceUnit::PerCall => None,
        }
    }

    /// The counted field of a request and the one that must be absent.
    fn read(&self, quantity: Quantity) -> (Option<u32>, Option<u32>) {
        if self.images {
            (quantity.images, quantity.seconds)
        } else {
            (quantity.seconds, quantity.images)
        }
    }

    /// The `images`/`seconds` pair a request carries for `count`.
    fn write(&self, count: u32) -> (Option<u32>, Option<u32>) {
        if self.images {
            (Some(count), None)
        } else {
            (None, Some(count))
        }
    }
}

fn sends_a_quantity(quantity: Quantity) -> bool {
    quantity.images.is_some() || quantity.seconds.is_some()
}

/// The `images`/`seconds` pair a request must have carried for a recorded price unit.
pub fn request_quantity(unit: PriceUnit, quantity: u32) -> (Option<u32>, Option<u32>) {
    Counted::of(unit).map_or((None, None), |counted| counted.write(quantity))
}

/// The priced quantity of a run of `model`: the request must carry exactly the quantity its
/// price counts, in range. A wrong or missing quantity is refused, never guessed.
pub fn priced_quantity(model: &Model, quantity: Quantity) -> Result<u32, Rejection> {
    let Some(counted) = Counted::of(model.price.unit) else {
        if sends_a_quantity(quantity) {
            return Err(Rejection::invalid(format!(
                "model {} is priced per call: send neither images nor seconds",
                model.id
            )));
        }
        return Ok(1);
    };
    let (sent, other) = counted.read(quantity);
    if other.is_some() {
        return Err(Rejection::invalid(format!(
            "model {} is priced per {}: {} is not accepted",
            model.id, counted.unit, counted.other
        )));
    }
    let (wanted, max) = (counted.field, counted.max);
    match sent {
        Some(count) if (1..=max).contains(&count) => Ok(count),
        Some(count) => Err(Rejection::invalid(format!(
            "{wanted} must be between 1 and {max}, got {count}"
        ))),
        None => Err(Rejection::invalid(format!(
            "model {} needs {wanted} (1 to {max})",
            model.id
        ))),
    }
}

/// The cost of `quantity` units of `model`.
pub fn cost_of(model: &Model, quantity: u32) -> Result<Credits, Rejection> {
    model
        .price
        .unit_price
        .checked_mul(u64::from(quantity))
        .ok_or_else(|| Rejection::invalid("cost overflows"))
}

/// The quantity a capture charges: as sent, or the held quantity when none is sent; never
/// more than held, and of the kind the model is priced in.
pub(super) fn capture_quantity(placed: &HoldPlaced, quantity: Quantity) -> Result<u32, Rejection> {
    let Some(counted) = Counted::of(placed.price_unit) else {
        if sends_a_quantity(quantity) {
            return Err(Rejection::invalid(
                "a per-call hold is captured without a quantity",
            ));
        }
        return Ok(placed.quantity);
    };
    let (sent, other) = counted.read(quantity);
    let field = counted.field;
    if other.is_some() {
        return Err(Rejection::invalid(format!(
            "this hold is captured in {field}"
        )));
    }
    match sent {
        None => Ok(placed.quantity),
        Some(count) if (1..=placed.quantity).contains(&count) => Ok(count),
        Some(count) => Err(Rejection::invalid(format!(
            "{field} must be between 1 and the held {}, got {count}",
            placed.quantity
        ))),
    }
}
