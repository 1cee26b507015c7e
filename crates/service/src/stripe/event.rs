//! Stripe events → ledger commands (the table of SPEC section 12). Only the fields the table
//! names are read, by path, so whatever else Stripe sends (it sends a lot, and adds more with
//! each API version) never breaks parsing. Pure: the body in, a command or a reason out.

use ledger_domain::command::{
    ChangeSubscription, PaidTopUp, PurchaseTopUp, RenewAllowance, RevokeTopUp,
};
use ledger_domain::events::Billing;
use ledger_domain::time::add_months;
use ledger_domain::{Command, Instant, Tier};
use serde_json::Value;

/// What a delivery asks of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A command for an account; `writes` is the event type it writes when it changes
    /// something.
    Command {
        account_id: String,
        command: Command,
        writes: &'static str,
    },
    /// Acknowledged with nothing written, for this reason (logged).
    Ignored(&'static str),
}

/// The event's envelope, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub type_name: String,
    pub mapped: Mapped,
}

/// A payload without the fields SPEC section 12 needs: 400, and Stripe's dashboard shows why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stripe event: {0}")]
pub struct PayloadError(String);

fn missing(path: &str) -> PayloadError {
    PayloadError(format!("{path} is missing or not of the expected type"))
}

fn text<'v>(value: &'v Value, pointer: &str) -> Result<&'v str, PayloadError> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .ok_or_else(|| missing(pointer))
}

fn optional_text<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

/// A Unix-seconds timestamp (Stripe's only time format).
fn instant(value: &Value, pointer: &str) -> Result<Instant, PayloadError> {
    value
        .pointer(pointer)
        .and_then(Value::as_i64)
        .and_then(|seconds| Instant::from_timestamp(seconds, 0))
        .ok_or_else(|| missing(pointer))
}

/// Reads a delivery. The signature has been checked; the body is Stripe's.
pub fn map_delivery(body: &[u8]) -> Result<Delivery, PayloadError> {
    let event: Value = serde_json::from_slice(body)
        .map_err(|err| PayloadError(format!("the body is not JSON: {err}")))?;
    let id = text(&event, "/id")?.to_string();
    let type_name = text(&event, "/type")?.to_string();
    let object = event
        .pointer("/data/object")
        .ok_or_else(|| missing("/data/object"))?;
    let mapped = match type_name.as_str() {
        "customer.subscription.created" | "customer.subscription.updated" => {
            subscription(&id, object)?
        }
        "customer.subscription.deleted" => cancellation(&id, &event, object)?,
        "invoice.paid" => renewal(object)?,
        // Delayed payment methods (SEPA, bank transfers) complete the session unpaid and
        // report the payment later with this event, shaped the same.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            top_up(&event, object)?
        }
        "charge.refunded" => revocation(object)?,
        _ => Mapped::Ignored("an event type the ledger does not use"),
    };
    Ok(Delivery {
        id,
        type_name,
        mapped,
    })
}

fn account_command(account_id: &str, command: Command, writes: &'static str) -> Mapped {
    Mapped::Command {
        account_id: account_id.to_string(),
        command,
        writes,
    }
}

/// `customer.subscription.created` / `.updated`.
fn subscription(event_id: &str, object: &Value) -> Result<Mapped, PayloadError> {
    let status = text(object, "/status")?;
    if !matches!(status, "active" | "trialing") {
        // incomplete, past_due, unpaid, paused: the plan stays as it is until Stripe
        // activates the subscription or deletes it.
        return Ok(Mapped::Ignored(
            "the subscription is not active or trialing",
        ));
    }
    let account_id = text(object, "/metadata/account_id")?;
    let item = object
        .pointer("/items/data/0")
        .ok_or_else(|| missing("/items/data/0"))?;
    let price = item
        .get("price")
        .ok_or_else(|| missing("/items/data/0/price"))?;
    let tier = price_tier(price)?;
    let billing = match text(price, "/recurring/interval")? {
        "month" => Billing::Monthly,
        "year" => Billing::Annual,
        other => {
            return Err(PayloadError(format!(
                "price interval {other:?} is neither month nor year"
            )))
        }
    };
    if price
        .pointer("/recurring/interval_count")
        .and_then(Value::as_u64)
        .is_some_and(|count| count != 1)
    {
        return Err(PayloadError(
            "price interval_count must be 1: the plans renew monthly or yearly".into(),
        ));
    }
    // Before API version 2025-03-31 the period is on the subscription; since, on its items.
    let (period_start, period_end) = match object.get("current_period_start") {
        Some(_) => (
            instant(object, "/current_period_start")?,
            instant(object, "/current_period_end")?,
        ),
        None => (
            instant(item, "/current_period_start")?,
            instant(item, "/current_period_end")?,
        ),
    };
    let command = Command::SyncSubscription(ChangeSubscription {
        tier,
        billing: (tier != Tier::Free).then_some(billing),
        period_start,
        period_end,
        reference: event_id.to_string(),
        allowance: None,
    });
    Ok(account_command(account_id, command, "tier_changed"))
}

/// The tier a price sells: its `metadata.tier`, else the `{tier}_` prefix of its lookup key.
fn price_tier(price: &Value) -> Result<Tier, PayloadError> {
    let named = optional_text(price, "/metadata/tier")
        .or_else(|| optional_text(price, "/lookup_key").and_then(|key| key.split('_').next()));
    let name = named.ok_or_else(|| {
        PayloadError(
            "the price names no tier (metadata.tier or lookup_key {tier}_{monthly|annual})".into(),
        )
    })?;
    Tier::ALL
        .into_iter()
        .find(|tier| tier.as_str() == name)
        .ok_or_else(|| PayloadError(format!("the price's tier {name:?} is not a ledger tier")))
}

/// `customer.subscription.deleted`: back to free from the instant the subscription ended.
fn cancellation(event_id: &str, event: &Value, object: &Value) -> Result<Mapped, PayloadError> {
    let account_id = text(object, "/metadata/account_id")?;
    let ended_at = instant(object, "/ended_at")
        .or_else(|_| instant(object, "/canceled_at"))
        .or_else(|_| instant(event, "/created"))?;
    let command = Command::SyncSubscription(ChangeSubscription {
        tier: Tier::Free,
        billing: None,
        period_start: ended_at,
        period_end: add_months(ended_at, 1),
        reference: event_id.to_string(),
        allowance: None,
    });
    Ok(account_command(account_id, command, "tier_changed"))
}

/// `invoice.paid`: a renewal only for a new cycle; the first invoice of a subscription is
/// paid for the period `customer.subscription.created` already started.
fn renewal(object: &Value) -> Result<Mapped, PayloadError> {
    if optional_text(object, "/billing_reason") != Some("subscription_cycle") {
        return Ok(Mapped::Ignored(
            "an invoice that is not a subscription cycle",
        ));
    }
    let invoice_id = text(object, "/id")?;
    let lines = object
        .pointer("/lines/data")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("/lines/data"))?;
    // The subscription's line: `type` before API version 2025-03-31, `parent.type` since.
    let line = lines
        .iter()
        .find(|line| {
            optional_text(line, "/type") == Some("subscription")
                || optional_text(line, "/parent/type") == Some("subscription_item_details")
        })
        .ok_or_else(|| PayloadError("the invoice has no subscription line".into()))?;
    let account_id = optional_text(object, "/subscription_details/metadata/account_id")
        .or_else(|| optional_text(object, "/parent/subscription_details/metadata/account_id"))
        .or_else(|| optional_text(line, "/metadata/account_id"))
        .ok_or_else(|| missing("/subscription_details/metadata/account_id"))?;
    let command = Command::RenewAllowance(RenewAllowance {
        invoice_id: invoice_id.to_string(),
        period_start: instant(line, "/period/start")?,
        period_end: instant(line, "/period/end")?,
    });
    Ok(account_command(account_id, command, "allowance_renewed"))
}

/// `checkout.session.completed` (or its delayed payment) for a top-up pack.
fn top_up(event: &Value, object: &Value) -> Result<Mapped, PayloadError> {
    if optional_text(object, "/mode") != Some("payment") {
        return Ok(Mapped::Ignored(
            "a checkout that is not a one-off payment (subscriptions arrive as customer.subscription.created)",
        ));
    }
    if optional_text(object, "/payment_status") != Some("paid") {
        return Ok(Mapped::Ignored("a checkout not paid yet"));
    }
    let purchase_id = text(object, "/id")?;
    let account_id = optional_text(object, "/metadata/account_id")
        .or_else(|| optional_text(object, "/client_reference_id"))
        .ok_or_else(|| missing("/metadata/account_id"))?;
    // Stripe metadata values are strings.
    let credits = text(object, "/metadata/credits")?
        .parse::<u64>()
        .map_err(|_| PayloadError("metadata.credits is not a whole number".into()))?;
    // Counted from the event's creation, not the arrival, so that a redelivery names the
    // same expiry and replays rather than conflicts.
    let expires_at = match optional_text(object, "/metadata/expires_in_days") {
        None => None,
        Some(days) => {
            let days = days
                .parse::<i64>()
                .ok()
                .filter(|days| (1..=3_650).contains(days))
                .ok_or_else(|| {
                    PayloadError(
                        "metadata.expires_in_days is not a number of days from 1 to 3650".into(),
                    )
                })?;
            Some(instant(event, "/created")? + chrono::TimeDelta::days(days))
        }
    };
    let top_up = PurchaseTopUp {
        purchase_id: purchase_id.to_string(),
        credits,
        expires_at,
    };
    // A session paid in full by a discount has no PaymentIntent: nothing can refund it.
    let command = match payment_intent(object) {
        Some(payment_ref) => Command::PurchasePaidTopUp(PaidTopUp {
            top_up,
            payment_ref: payment_ref.to_string(),
        }),
        None => Command::PurchaseTopUp(top_up),
    };
    Ok(account_command(account_id, command, "top_up_purchased"))
}

/// The PaymentIntent id, sent as an id, or as an object when expanded.
fn payment_intent(object: &Value) -> Option<&str> {
    optional_text(object, "/payment_intent").or_else(|| optional_text(object, "/payment_intent/id"))
}

/// `charge.refunded`: revoke the lot the charge's PaymentIntent bought.
fn revocation(object: &Value) -> Result<Mapped, PayloadError> {
    // Charges of subscription invoices carry no account: only top-up checkouts put it on
    // their PaymentIntent (and so on its charge).
    let Some(account_id) = optional_text(object, "/metadata/account_id") else {
        return Ok(Mapped::Ignored("a refunded charge that names no account"));
    };
    let Some(payment_ref) = payment_intent(object) else {
        return Ok(Mapped::Ignored("a refunded charge without a PaymentIntent"));
    };
    let command = Command::RevokeTopUp(RevokeTopUp {
        payment_ref: payment_ref.to_string(),
        reference: text(object, "/id")?.to_string(),
    });
    Ok(account_command(account_id, command, "top_up_revoked"))
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
