//! Explain in words: the one-line summary of each timeline entry and the table
//! `ledger explain` prints. The domain's explanation is data (a `Note` per entry); this is
//! the one place that turns it into English, shared by the HTTP API (whose JSON `summary`
//! field carries these lines) and the CLI.

use std::fmt::Write as _;

use ledger_domain::buckets;
use ledger_domain::catalog::{PriceUnit, Scope, Tier};
use ledger_domain::events::*;
use ledger_domain::explain::{Explanation, ModelAccessKind, Note};
use ledger_domain::state::VerificationStatus;
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

fn billing(billing: Billing) -> &'static str {
    match billing {
        Billing::Monthly => "monthly",
        Billing::Annual => "annual",
    }
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
                .map_or_else(String::new, |b| format!(" {}", billing(b))),
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

/// Column alignment in [`table`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Writes `rows` under `header` as aligned columns, two spaces apart, without trailing
/// spaces.
fn table(out: &mut String, header: &[&str], align: &[Align], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            let width = widths.get(index).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            match align.get(index).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The refresh dates and the usage-by-model table that follow the timeline.
fn usage_text(out: &mut String, e: &Explanation<String>, at: &str) {
    out.push('\n');
    let _ = writeln!(
        out,
        "allowance last refreshed {}, next refresh {}",
        e.last_refresh_at
            .map_or_else(|| "never".to_string(), |at| instant(&at)),
        e.next_refresh_at
            .map_or_else(|| "through billing".to_string(), |at| instant(&at)),
    );
    out.push('\n');
    if e.usage.rows.is_empty() {
        let _ = writeln!(out, "usage by model up to {at}: none");
        return;
    }
    let _ = writeln!(out, "usage by model up to {at} (net of refunds):");
    let mut rows: Vec<Vec<String>> = e
        .usage
        .rows
        .iter()
        .map(|row| {
            vec![
                row.key.clone(),
                row.runs.to_string(),
                row.credits.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "total".to_string(),
        e.usage.total.runs.to_string(),
        e.usage.total.credits.to_string(),
    ]);
    table(
        out,
        &["MODEL", "RUNS", "CREDITS"],
        &[Align::Left, Align::Right, Align::Right],
        &rows,
    );
}

fn live_text(live: bool) -> String {
    if live { "live" } else { "expired" }.to_string()
}

/// The table `ledger explain` prints without `--json`: the plan, the timeline with the
/// credits available after each event, the refresh dates and usage by model, the buckets as of `at`, what is due and the models
/// that could not run. Plain text, no colours.
pub fn render_text(explanation: &Explanation<String>) -> String {
    let e = explanation;
    let at = instant(&e.at);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "account {} as of {at} (version {})",
        e.account_id, e.version
    );
    if !e.exists {
        let _ = writeln!(out, "account {} does not exist as of {at}", e.account_id);
        return out;
    }
    let _ = writeln!(
        out,
        "tier {}  billing {}  scope {}  business verification {}",
        e.tier.map_or("-", Tier::as_str),
        e.billing.map_or("-", billing),
        e.scope.map_or("-", Scope::as_str),
        e.business_verification
            .map_or("-", VerificationStatus::as_str)
    );

    out.push('\n');
    let rows: Vec<Vec<String>> = e
        .timeline
        .iter()
        .map(|entry| {
            vec![
                entry.version.to_string(),
                instant(&entry.occurred_at),
                entry.type_name.to_string(),
                entry.summary.clone(),
                entry.after.available.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["VERSION", "OCCURRED AT", "TYPE", "SUMMARY", "AVAILABLE"],
        &[
            Align::Right,
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
        ],
        &rows,
    );
    usage_text(&mut out, e, &at);

    out.push('\n');
    let b = &e.balance;
    if b.unlimited {
        let _ = writeln!(
            out,
            "balance as of {at}: unlimited ({} available in top-ups and grants), {} held",
            b.total, b.held
        );
    } else {
        let _ = writeln!(
            out,
            "balance as of {at}: {} available, {} held",
            b.total, b.held
        );
    }
    let mut rows = Vec::new();
    if let Some(allowance) = &b.allowance {
        rows.push(vec![
            "allowance".to_string(),
            allowance.id.clone(),
            allowance.remaining.to_string(),
            instant(&allowance.period_end),
            live_text(allowance.live),
        ]);
    }
    for lot in &b.top_ups {
        rows.push(vec![
            "top_up".to_string(),
            lot.lot_id.clone(),
            lot.remaining.to_string(),
            lot.expires_at
                .map_or_else(|| "never".to_string(), |at| instant(&at)),
            live_text(lot.live),
        ]);
    }
    for lot in &b.grants {
        rows.push(vec![
            "grant".to_string(),
            lot.grant_id.clone(),
            lot.remaining.to_string(),
            lot.expires_at
                .map_or_else(|| "never".to_string(), |at| instant(&at)),
            live_text(lot.live),
        ]);
    }
    for hold in &b.holds {
        rows.push(vec![
            "held".to_string(),
            hold.hold_id.clone(),
            hold.amount.to_string(),
            instant(&hold.expires_at),
            if hold.live { "open" } else { "timed out" }.to_string(),
        ]);
    }
    table(
        &mut out,
        &["BUCKET", "ID", "REMAINING", "EXPIRES", "STATUS"],
        &[
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Left,
            Align::Left,
        ],
        &rows,
    );

    if !e.due.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "due by {at}, not yet recorded:");
        let rows: Vec<Vec<String>> = e
            .due
            .iter()
            .map(|due| vec![due.type_name.to_string(), due.summary.clone()])
            .collect();
        table(
            &mut out,
            &["TYPE", "SUMMARY"],
            &[Align::Left, Align::Left],
            &rows,
        );
    }

    out.push('\n');
    let blocked: Vec<Vec<String>> = e
        .models
        .iter()
        .filter(|model| model.access == ModelAccessKind::Blocked)
        .map(|model| {
            vec![
                model.model.clone(),
                model.min_tier.to_string(),
                model.reason_code.unwrap_or("-").to_string(),
                model.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if blocked.is_empty() {
        let _ = writeln!(out, "blocked models as of {at}: none");
    } else {
        let _ = writeln!(out, "blocked models as of {at}:");
        table(
            &mut out,
            &["MODEL", "MIN TIER", "CODE", "REASON"],
            &[Align::Left, Align::Left, Align::Left, Align::Left],
            &blocked,
        );
    }
    out
}
