//! Housekeeping: the one list of what the passage of time does to an account (anniversary
//! refreshes, hold timeouts, lot expiries, window closes), used by `decide` to record what
//! fell due before a command and by the scheduler to know when to tick.

use crate::catalog::Tier;
use crate::events::*;
use crate::state::*;
use crate::time::{anniversary_period, Instant};

/// When the scheduler next has something to do for this account, as seen at `now`: a
/// refresh, an expiry, a hold timeout or a window close. `None` when nothing is pending. A
/// tick at that instant writes the due events; ticking earlier writes nothing. Takes the
/// three view rows, so the scheduler can ask the views without assembling a `Core`.
pub fn next_due_at(
    plan: &PlanState,
    balance: &Balance,
    trials: &Trials,
    now: Instant,
) -> Option<Instant> {
    due_items(plan, balance, trials, now)
        .map(|(at, _)| at)
        .min()
}

/// Everything due at or before `now`, in the order it fell due, and the core after it
/// (`None` when nothing was due). `version` is the stream version the core is at. Public so
/// that explain's history settles each point exactly as a command at that instant would.
pub fn housekeeping(core: &Core, version: u64, now: Instant) -> (Vec<Event>, Option<Core>) {
    let mut events = Vec::new();
    let mut scratch: Option<Core> = None;
    // Each step removes one due item; an anniversary refresh moves the period past `now`.
    let bound =
        core.balance.open_holds.len() + core.balance.buckets.len() + core.trials.models.len() + 2;
    for _ in 0..bound {
        let current = scratch.as_ref().unwrap_or(core);
        let Some(event) = next_due(current, now) else {
            break;
        };
        let next = scratch.get_or_insert_with(|| core.clone());
        evolve_core(next, &event, version + events.len() as u64 + 1);
        events.push(event);
    }
    (events, scratch)
}

/// When the allowance was last reset and when the scheduler will refresh it next, as seen at
/// `now` (SPEC section 13). `next_refresh_at` is `None` where billing renews (monthly paid
/// plans, an annual plan's last month) and when unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RefreshDates {
    /// The start of the current allowance period: the instant its refresh, renewal or reset
    /// took effect for the period (a billing renewal that arrives late counts from the period
    /// it names, like the allowance itself).
    pub last_refresh_at: Option<Instant>,
    pub next_refresh_at: Option<Instant>,
}

/// The refresh dates of an account at `now`. A refresh already due but not yet written counts
/// as done at `now`, as the next command would record it first: the dates never point into
/// the past.
pub fn refresh_dates(plan: &PlanState, balance: &Balance, now: Instant) -> RefreshDates {
    let Some((period_start, _)) = balance.allowance().and_then(|bucket| bucket.period()) else {
        return RefreshDates::default();
    };
    // The scheduler refreshes inside an annual plan's paid year only; its end is billing's.
    let scheduled = |at: Instant| plan.tier == Tier::Free || at < plan.subscription_end;
    match refresh_due_at(plan, balance, now) {
        Some(due_at) if due_at <= now => {
            let (start, end) = anniversary_period(plan.anchor_at, now);
            let end = if plan.tier == Tier::Free {
                end
            } else {
                end.min(plan.subscription_end)
            };
            RefreshDates {
                last_refresh_at: Some(start),
                next_refresh_at: Some(end).filter(|at| scheduled(*at)),
            }
        }
        next => RefreshDates {
            last_refresh_at: Some(period_start),
            next_refresh_at: next.filter(|at| scheduled(*at)),
        },
    }
}

/// Something the passage of time will do to an account, and what it concerns.
enum Due<'a> {
    Refresh,
    Hold(&'a Hold),
    /// A top-up lot or a grant reaching its expiry.
    Expiry(&'a Bucket),
    WindowClose(&'a str),
}

/// When the allowance of a free or annual account is refreshed on its anniversary, if it is
/// (as seen at `now`): annual plans refresh inside the paid year only; after it, billing renews.
fn refresh_due_at(plan: &PlanState, balance: &Balance, now: Instant) -> Option<Instant> {
    let bucket = balance.allowance()?;
    let scheduled = plan.tier == Tier::Free || plan.billing == Some(Billing::Annual);
    let in_paid_year = plan.tier == Tier::Free || now < plan.subscription_end;
    (scheduled && in_paid_year && !plan.unlimited && plan.plan_allowance.is_some())
        .then_some(bucket.expires_at?)
}

/// Every pending item of housekeeping and the instant it falls due, in the order ties are
/// taken: refresh, hold timeouts, top-up and grant expiries, window closes.
fn due_items<'a>(
    plan: &'a PlanState,
    balance: &'a Balance,
    trials: &'a Trials,
    now: Instant,
) -> impl Iterator<Item = (Instant, Due<'a>)> {
    let refresh = refresh_due_at(plan, balance, now).map(|at| (at, Due::Refresh));
    let holds = balance
        .open_holds
        .values()
        .map(|hold| (hold.placed.expires_at, Due::Hold(hold)));
    let expiries = balance
        .lot_expiries()
        .map(|(at, bucket)| (at, Due::Expiry(bucket)));
    let windows = trials.models.iter().filter_map(|(model, trial)| {
        let closes_at = trial.closes_at.filter(|_| !trial.closed)?;
        Some((closes_at, Due::WindowClose(model.as_str())))
    });
    refresh
        .into_iter()
        .chain(holds)
        .chain(expiries)
        .chain(windows)
}

/// The event of the earliest item due at or before `now`.
fn next_due(core: &Core, now: Instant) -> Option<Event> {
    let (at, due) = due_items(&core.plan, &core.balance, &core.trials, now)
        .filter(|(at, _)| *at <= now)
        .min_by_key(|(at, _)| *at)?;
    let event = match due {
        Due::Refresh => {
            let bucket = core.balance.allowance()?;
            let plan = &core.plan;
            let (start, end) = anniversary_period(plan.anchor_at, now);
            let (period_start, period_end, allowance_period_end) = if plan.tier == Tier::Free {
                (start, end, end)
            } else {
                let paid_end = plan.subscription_end;
                (plan.subscription_start, paid_end, end.min(paid_end))
            };
            AllowanceRenewed {
                source: RenewalSource::Anniversary,
                invoice_id: None,
                period_start,
                period_end,
                allowance_period_start: start,
                allowance_period_end,
                allowance: plan.plan_allowance,
                forfeited: bucket.remaining,
            }
            .into()
        }
        Due::Hold(hold) => {
            let placed = &hold.placed;
            let (returned, forfeited) =
                core.balance
                    .classify_returns(&placed.earmarked, at, hold.version);
            HoldExpired {
                hold_id: placed.hold_id.clone(),
                expired_at: at,
                returned,
                forfeited,
            }
            .into()
        }
        Due::Expiry(bucket) => bucket.expired(at)?,
        Due::WindowClose(model) => TrialWindowClosed {
            model: model.to_string(),
            closed_at: at,
        }
        .into(),
    };
    Some(event)
}
