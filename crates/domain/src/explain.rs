//! `explain`: one account's history replayed into a timeline and its balance as of an instant
//! (SPEC sections 1 and 10), for support and finance. Pure like the rest of the crate: the
//! instant is an argument, so the balance as of `at` is the same whenever it is asked.
//!
//! Bucket logic is never re-implemented here. The state is folded with [`Account::evolve`]
//! and what each event did to each bucket is the difference between the buckets before and
//! after it, so the deltas of an entry always add up to the change in credits held.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::buckets;
use crate::catalog::{Catalog, Model, PriceUnit, Scope, Tier};
use crate::command::Command;
use crate::credits::Credits;
use crate::decide::{check_access, decide, Access};
use crate::envelope::Envelope;
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::{Account, Balance, Core, Totals};
use crate::time::rfc3339;

pub use crate::buckets::BucketName;
use crate::time::Instant;

/// An account explained as of `at`: the JSON the explain endpoint answers with and what
/// `ledger explain --json` prints. Field names are part of the API contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub account_id: String,
    /// The instant the explanation is as of.
    pub at: Instant,
    /// The stream version of the last event counted; 0 when none.
    pub version: u64,
    /// Whether the account had been opened by `at`.
    pub exists: bool,
    /// The plan as of `at`; `null` while the account does not exist.
    pub tier: Option<Tier>,
    pub billing: Option<Billing>,
    pub scope: Option<Scope>,
    /// `none`, `pending`, `approved` or `rejected`; `null` while the account does not exist.
    pub business_verification: Option<&'static str>,
    /// Every counted event, in version order.
    pub timeline: Vec<TimelineEntry>,
    /// The buckets as of `at`.
    pub balance: BalanceAt,
    /// What had fallen due by `at` (expiries, hold timeouts, window closes, anniversary
    /// refreshes) but was not recorded yet: the next command at `at` would record it first.
    pub due: Vec<DueEntry>,
    /// Every catalog model and whether it could run at `at`.
    pub models: Vec<ModelAccess>,
}

/// One event of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    pub version: u64,
    pub occurred_at: Instant,
    pub recorded_at: Instant,
    /// The stable event type name (SPEC section 10).
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub actor: String,
    pub command_id: String,
    /// One line for humans.
    pub summary: String,
    /// What the event did to each bucket; nothing for events that move no credits.
    pub changes: Vec<BucketChange>,
    /// The recorded parts of a charge or a capture; `null` for other events.
    pub drawn_from: Option<Vec<Part>>,
    /// Credits the event forfeited (resets, expiries, returns to vanished buckets); 0 if none.
    pub forfeited: Credits,
    /// The buckets right after the event.
    pub after: Running,
    /// The ledger totals right after the event.
    pub totals: Totals,
}

/// What an event did to one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketChange {
    pub bucket: BucketName,
    /// The allowance's period start, a top-up's `purchase_id`, a grant's `grant_id`, or the
    /// hold's `hold_id` for held credits.
    pub id: String,
    pub delta: i64,
}

/// Running bucket sums after an event, at the event's `occurred_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Running {
    /// Credits that could pay at that instant: `allowance + top_ups + grants`.
    pub available: Credits,
    /// The live allowance's remainder.
    pub allowance: Credits,
    /// Live top-up lots' remainders.
    pub top_ups: Credits,
    /// Live grants' remainders.
    pub grants: Credits,
    /// Credits earmarked by open holds.
    pub held: Credits,
    /// Every bucket, live or past its expiry but not yet recorded as expired, plus held
    /// credits: the amount the entries' deltas add up to, and always
    /// `granted - charged + refunded - forfeited`.
    pub in_buckets: Credits,
}

/// The buckets as of `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceAt {
    /// Credits available at `at`: live buckets only, whether or not the expiry of the others
    /// has been recorded.
    pub total: Credits,
    pub allowance: Option<AllowanceAt>,
    /// Top-up lots not recorded as expired, oldest first.
    pub top_ups: Vec<TopUpAt>,
    /// Grants not recorded as expired, oldest first.
    pub grants: Vec<GrantAt>,
    /// Credits earmarked by open holds.
    pub held: Credits,
    pub holds: Vec<HoldAt>,
    /// Enterprise without an allowance: every charge succeeds.
    pub unlimited: bool,
    /// As [`Running::in_buckets`].
    pub in_buckets: Credits,
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowanceAt {
    pub id: String,
    pub amount: Credits,
    pub remaining: Credits,
    pub period_start: Instant,
    pub period_end: Instant,
    /// `at` is before `period_end`: the allowance can pay.
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopUpAt {
    pub lot_id: String,
    pub credits: Credits,
    pub remaining: Credits,
    pub expires_at: Option<Instant>,
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantAt {
    pub grant_id: String,
    pub credits: Credits,
    pub remaining: Credits,
    /// `null`: never expires.
    pub expires_at: Option<Instant>,
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldAt {
    pub hold_id: String,
    pub model: String,
    pub amount: Credits,
    pub expires_at: Instant,
    /// `false` once the hold's ttl has run out: it returns its credits at the next command.
    pub live: bool,
}

/// Something due by `at` and not yet recorded, as the next command would record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueEntry {
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub summary: String,
    pub changes: Vec<BucketChange>,
    pub forfeited: Credits,
}

/// How a model could run at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelAccessKind {
    /// From credits (or unlimited).
    Paid,
    /// Free, through the model's trial.
    Trial,
    Blocked,
}

impl ModelAccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelAccessKind::Paid => "paid",
            ModelAccessKind::Trial => "trial",
            ModelAccessKind::Blocked => "blocked",
        }
    }
}

/// One catalog model and why it could or could not run at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelAccess {
    pub model: String,
    pub min_tier: Tier,
    pub access: ModelAccessKind,
    /// The rejection code a run would get (`MODEL_TIER_REQUIRED`, `TRIAL_EXHAUSTED`,
    /// `TRIAL_EXPIRED`, ...); `null` when it may run.
    pub reason_code: Option<&'static str>,
    pub reason: Option<String>,
    /// The model's trial on this account (`unused`, `active`, `exhausted`, `expired`);
    /// `null` for models without a trial.
    pub trial_status: Option<&'static str>,
}

/// Explains `account_id` as of `at` from its stream, `envelopes`, in version order.
///
/// Events count while their `occurred_at` is at or before `at`. The replay stops at the
/// first event after `at` rather than skipping it: a state is a fold of a prefix of the
/// stream, and a later event may depend on that one.
pub fn explain(
    account_id: &str,
    envelopes: &[Envelope],
    catalog: &Catalog,
    at: Instant,
) -> Explanation {
    let mut account = Account::new(account_id);
    let mut timeline = Vec::new();
    let mut version = 0;
    for envelope in envelopes.iter().take_while(|e| e.occurred_at <= at) {
        let step = Step::apply(&mut account, &envelope.event);
        version = envelope.version;
        let core = account.core.as_ref();
        timeline.push(TimelineEntry {
            version: envelope.version,
            occurred_at: envelope.occurred_at,
            recorded_at: envelope.recorded_at,
            type_name: envelope.event.type_name(),
            actor: envelope.actor.clone(),
            command_id: envelope.command_id.clone(),
            summary: step.summary,
            changes: step.changes,
            drawn_from: drawn_from(&envelope.event),
            forfeited: step.forfeited,
            after: core.map_or_else(Running::default, |core| {
                running(&core.balance, envelope.occurred_at)
            }),
            totals: core.map_or_else(Totals::default, |core| core.balance.totals),
        });
    }
    // Every deadline due by `at` applies at `at`, written yet or not (hold timeouts, lot and
    // grant expiries, window closes, anniversary refreshes), so the answer for `at` never
    // changes once the scheduler catches up.
    let (due, account) = due_at(account, catalog, at);
    let core = account.core.as_ref();
    Explanation {
        account_id: account_id.to_string(),
        at,
        version,
        exists: core.is_some(),
        tier: core.map(|core| core.plan.tier),
        billing: core.and_then(|core| core.plan.billing),
        scope: core.map(|core| core.plan.scope),
        business_verification: core.map(|core| core.plan.verification.status()),
        balance: balance_at(core, at),
        due,
        models: catalog
            .models()
            .iter()
            .map(|model| model_access(&account, model, at))
            .collect(),
        timeline,
    }
}

/// One event folded into the account, with what it did.
struct Step {
    summary: String,
    changes: Vec<BucketChange>,
    forfeited: Credits,
}

impl Step {
    fn apply(account: &mut Account, event: &Event) -> Step {
        // The summary reads the state before the event: a capture or a refund names what it
        // resolves, which the event itself does not repeat.
        let summary = summarize(event, account);
        let before = Buckets::of(account.core.as_ref());
        let forfeited_before = forfeited_total(account.core.as_ref());
        account.evolve(event);
        let after = Buckets::of(account.core.as_ref());
        Step {
            summary,
            changes: before.changes_to(&after),
            forfeited: forfeited_total(account.core.as_ref())
                .checked_sub(forfeited_before)
                .unwrap_or(Credits::ZERO),
        }
    }
}

fn forfeited_total(core: Option<&Core>) -> Credits {
    core.map_or(Credits::ZERO, |core| core.balance.totals.forfeited)
}

/// A bucket's identity across events. The allowance also carries the version of the event
/// that set it: a reset may start a period at the same instant as the one it replaces, and
/// the old bucket's loss and the new one's gain are two changes, not their net.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BucketKey {
    bucket: BucketName,
    id: String,
    generation: u64,
}

/// Every bucket's remainder, held credits included.
struct Buckets(BTreeMap<BucketKey, Credits>);

impl Buckets {
    fn of(core: Option<&Core>) -> Buckets {
        let mut buckets = BTreeMap::new();
        let Some(balance) = core.map(|core| &core.balance) else {
            return Buckets(buckets);
        };
        let mut put = |bucket, id: &str, generation, amount| {
            buckets.insert(
                BucketKey {
                    bucket,
                    id: id.to_string(),
                    generation,
                },
                amount,
            );
        };
        for bucket in balance.buckets() {
            if let Some(name) = BucketName::of(bucket.kind) {
                put(name, bucket.id, bucket.generation, bucket.remaining);
            }
        }
        for (hold_id, hold) in &balance.open_holds {
            put(BucketName::Held, hold_id, hold.version, hold.amount());
        }
        Buckets(buckets)
    }

    /// The non-zero differences from `self` to `after`, in bucket order.
    fn changes_to(&self, after: &Buckets) -> Vec<BucketChange> {
        let mut keys: Vec<&BucketKey> = self.0.keys().chain(after.0.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                let before = self.0.get(key).copied().unwrap_or(Credits::ZERO);
                let now = after.0.get(key).copied().unwrap_or(Credits::ZERO);
                let delta = signed_delta(before, now);
                (delta != 0).then(|| BucketChange {
                    bucket: key.bucket,
                    id: key.id.clone(),
                    delta,
                })
            })
            .collect()
    }
}

/// `after - before` as a signed amount. Amounts entering the ledger are capped far below
/// `i64::MAX`; should one not be, the delta saturates rather than wraps.
fn signed_delta(before: Credits, after: Credits) -> i64 {
    match after.checked_sub(before) {
        Some(gain) => i64::try_from(gain.get()).unwrap_or(i64::MAX),
        None => {
            let loss = before.checked_sub(after).unwrap_or(Credits::ZERO);
            i64::try_from(loss.get())
                .ok()
                .and_then(i64::checked_neg)
                .unwrap_or(i64::MIN)
        }
    }
}

fn drawn_from(event: &Event) -> Option<Vec<Part>> {
    match event {
        Event::CreditsCharged(data) => Some(data.drawn_from.clone()),
        Event::HoldCaptured(data) => Some(data.drawn_from.clone()),
        _ => None,
    }
}

fn running(balance: &Balance, at: Instant) -> Running {
    Running {
        available: balance.available(at),
        allowance: balance.live_remaining(BucketKind::Allowance, at),
        top_ups: balance.live_remaining(BucketKind::TopUp, at),
        grants: balance.live_remaining(BucketKind::Grant, at),
        held: balance.held(),
        in_buckets: balance.total_in_buckets(),
    }
}

fn balance_at(core: Option<&Core>, at: Instant) -> BalanceAt {
    let Some(core) = core else {
        return BalanceAt {
            total: Credits::ZERO,
            allowance: None,
            top_ups: Vec::new(),
            grants: Vec::new(),
            held: Credits::ZERO,
            holds: Vec::new(),
            unlimited: false,
            in_buckets: Credits::ZERO,
            totals: Totals::default(),
        };
    };
    let balance = &core.balance;
    BalanceAt {
        total: balance.available(at),
        allowance: balance.allowance.as_ref().map(|bucket| AllowanceAt {
            id: bucket.id.clone(),
            amount: bucket.amount,
            remaining: bucket.remaining,
            period_start: bucket.period_start,
            period_end: bucket.period_end,
            // The rule `Balance::available` applies, so `live` and `total` always agree.
            live: balance.live_allowance(at).is_some(),
        }),
        top_ups: balance
            .top_ups
            .iter()
            .map(|lot| TopUpAt {
                lot_id: lot.id.clone(),
                credits: lot.credits,
                remaining: lot.remaining,
                expires_at: lot.expires_at,
                live: lot.is_live(at),
            })
            .collect(),
        grants: balance
            .grants
            .iter()
            .map(|lot| GrantAt {
                grant_id: lot.id.clone(),
                credits: lot.credits,
                remaining: lot.remaining,
                expires_at: lot.expires_at,
                live: lot.is_live(at),
            })
            .collect(),
        held: balance.held(),
        holds: balance
            .open_holds
            .values()
            .map(|hold| HoldAt {
                hold_id: hold.placed.hold_id.clone(),
                model: hold.placed.model.clone(),
                amount: hold.amount(),
                expires_at: hold.placed.expires_at,
                live: at < hold.placed.expires_at,
            })
            .collect(),
        unlimited: core.plan.unlimited,
        in_buckets: balance.total_in_buckets(),
        totals: balance.totals,
    }
}

/// The housekeeping a command at `at` would record first, found by asking `decide` for a
/// tick: the same rules, not a second copy of them. Returns the entries and the account
/// with them applied.
fn due_at(mut account: Account, catalog: &Catalog, at: Instant) -> (Vec<DueEntry>, Account) {
    if !account.is_open() {
        return (Vec::new(), account);
    }
    let Ok(decision) = decide(&account, catalog, &Command::Tick, at) else {
        return (Vec::new(), account);
    };
    let due = decision
        .events
        .iter()
        .map(|event| {
            let step = Step::apply(&mut account, event);
            DueEntry {
                type_name: event.type_name(),
                summary: step.summary,
                changes: step.changes,
                forfeited: step.forfeited,
            }
        })
        .collect();
    (due, account)
}

fn model_access(account: &Account, model: &Model, at: Instant) -> ModelAccess {
    let Some(core) = account.core.as_ref() else {
        let rejection = Rejection::AccountNotFound {
            account_id: account.account_id.clone(),
        };
        return blocked(model, &rejection, None);
    };
    let trial = core.trials.get(&model.id);
    // A trial the account never touched is still there to be used.
    let trial_status = trial
        .map(|trial| trial.status(at).as_str())
        .or_else(|| model.free_trial.map(|_| "unused"));
    match check_access(core.plan.tier, trial, model, at) {
        Ok(access) => ModelAccess {
            model: model.id.clone(),
            min_tier: model.min_tier,
            access: match access {
                Access::Paid => ModelAccessKind::Paid,
                Access::Trial => ModelAccessKind::Trial,
            },
            reason_code: None,
            reason: None,
            trial_status,
        },
        Err(rejection) => blocked(model, &rejection, trial_status),
    }
}

fn blocked(
    model: &Model,
    rejection: &Rejection,
    trial_status: Option<&'static str>,
) -> ModelAccess {
    ModelAccess {
        model: model.id.clone(),
        min_tier: model.min_tier,
        access: ModelAccessKind::Blocked,
        reason_code: Some(rejection.code()),
        reason: Some(rejection.message()),
        trial_status,
    }
}

// --- summaries ---------------------------------------------------------------------------

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

/// The one-line summary of `event`, given the account just before it.
fn summarize(event: &Event, before: &Account) -> String {
    let core = before.core.as_ref();
    match event {
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
                crate::time::DurationS::from_secs(window_s)
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
            let charged = before
                .records
                .charges
                .get(&d.charge_id)
                .map_or_else(String::new, |record| {
                    format!(" (version {}, {})", record.version, credits(record.charge.cost))
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
            let hold = core.and_then(|core| core.balance.open_holds.get(&d.hold_id));
            let charged = match hold {
                Some(hold) => format!(
                    " (version {}) of {}: charged {} ({})",
                    hold.version,
                    hold.placed.model,
                    credits(d.cost),
                    quantity(hold.placed.price_unit, d.quantity)
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
            hold_origin(core, &d.hold_id),
            returns(&d.returned, &d.forfeited)
        ),
        Event::HoldExpired(d) => format!(
            "hold {}{} expired at {}: {}",
            d.hold_id,
            hold_origin(core, &d.hold_id),
            instant(&d.expired_at),
            returns(&d.returned, &d.forfeited)
        ),
    }
}

/// " (version 7) of kling-2" for an open hold, so a resolution points at its placement.
fn hold_origin(core: Option<&Core>, hold_id: &str) -> String {
    core.and_then(|core| core.balance.open_holds.get(hold_id))
        .map_or_else(String::new, |hold| {
            format!(" (version {}) of {}", hold.version, hold.placed.model)
        })
}

// --- text ----------------------------------------------------------------------------------

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

fn live_text(live: bool) -> String {
    if live { "live" } else { "expired" }.to_string()
}

/// The table `ledger explain` prints without `--json`: the plan, the timeline with the
/// credits available after each event, the buckets as of `at`, what is due and the models
/// that could not run. Plain text, no colours.
pub fn render_text(explanation: &Explanation) -> String {
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
        e.business_verification.unwrap_or("-")
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
