//! `decide`: state + command + time → events or a rejection. Every rule of SPEC sections 2
//! to 7 is enforced here and nowhere else; `evolve` only folds what this produced.

use chrono::{DateTime, Utc};

use crate::catalog::{Catalog, Model, PriceUnit, Tier, TrialTerms};
use crate::command::*;
use crate::credits::Credits;
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::*;
use crate::time::{add_months, anniversary_period, DurationS, Instant};

/// Holds live 15 minutes unless the caller says otherwise.
pub const HOLD_TTL_DEFAULT: DurationS = DurationS::from_secs(15 * 60);
/// And never longer than a day.
pub const HOLD_TTL_MAX: DurationS = DurationS::from_secs(24 * 60 * 60);
/// Caller-chosen ids and references are at most this long.
pub const ID_LEN_MAX: usize = 128;
/// Free text (reasons, company names) is at most this long.
pub const TEXT_LEN_MAX: usize = 500;

/// What a command decided: the events to append (none for an idempotent retry) and the
/// answer to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub reply: Reply,
    /// An idempotent retry: the first answer again, nothing to write.
    pub replayed: bool,
    /// For a replay, the stream version of the event whose answer it repeats: the answer is
    /// the account as of that version, at that event's time and position.
    pub replay_of: Option<u64>,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer with the account summary; `created` for 201.
    Summary {
        created: bool,
    },
    /// The verification was submitted (202) or decided (200).
    Verification {
        submitted: bool,
    },
    Charged(ChargeReceipt),
    Refunded(RefundReceipt),
    HoldPlaced(HoldReceipt),
    HoldResolved(HoldResolutionReceipt),
    /// Housekeeping only.
    Ticked,
}

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
    pub status: &'static str,
    pub cost: Credits,
    pub drawn_from: Vec<Part>,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
    pub balance: Option<Credits>,
}

impl Decision {
    fn new(events: Vec<Event>, reply: Reply) -> Decision {
        Decision {
            events,
            reply,
            replayed: false,
            replay_of: None,
        }
    }

    fn replay(reply: Reply, version: u64) -> Decision {
        Decision {
            events: Vec::new(),
            reply,
            replayed: true,
            replay_of: Some(version),
        }
    }
}

/// Decides `command` on `account` at `now`.
pub fn decide(
    account: &Account,
    catalog: &Catalog,
    command: &Command,
    now: Instant,
) -> Result<Decision, Rejection> {
    let Some(stored) = account.core.as_ref() else {
        return match command {
            Command::OpenAccount => open_account(account, catalog, now),
            _ => Err(Rejection::AccountNotFound {
                account_id: account.account_id.clone(),
            }),
        };
    };
    // Decisions use the command's time: whatever fell due before it happens first, so a
    // lot past its expiry is unusable now even if the scheduler has not recorded it yet.
    let (housekeeping, scratch) = housekeeping(stored, account.version, now);
    let ctx = Ctx {
        account,
        stored,
        core: scratch.as_ref().unwrap_or(stored),
        catalog,
        now,
    };
    let mut decision = match command {
        Command::OpenAccount => Err(Rejection::AccountExists {
            account_id: account.account_id.clone(),
        }),
        Command::Tick => Ok(Decision::new(Vec::new(), Reply::Ticked)),
        Command::ChangeSubscription(c) => ctx.change_subscription(c),
        Command::RenewAllowance(c) => ctx.renew_allowance(c),
        Command::PurchaseTopUp(c) => ctx.purchase_top_up(c),
        Command::AddGrant(c) => ctx.add_grant(c),
        Command::SubmitBusinessVerification(c) => ctx.submit_verification(c),
        Command::ApproveBusinessVerification => ctx.approve_verification(),
        Command::RejectBusinessVerification { reason } => ctx.reject_verification(reason),
        Command::Charge(c) => ctx.charge(c),
        Command::RefundCharge { charge_id, reason } => ctx.refund(charge_id, reason),
        Command::PlaceHold(c) => ctx.place_hold(c),
        Command::CaptureHold(c) => ctx.capture_hold(c),
        Command::ReleaseHold { hold_id } => ctx.release_hold(hold_id),
    }?;
    if !decision.replayed && !housekeeping.is_empty() {
        let mut events = housekeeping;
        events.append(&mut decision.events);
        decision.events = events;
    }
    Ok(decision)
}

/// Whether `account_id` is 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_account_id(account_id: &str) -> bool {
    (1..=64).contains(&account_id.len())
        && account_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn open_account(account: &Account, catalog: &Catalog, now: Instant) -> Result<Decision, Rejection> {
    if !valid_account_id(&account.account_id) {
        return Err(Rejection::invalid(
            "account_id must be 1 to 64 characters of letters, digits, '_' and '-'",
        ));
    }
    let plan = catalog.plan(Tier::Free);
    let allowance = plan
        .monthly_allowance
        .ok_or_else(|| Rejection::invalid("the catalog's free plan has no allowance"))?;
    let event = AccountOpened {
        account_id: account.account_id.clone(),
        tier: Tier::Free,
        scope: plan.scope,
        period_start: now,
        period_end: add_months(now, 1),
        allowance,
    };
    Ok(Decision::new(
        vec![event.into()],
        Reply::Summary { created: true },
    ))
}

fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > ID_LEN_MAX || value.chars().any(char::is_control) {
        return Err(Rejection::invalid(format!(
            "{field} must be 1 to {ID_LEN_MAX} characters without control characters"
        )));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), Rejection> {
    if value.trim().is_empty() || value.len() > TEXT_LEN_MAX {
        return Err(Rejection::invalid(format!(
            "{field} must be 1 to {TEXT_LEN_MAX} characters"
        )));
    }
    Ok(())
}

fn check_amount(field: &str, amount: u64) -> Result<Credits, Rejection> {
    if amount == 0 || amount > Credits::MAX_COMMAND.get() {
        return Err(Rejection::invalid(format!(
            "{field} must be between 1 and {}",
            Credits::MAX_COMMAND
        )));
    }
    Ok(Credits::new(amount))
}

fn check_period(start: Instant, end: Instant) -> Result<(), Rejection> {
    if end <= start {
        return Err(Rejection::invalid("period_end must be after period_start"));
    }
    Ok(())
}

/// The priced quantity of a run of `model`: the request must carry exactly the quantity its
/// price counts, in range. A wrong or missing quantity is refused, never guessed.
pub fn priced_quantity(model: &Model, quantity: Quantity) -> Result<u32, Rejection> {
    let (wanted, images, seconds) = match model.price.unit {
        PriceUnit::PerImage => ("images", quantity.images, quantity.seconds),
        PriceUnit::PerSecond => ("seconds", quantity.seconds, quantity.images),
        PriceUnit::PerCall => {
            if quantity.images.is_some() || quantity.seconds.is_some() {
                return Err(Rejection::invalid(format!(
                    "model {} is priced per call: send neither images nor seconds",
                    model.id
                )));
            }
            return Ok(1);
        }
    };
    if seconds.is_some() {
        let other = if wanted == "images" {
            "seconds"
        } else {
            "images"
        };
        return Err(Rejection::invalid(format!(
            "model {} is priced per {}: {other} is not accepted",
            model.id,
            &wanted[..wanted.len() - 1]
        )));
    }
    let max = if wanted == "images" { 100 } else { 3_600 };
    match images {
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

/// How a run of a model would be paid, if it may run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// From credits (or unlimited).
    Paid,
    /// Free, through the model's trial.
    Trial,
}

/// Model access, in the order of SPEC section 4: tier gating unless a trial applies, then
/// the trial's own limits.
pub fn check_access(
    tier: Tier,
    trial: Option<&Trial>,
    model: &Model,
    now: Instant,
) -> Result<Access, Rejection> {
    if tier >= model.min_tier {
        return Ok(Access::Paid);
    }
    let terms = match model.free_trial {
        Some(terms) if tier == Tier::Free => terms,
        _ => {
            return Err(Rejection::ModelTierRequired {
                model: model.id.clone(),
                required: model.min_tier,
                tier,
            })
        }
    };
    match (terms, trial) {
        (TrialTerms::Runs(_), Some(trial)) if trial.used >= trial.limit => {
            Err(Rejection::TrialExhausted {
                model: model.id.clone(),
                limit: trial.limit,
            })
        }
        (
            TrialTerms::Window(_),
            Some(Trial {
                closes_at: Some(closes_at),
                ..
            }),
        ) if now >= *closes_at => Err(Rejection::TrialExpired {
            model: model.id.clone(),
            closed_at: *closes_at,
        }),
        _ => Ok(Access::Trial),
    }
}

/// The events that record one free trial run: the grant before its first use, then the
/// count or the window.
fn trial_run_events(
    trial: Option<&Trial>,
    model: &Model,
    run_ref: &str,
    now: Instant,
) -> Vec<Event> {
    let mut events = Vec::with_capacity(2);
    let Some(terms) = model.free_trial else {
        return events;
    };
    if trial.is_none() {
        events.push(
            TrialGranted {
                model: model.id.clone(),
                kind: match terms {
                    TrialTerms::Runs(_) => TrialKind::Runs,
                    TrialTerms::Window(_) => TrialKind::Window,
                },
                runs: match terms {
                    TrialTerms::Runs(runs) => Some(runs),
                    TrialTerms::Window(_) => None,
                },
                window_s: match terms {
                    TrialTerms::Runs(_) => None,
                    TrialTerms::Window(window) => Some(window.as_secs()),
                },
            }
            .into(),
        );
    }
    match terms {
        TrialTerms::Runs(runs) => {
            let (used, limit) = trial.map_or((0, runs), |trial| (trial.used, trial.limit));
            events.push(
                TrialRunConsumed {
                    model: model.id.clone(),
                    run_ref: run_ref.to_string(),
                    used: used + 1,
                    limit,
                }
                .into(),
            );
        }
        TrialTerms::Window(window) => {
            let opened = trial.is_some_and(|trial| trial.opened_at.is_some());
            if !opened {
                // The granted window length wins over today's catalog.
                let window_s = trial.map_or(window.as_secs(), |trial| trial.window_s);
                let closes_at = DurationS::from_secs(window_s)
                    .after(now)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                events.push(
                    TrialWindowOpened {
                        model: model.id.clone(),
                        opened_at: now,
                        closes_at,
                    }
                    .into(),
                );
            }
        }
    }
    events
}

fn never_expires() -> Instant {
    DateTime::<Utc>::MAX_UTC
}

/// Picks the parts that pay `cost` at `now`, in burn order: soonest expiry first; ties go
/// allowance, then grants, then top-ups, then older first. `Err` carries what is available.
pub fn draw(core: &Core, cost: Credits, now: Instant) -> Result<Vec<Part>, Credits> {
    if cost.is_zero() {
        return Ok(Vec::new());
    }
    let mut candidates: Vec<(Instant, BucketKind, usize, &str, Credits)> =
        Vec::with_capacity(1 + core.balance.grants.len() + core.balance.top_ups.len());
    if let Some(bucket) = core
        .balance
        .allowance
        .as_ref()
        .filter(|b| now < b.period_end && !b.remaining.is_zero())
    {
        candidates.push((
            bucket.period_end,
            BucketKind::Allowance,
            0,
            &bucket.id,
            bucket.remaining,
        ));
    }
    for (kind, lots) in [
        (BucketKind::Grant, &core.balance.grants),
        (BucketKind::TopUp, &core.balance.top_ups),
    ] {
        for (index, lot) in lots.iter().enumerate() {
            if lot.is_live(now) && !lot.remaining.is_zero() {
                let expires_at = lot.expires_at.unwrap_or_else(never_expires);
                candidates.push((expires_at, kind, index, &lot.id, lot.remaining));
            }
        }
    }
    candidates.sort_unstable_by_key(|(expires_at, kind, index, _, _)| (*expires_at, *kind, *index));
    let mut due = cost;
    let mut parts = Vec::with_capacity(candidates.len().min(4));
    for (_, kind, _, id, remaining) in candidates {
        let amount = due.min(remaining);
        parts.push(Part {
            bucket: kind,
            id: id.to_string(),
            amount,
        });
        due = due.checked_sub(amount).unwrap_or(Credits::ZERO);
        if due.is_zero() {
            return Ok(parts);
        }
    }
    Err(core.available(now))
}

/// Splits parts taken by the stream's `taken_at_version`-th event and coming back at `at`
/// into those whose bucket is still there and live, and those forfeited because it expired
/// or was reset since.
pub fn classify_returns(
    core: &Core,
    parts: &[Part],
    at: Instant,
    taken_at_version: u64,
) -> (Vec<Part>, Vec<Part>) {
    let mut returned = Vec::new();
    let mut forfeited = Vec::new();
    for part in parts.iter().filter(|part| !part.amount.is_zero()) {
        let live = match part.bucket {
            BucketKind::Unlimited => continue,
            BucketKind::Allowance => core.balance.allowance.as_ref().is_some_and(|bucket| {
                bucket.id == part.id
                    && at < bucket.period_end
                    && bucket.since_version < taken_at_version
            }),
            BucketKind::TopUp => core
                .balance
                .top_ups
                .iter()
                .any(|lot| lot.id == part.id && lot.is_live(at)),
            BucketKind::Grant => core
                .balance
                .grants
                .iter()
                .any(|lot| lot.id == part.id && lot.is_live(at)),
        };
        if live {
            returned.push(part.clone());
        } else {
            forfeited.push(part.clone());
        }
    }
    (returned, forfeited)
}

fn sum(parts: &[Part]) -> Credits {
    parts
        .iter()
        .filter(|part| part.bucket != BucketKind::Unlimited)
        .map(|part| part.amount)
        .sum()
}

fn plus(balance: Credits, amount: Credits) -> Credits {
    balance
        .checked_add(amount)
        .unwrap_or(Credits::new(u64::MAX))
}

/// Everything due at or before `now`, in the order it fell due, and the core after it.
fn housekeeping(core: &Core, version: u64, now: Instant) -> (Vec<Event>, Option<Core>) {
    let mut events = Vec::new();
    let mut scratch: Option<Core> = None;
    // Each step removes one due item; an anniversary refresh moves the period past `now`.
    let bound = core.balance.open_holds.len()
        + core.balance.top_ups.len()
        + core.balance.grants.len()
        + core.trials.models.len()
        + 2;
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

/// Something the passage of time will do to an account, and what it concerns.
enum Due<'a> {
    Refresh,
    Hold(&'a Hold),
    TopUp(&'a Lot),
    Grant(&'a Lot),
    WindowClose(&'a str),
}

/// When the allowance of a free or annual account is refreshed on its anniversary, if it is
/// (as seen at `now`): annual plans refresh inside the paid year only; after it, billing renews.
fn refresh_due_at(plan: &PlanState, balance: &Balance, now: Instant) -> Option<Instant> {
    let bucket = balance.allowance.as_ref()?;
    let scheduled = plan.tier == Tier::Free || plan.billing == Some(Billing::Annual);
    let in_paid_year = plan.tier == Tier::Free || now < plan.subscription_end;
    (scheduled && in_paid_year && !plan.unlimited && plan.plan_allowance.is_some())
        .then_some(bucket.period_end)
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
    let top_ups = balance
        .top_ups
        .iter()
        .filter_map(|lot| lot.expires_at.map(|at| (at, Due::TopUp(lot))));
    let grants = balance
        .grants
        .iter()
        .filter_map(|lot| lot.expires_at.map(|at| (at, Due::Grant(lot))));
    let windows = trials.models.iter().filter_map(|(model, trial)| {
        let closes_at = trial.closes_at.filter(|_| !trial.closed)?;
        Some((closes_at, Due::WindowClose(model.as_str())))
    });
    refresh
        .into_iter()
        .chain(holds)
        .chain(top_ups)
        .chain(grants)
        .chain(windows)
}

/// The event of the earliest item due at or before `now`.
fn next_due(core: &Core, now: Instant) -> Option<Event> {
    let (at, due) = due_items(&core.plan, &core.balance, &core.trials, now)
        .filter(|(at, _)| *at <= now)
        .min_by_key(|(at, _)| *at)?;
    let event = match due {
        Due::Refresh => {
            let bucket = core.balance.allowance.as_ref()?;
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
            let (returned, forfeited) = classify_returns(core, &placed.earmarked, at, hold.version);
            HoldExpired {
                hold_id: placed.hold_id.clone(),
                expired_at: at,
                returned,
                forfeited,
            }
            .into()
        }
        Due::TopUp(lot) => TopUpExpired {
            purchase_id: lot.id.clone(),
            expired_at: at,
            forfeited: lot.remaining,
        }
        .into(),
        Due::Grant(lot) => GrantExpired {
            grant_id: lot.id.clone(),
            expired_at: at,
            forfeited: lot.remaining,
        }
        .into(),
        Due::WindowClose(model) => TrialWindowClosed {
            model: model.to_string(),
            closed_at: at,
        }
        .into(),
    };
    Some(event)
}

struct Ctx<'a> {
    account: &'a Account,
    /// The core as stored, before housekeeping.
    stored: &'a Core,
    /// The core after housekeeping due at `now`.
    core: &'a Core,
    catalog: &'a Catalog,
    now: Instant,
}

fn charge_receipt(charge: &CreditsCharged) -> Reply {
    Reply::Charged(ChargeReceipt {
        charge_id: charge.charge_id.clone(),
        cost: charge.cost,
        paid_by: charge.paid_by,
        drawn_from: charge.drawn_from.clone(),
        balance: charge.balance_after,
    })
}

fn hold_receipt(placed: &HoldPlaced) -> Reply {
    Reply::HoldPlaced(HoldReceipt {
        hold_id: placed.hold_id.clone(),
        cost: placed.cost,
        paid_by: placed.paid_by,
        earmarked: placed.earmarked.clone(),
        expires_at: placed.expires_at,
        balance: placed.balance_after,
    })
}

fn resolution_receipt(resolution: &HoldResolution) -> Reply {
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

/// How a paid or free run settles: who pays, what it costs, which parts it takes, and the
/// balance after.
struct Settlement {
    paid_by: PaidBy,
    cost: Credits,
    parts: Vec<Part>,
    balance_after: Option<Credits>,
    events: Vec<Event>,
}

impl Ctx<'_> {
    fn balance(&self) -> Option<Credits> {
        (!self.core.plan.unlimited).then(|| self.core.available(self.now))
    }

    fn summary_replay(&self, same: bool, id: &str, version: u64) -> Result<Decision, Rejection> {
        if same {
            Ok(Decision::replay(Reply::Summary { created: false }, version))
        } else {
            Err(Rejection::IdempotencyConflict { id: id.to_string() })
        }
    }

    /// The allowance a plan gives per refresh, with the annual bonus where it applies.
    fn plan_allowance(
        &self,
        tier: Tier,
        billing: Option<Billing>,
        custom: Option<Credits>,
    ) -> Result<Option<Credits>, Rejection> {
        let base = match (tier, custom) {
            (Tier::Enterprise, Some(custom)) => return Ok(Some(custom)),
            _ => self.catalog.plan(tier).monthly_allowance,
        };
        match (base, billing) {
            (Some(amount), Some(Billing::Annual)) => amount
                .checked_percent(100 + u64::from(self.catalog.annual_bonus_percent))
                .map(Some)
                .ok_or_else(|| Rejection::invalid("allowance overflows")),
            (base, _) => Ok(base),
        }
    }

    fn change_subscription(&self, c: &ChangeSubscription) -> Result<Decision, Rejection> {
        check_id("reference", &c.reference)?;
        if let Some(recorded) = self.account.records.references.get(&c.reference) {
            let previous = &recorded.event;
            let same = previous.to == c.tier
                && previous.billing == c.billing
                && previous.period_start == c.period_start
                && previous.period_end == c.period_end
                && (c.tier != Tier::Enterprise || previous.allowance == c.allowance);
            return self.summary_replay(same, &c.reference, recorded.version);
        }
        check_period(c.period_start, c.period_end)?;
        if c.period_end <= self.now {
            return Err(Rejection::invalid("period_end is already past"));
        }
        match (c.tier, c.billing) {
            (Tier::Free, Some(_)) => {
                return Err(Rejection::invalid(
                    "the free tier has no billing: send billing null",
                ))
            }
            (Tier::Pro | Tier::Business | Tier::Enterprise, None) => {
                return Err(Rejection::invalid(
                    "paid tiers need billing \"monthly\" or \"annual\"",
                ))
            }
            _ => {}
        }
        let custom = match c.allowance {
            Some(_) if c.tier != Tier::Enterprise => {
                return Err(Rejection::invalid(
                    "only enterprise may carry a custom allowance",
                ))
            }
            Some(amount) => Some(check_amount("allowance", amount.get())?),
            None => None,
        };
        if self.catalog.plan(c.tier).requires_verification
            && !matches!(self.core.plan.verification, Verification::Approved(_))
        {
            return Err(Rejection::BusinessVerificationRequired {
                status: self.core.plan.verification.status(),
            });
        }
        let allowance = self.plan_allowance(c.tier, c.billing, custom)?;
        let (allowance_period_start, allowance_period_end) =
            subscription_window(c.tier, c.billing, c.period_start, c.period_end, self.now);
        let event = TierChanged {
            from: self.core.plan.tier,
            to: c.tier,
            billing: c.billing,
            scope: self.catalog.plan(c.tier).scope,
            reference: c.reference.clone(),
            period_start: c.period_start,
            period_end: c.period_end,
            allowance_period_start,
            allowance_period_end,
            allowance,
            forfeited: self
                .core
                .balance
                .allowance
                .as_ref()
                .map_or(Credits::ZERO, |b| b.remaining),
        };
        Ok(Decision::new(
            vec![event.into()],
            Reply::Summary { created: false },
        ))
    }

    fn renew_allowance(&self, c: &RenewAllowance) -> Result<Decision, Rejection> {
        check_id("invoice_id", &c.invoice_id)?;
        if let Some(recorded) = self.account.records.invoices.get(&c.invoice_id) {
            let previous = &recorded.event;
            let same =
                previous.period_start == c.period_start && previous.period_end == c.period_end;
            return self.summary_replay(same, &c.invoice_id, recorded.version);
        }
        check_period(c.period_start, c.period_end)?;
        if self.core.plan.tier == Tier::Free {
            return Err(Rejection::invalid(
                "free accounts refresh on their anniversary, not on invoices",
            ));
        }
        if c.period_start <= self.core.plan.subscription_start {
            return Err(Rejection::StaleRenewal {
                period_start: c.period_start,
                current_period_start: self.core.plan.subscription_start,
            });
        }
        // A late annual renewal lands in the window that contains its arrival, as a
        // backdated subscription does.
        let (allowance_period_start, allowance_period_end) = subscription_window(
            self.core.plan.tier,
            self.core.plan.billing,
            c.period_start,
            c.period_end,
            self.now,
        );
        let event = AllowanceRenewed {
            source: RenewalSource::Billing,
            invoice_id: Some(c.invoice_id.clone()),
            period_start: c.period_start,
            period_end: c.period_end,
            allowance_period_start,
            allowance_period_end,
            allowance: self.core.plan.plan_allowance,
            forfeited: self
                .core
                .balance
                .allowance
                .as_ref()
                .map_or(Credits::ZERO, |b| b.remaining),
        };
        Ok(Decision::new(
            vec![event.into()],
            Reply::Summary { created: false },
        ))
    }

    fn purchase_top_up(&self, c: &PurchaseTopUp) -> Result<Decision, Rejection> {
        check_id("purchase_id", &c.purchase_id)?;
        if let Some(recorded) = self.account.records.purchases.get(&c.purchase_id) {
            let previous = &recorded.event;
            // Compared as sent: leaving out an `expires_at` that was sent, or sending one
            // that was defaulted, is a different body. v1 events did not record which it was.
            let same_expiry = match (previous.expires_at_requested, c.expires_at) {
                (Some(true), Some(at)) | (None, Some(at)) => at == previous.expires_at,
                (Some(true), None) | (Some(false), Some(_)) => false,
                (Some(false), None) | (None, None) => true,
            };
            let same = previous.credits.get() == c.credits && same_expiry;
            return self
                .summary_replay(same, &c.purchase_id, recorded.version)
                .map(|mut d| {
                    d.reply = Reply::Summary { created: true };
                    d
                });
        }
        let credits = check_amount("credits", c.credits)?;
        let expires_at = match c.expires_at {
            Some(at) if at <= self.now => {
                return Err(Rejection::invalid("expires_at must be in the future"))
            }
            Some(at) => at,
            None => self
                .catalog
                .top_up_expiry
                .after(self.now)
                .ok_or_else(|| Rejection::invalid("expiry out of range"))?,
        };
        let event = TopUpPurchased {
            purchase_id: c.purchase_id.clone(),
            credits,
            expires_at,
            expires_at_requested: Some(c.expires_at.is_some()),
        };
        Ok(Decision::new(
            vec![event.into()],
            Reply::Summary { created: true },
        ))
    }

    fn add_grant(&self, c: &AddGrant) -> Result<Decision, Rejection> {
        check_id("grant_id", &c.grant_id)?;
        if let Some(recorded) = self.account.records.grants.get(&c.grant_id) {
            let previous = &recorded.event;
            let same = previous.credits.get() == c.credits
                && previous.reason == c.reason
                && previous.expires_at == c.expires_at;
            return self
                .summary_replay(same, &c.grant_id, recorded.version)
                .map(|mut d| {
                    d.reply = Reply::Summary { created: true };
                    d
                });
        }
        let credits = check_amount("credits", c.credits)?;
        check_text("reason", &c.reason)?;
        if c.expires_at.is_some_and(|at| at <= self.now) {
            return Err(Rejection::invalid("expires_at must be in the future"));
        }
        let event = GrantAdded {
            grant_id: c.grant_id.clone(),
            credits,
            reason: c.reason.clone(),
            expires_at: c.expires_at,
        };
        Ok(Decision::new(
            vec![event.into()],
            Reply::Summary { created: true },
        ))
    }

    fn submit_verification(&self, c: &SubmitBusinessVerification) -> Result<Decision, Rejection> {
        check_text("company_name", &c.company_name)?;
        check_text("country", &c.country)?;
        check_text("registration_number", &c.registration_number)?;
        let submission = BusinessVerificationSubmitted {
            company_name: c.company_name.clone(),
            country: c.country.clone(),
            registration_number: c.registration_number.clone(),
        };
        match &self.core.plan.verification {
            Verification::Pending(current) | Verification::Approved(current) => {
                if *current == submission {
                    Ok(Decision::replay(
                        Reply::Verification { submitted: true },
                        self.account.records.verification_submitted_version,
                    ))
                } else {
                    Err(Rejection::IdempotencyConflict {
                        id: format!(
                            "business-verification ({})",
                            self.core.plan.verification.status()
                        ),
                    })
                }
            }
            Verification::None | Verification::Rejected(..) => Ok(Decision::new(
                vec![submission.into()],
                Reply::Verification { submitted: true },
            )),
        }
    }

    fn approve_verification(&self) -> Result<Decision, Rejection> {
        match &self.core.plan.verification {
            Verification::Pending(_) => Ok(Decision::new(
                vec![BusinessVerificationApproved {}.into()],
                Reply::Verification { submitted: false },
            )),
            Verification::Approved(_) => Ok(Decision::replay(
                Reply::Verification { submitted: false },
                self.account.records.verification_decided_version,
            )),
            Verification::Rejected(..) => Err(Rejection::IdempotencyConflict {
                id: "business-verification (rejected)".into(),
            }),
            Verification::None => Err(Rejection::NotFound {
                what: "business verification",
                id: self.account.account_id.clone(),
            }),
        }
    }

    fn reject_verification(&self, reason: &str) -> Result<Decision, Rejection> {
        check_text("reason", reason)?;
        match &self.core.plan.verification {
            Verification::Pending(_) => Ok(Decision::new(
                vec![BusinessVerificationRejected {
                    reason: reason.to_string(),
                }
                .into()],
                Reply::Verification { submitted: false },
            )),
            Verification::Rejected(_, previous) if previous == reason => Ok(Decision::replay(
                Reply::Verification { submitted: false },
                self.account.records.verification_decided_version,
            )),
            Verification::Rejected(..) | Verification::Approved(_) => {
                Err(Rejection::IdempotencyConflict {
                    id: format!(
                        "business-verification ({})",
                        self.core.plan.verification.status()
                    ),
                })
            }
            Verification::None => Err(Rejection::NotFound {
                what: "business verification",
                id: self.account.account_id.clone(),
            }),
        }
    }

    /// Checks a run of `model_id` and settles what it would take, for a charge or a hold.
    fn settle(
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
                parts: vec![Part {
                    bucket: BucketKind::Unlimited,
                    id: "unlimited".into(),
                    amount: cost,
                }],
                balance_after: None,
                events: Vec::new(),
            },
            Access::Paid => {
                let parts = draw(self.core, cost, self.now).map_err(|available| {
                    Rejection::InsufficientCredits {
                        required: cost,
                        available,
                    }
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

    fn charge(&self, c: &Charge) -> Result<Decision, Rejection> {
        check_id("charge_id", &c.charge_id)?;
        if let Some(record) = self.account.records.charges.get(&c.charge_id) {
            let recorded = &record.charge;
            let same = recorded.run_id == c.run_id
                && recorded.node_id == c.node_id
                && recorded.model == c.model
                && recorded.via == c.via
                && request_quantity(recorded.price_unit, recorded.quantity)
                    == (c.quantity.images, c.quantity.seconds);
            return if same {
                Ok(Decision::replay(charge_receipt(recorded), record.version))
            } else {
                Err(Rejection::IdempotencyConflict {
                    id: c.charge_id.clone(),
                })
            };
        }
        check_id("run_id", &c.run_id)?;
        check_id("node_id", &c.node_id)?;
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

    fn refund(&self, charge_id: &str, reason: &str) -> Result<Decision, Rejection> {
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
        let (returned, forfeited) = classify_returns(
            self.core,
            &record.charge.drawn_from,
            self.now,
            record.version,
        );
        let balance_after = self.balance().map(|balance| plus(balance, sum(&returned)));
        let event = ChargeRefunded {
            charge_id: charge_id.to_string(),
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

    fn place_hold(&self, c: &PlaceHold) -> Result<Decision, Rejection> {
        check_id("hold_id", &c.hold_id)?;
        let ttl = c.ttl.unwrap_or(HOLD_TTL_DEFAULT);
        if let Some(found) = self.find_hold(&c.hold_id) {
            let hold = match found {
                Ok(hold) | Err((hold, _)) => hold,
            };
            let placed = &hold.placed;
            let same = placed.run_id == c.run_id
                && placed.node_id == c.node_id
                && placed.model == c.model
                && placed.via == c.via
                && placed.ttl_s == ttl.as_secs()
                && request_quantity(placed.price_unit, placed.quantity)
                    == (c.quantity.images, c.quantity.seconds);
            return if same {
                Ok(Decision::replay(hold_receipt(placed), hold.version))
            } else {
                Err(Rejection::IdempotencyConflict {
                    id: c.hold_id.clone(),
                })
            };
        }
        check_id("run_id", &c.run_id)?;
        check_id("node_id", &c.node_id)?;
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
            status: closed.map_or("expired", |closed| closed.resolution.status()),
        }
    }

    fn capture_hold(&self, c: &CaptureHold) -> Result<Decision, Rejection> {
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
            PaidBy::Unlimited => (
                cost,
                vec![Part {
                    bucket: BucketKind::Unlimited,
                    id: "unlimited".into(),
                    amount: cost,
                }],
                Vec::new(),
            ),
            PaidBy::Credits => {
                let (drawn, rest) = split_parts(&placed.earmarked, cost);
                (cost, drawn, rest)
            }
        };
        let (returned, forfeited) = classify_returns(self.core, &rest, self.now, hold.version);
        let balance_after = self.balance().map(|balance| plus(balance, sum(&returned)));
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

    fn release_hold(&self, hold_id: &str) -> Result<Decision, Rejection> {
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
            classify_returns(self.core, &hold.placed.earmarked, self.now, hold.version);
        let balance_after = self.balance().map(|balance| plus(balance, sum(&returned)));
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

/// The allowance window a subscription change starts in. Free and annual plans refresh on
/// the monthly anniversaries of `period_start`, so a backdated one (an annual year that began
/// months ago) lands straight in the anniversary window that contains `now`, with that
/// window's full allowance; no refresh for an earlier window is ever written. Monthly paid
/// plans have one window: the billed period.
fn subscription_window(
    tier: Tier,
    billing: Option<Billing>,
    period_start: Instant,
    period_end: Instant,
    now: Instant,
) -> (Instant, Instant) {
    let monthly_anniversaries = tier == Tier::Free || billing == Some(Billing::Annual);
    if !monthly_anniversaries {
        return (period_start, period_end);
    }
    let (start, end) = if now <= period_start {
        (period_start, add_months(period_start, 1))
    } else {
        anniversary_period(period_start, now)
    };
    if tier == Tier::Free {
        (start, end)
    } else {
        (start, end.min(period_end))
    }
}

/// The quantity a capture charges: as sent, or the held quantity when none is sent; never
/// more than held, and of the kind the model is priced in.
fn capture_quantity(placed: &HoldPlaced, quantity: Quantity) -> Result<u32, Rejection> {
    let (sent, other, field) = match placed.price_unit {
        PriceUnit::PerImage => (quantity.images, quantity.seconds, "images"),
        PriceUnit::PerSecond => (quantity.seconds, quantity.images, "seconds"),
        PriceUnit::PerCall => {
            if quantity.images.is_some() || quantity.seconds.is_some() {
                return Err(Rejection::invalid(
                    "a per-call hold is captured without a quantity",
                ));
            }
            return Ok(placed.quantity);
        }
    };
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

/// Splits earmarked parts into the first `cost` credits (in earmark order) and the rest.
fn split_parts(earmarked: &[Part], cost: Credits) -> (Vec<Part>, Vec<Part>) {
    let mut due = cost;
    let mut drawn = Vec::new();
    let mut rest = Vec::new();
    for part in earmarked {
        let take = due.min(part.amount);
        if !take.is_zero() {
            drawn.push(Part {
                amount: take,
                ..part.clone()
            });
            due = due.checked_sub(take).unwrap_or(Credits::ZERO);
        }
        let left = part.amount.checked_sub(take).unwrap_or(Credits::ZERO);
        if !left.is_zero() {
            rest.push(Part {
                amount: left,
                ..part.clone()
            });
        }
    }
    (drawn, rest)
}

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
