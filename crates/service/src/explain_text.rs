//! Explain in words: the one-line summary of each timeline entry. The domain's explanation
//! is data (a `Note` per entry); this is the one place that turns it into English, shared by
//! the HTTP API (whose JSON `summary` field carries these lines) and the CLI (whose table,
//! `explain_table.rs`, lays them out).

use ledger_domain::buckets;
use ledger_domain::catalog::PriceUnit;
use ledger_domain::events::*;
use ledger_domain::explain::{Explanation, Note};
use ledger_domain::time::{rfc3339, DurationS};
use ledger_domain::{Credits, Instant};

/// The explanation with every note rendered as its line of text: what the API answers.
pub fn render(explanation: Explanation) -> Explanation<String> {
    explanation.map_summaries(|note| summary(&note))
}

fn instant(at: &Instant) -> String {
    rfc3339(at)
}

fn plural(count: u64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

fn credits(amount: Credits) -> String {
    plural(amount.get(), "credit", "credits")
}

fn quantity(unit: PriceUnit, quantity: u32) -> String {
    let count = u64::from(quantity);
    match unit {
        PriceUnit::PerImage => plural(count, "image", "images"),
        PriceUnit::PerSecond => plural(count, "second", "seconds"),
        PriceUnit::PerCall => plural(count, "call", "calls"),
    }
}

fn allowance(amount: Option<Credits>) -> String {
    amount.map_or_else(|| "unlimited".to_string(), |amount| amount.to_string())
}

fn via(via: Via) -> &'static str {
    match via {
        Via::App => "",
        Via::Api => " via api",
    }
}

/// "16 returned, 4 forfeited", leaving out what is zero.
fn returns(returned: &[Part], forfeited: &[Part]) -> String {
    let returned = buckets::sum(returned);
    let forfeited = buckets::sum(forfeited);
    match (returned.is_zero(), forfeited.is_zero()) {
        (true, true) => "nothing returned".to_string(),
        (false, true) => format!("{returned} returned"),
        (true, false) => format!("{forfeited} forfeited"),
        (false, false) => format!("{returned} returned, {forfeited} forfeited"),
    }
}

/// What a charge or hold of `model` costs and who pays, e.g. "16 credits for flux-pro (2
/// images)".
fn run_text(
    verb: &str,
    paid_by: PaidBy,
    cost: Credits,
    model: &str,
    unit: PriceUnit,
    count: u32,
) -> String {
    let what = quantity(unit, count);
    match paid_by {
        PaidBy::Credits => format!("{verb} {} for {model} ({what})", credits(cost)),
        PaidBy::Unlimited => format!("{verb} {} for {model} ({what}, unlimited)", credits(cost)),
        PaidBy::Trial => format!("free trial run of {model} ({what})"),
        PaidBy::FreeNode => format!("free run of {model} ({what})"),
    }
}

/// The one-line summary of an entry: what support reads in the timeline.
pub fn summary(note: &Note) -> String {
    match &note.event {
        Event::AccountOpened(d) => format!(
            "account opened on {} with an allowance of {} until {}",
            d.tier,
            d.allowance,
            instant(&d.period_end)
        ),
        Event::TierChanged(d) => format!(
            "tier changed from {} to {}{} (reference {}), allowance reset to {} until {}, {} forfeited",
            d.from,
            d.to,
            d.billing
                .map_or_else(String::new, |b| format!(" {}", Billing::as_str(b))),
            d.reference,
            allowance(d.allowance),
            instant(&d.allowance_period_end),
            d.forfeited
        ),
        Event::BusinessVerificationSubmitted(d) => format!(
            "business verification submitted for {} ({}, {})",
            d.company_name, d.country, d.registration_number
        ),
        Event::BusinessVerificationApproved(_) => "business verification approved".to_string(),
        Event::BusinessVerificationRejected(d) => {
            format!("business verification rejected: {}", d.reason)
        }
        Event::AllowanceRenewed(d) => {
            let source = match (&d.source, &d.invoice_id) {
                (_, Some(invoice)) => format!("invoice {invoice}"),
                (RenewalSource::Anniversary, None) => "anniversary".to_string(),
                (RenewalSource::Billing, None) => "billing".to_string(),
            };
            format!(
                "allowance renewed to {} ({source}), {} forfeited, until {}",
                allowance(d.allowance),
                d.forfeited,
                instant(&d.allowance_period_end)
            )
        }
        Event::TopUpPurchased(d) => format!(
            "top-up {} of {}, expires {}",
            d.purchase_id,
            credits(d.credits),
            instant(&d.expires_at)
        ),
        Event::TopUpExpired(d) => format!(
            "top-up {} expired at {}, {} forfeited",
            d.purchase_id,
            instant(&d.expired_at),
            d.forfeited
        ),
        Event::TopUpRevoked(d) => format!(
            "top-up {} revoked: payment {} refunded ({}), {} unspent taken back, {} spent, {} on hold",
            d.purchase_id, d.payment_ref, d.reference, d.revoked, d.spent, d.held
        ),
        Event::GrantAdded(d) => format!(
            "grant {} of {} ({}), {}",
            d.grant_id,
            credits(d.credits),
            d.reason,
            d.expires_at
                .map_or_else(|| "never expires".to_string(), |at| format!("expires {}", instant(&at)))
        ),
        Event::GrantExpired(d) => format!(
            "grant {} expired at {}, {} forfeited",
            d.grant_id,
            instant(&d.expired_at),
            d.forfeited
        ),
        Event::TrialGranted(d) => match (d.kind, d.runs, d.window_s) {
            (TrialKind::Runs, Some(runs), _) => format!(
                "trial of {} granted: {} free",
                d.model,
                plural(u64::from(runs), "run", "runs")
            ),
            (TrialKind::Window, _, Some(window_s)) => format!(
                "trial of {} granted: free runs for {} from the first one",
                d.model,
                DurationS::from_secs(window_s)
            ),
            _ => format!("trial of {} granted", d.model),
        },
        Event::TrialRunConsumed(d) => format!(
            "free trial run {} of {} of {} used by {}",
            d.used, d.limit, d.model, d.run_ref
        ),
        Event::TrialWindowOpened(d) => format!(
            "trial window of {} opened, free runs until {}",
            d.model,
            instant(&d.closes_at)
        ),
        Event::TrialWindowClosed(d) => format!(
            "trial window of {} closed at {}",
            d.model,
            instant(&d.closed_at)
        ),
        Event::CreditsCharged(d) => format!(
            "{}, run {} node {}{}",
            run_text("charged", d.paid_by, d.cost, &d.model, d.price_unit, d.quantity),
            d.run_id,
            d.node_id,
            via(d.via)
        ),
        Event::ChargeRefunded(d) => {
            let charged = note.charge.map_or_else(String::new, |charge| {
                format!(" (version {}, {})", charge.version, credits(charge.cost))
            });
            format!(
                "refund of charge {}{charged}: {}, reason: {}",
                d.charge_id,
                returns(&d.returned, &d.forfeited),
                d.reason
            )
        }
        Event::HoldPlaced(d) => format!(
            "{}, run {} node {}{}, until {}",
            run_text("held", d.paid_by, d.cost, &d.model, d.price_unit, d.quantity),
            d.run_id,
            d.node_id,
            via(d.via),
            instant(&d.expires_at)
        ),
        Event::HoldCaptured(d) => {
            let charged = match &note.hold {
                Some(hold) => format!(
                    " (version {}) of {}: charged {} ({})",
                    hold.version,
                    hold.model,
                    credits(d.cost),
                    quantity(hold.price_unit, d.quantity)
                ),
                None => format!(": charged {}", credits(d.cost)),
            };
            format!(
                "captured hold {}{charged}, {}",
                d.hold_id,
                returns(&d.returned, &d.forfeited)
            )
        }
        Event::HoldReleased(d) => format!(
            "released hold {}{}: {}",
            d.hold_id,
            hold_origin(note),
            returns(&d.returned, &d.forfeited)
        ),
        Event::HoldExpired(d) => format!(
            "hold {}{} expired at {}: {}",
            d.hold_id,
            hold_origin(note),
            instant(&d.expired_at),
            returns(&d.returned, &d.forfeited)
        ),
        Event::AlertsConfigured(d) => {
            let thresholds: Vec<String> = d.low_balance.iter().map(ToString::to_string).collect();
            format!(
                "alerts set: low balance at [{}], receiver {}",
                thresholds.join(", "),
                d.url.as_deref().unwrap_or("none (delivery off)")
            )
        }
    }
}

/// " (version 7) of kling-2" for an open hold, so a resolution points at its placement.
fn hold_origin(note: &Note) -> String {
    note.hold.as_ref().map_or_else(String::new, |hold| {
        format!(" (version {}) of {}", hold.version, hold.model)
    })
}
