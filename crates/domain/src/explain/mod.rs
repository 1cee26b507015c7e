//! `explain`: one account's history replayed into a timeline and its balance as of an instant
//! (SPEC sections 1 and 10), for support and finance. Pure like the rest of the crate: the
//! instant is an argument, so the balance as of `at` is the same whenever it is asked.
//!
//! Bucket logic is never re-implemented here. The state is folded with [`Account::evolve`]
//! and what each event did to each bucket is the difference between the buckets before and
//! after it, so the deltas of an entry always add up to the change in credits held.
//!
//! The domain returns data: each entry's summary is a [`Note`] (the event and what it
//! resolves), and the words are the interfaces' (the service's `explain_text` renders the
//! notes for HTTP and the CLI).

mod fold;
mod history;
mod note;

use serde::Serialize;

use crate::catalog::{Catalog, Scope, Tier};
use crate::credits::Credits;
use crate::decide::refresh_dates;
use crate::envelope::Envelope;
use crate::events::*;
use crate::state::{Account, Totals, TrialStatus, VerificationStatus};
use crate::time::Instant;
use crate::usage::{Stored, Usage, UsageBy, UsageRange, UsageReport};

pub use crate::buckets::BucketName;
pub use history::{history, HistoryError, HistoryFold, HistoryRange, Point, HISTORY_POINTS_MAX};
pub use note::{ChargeOrigin, HoldOrigin, Note};

use fold::{balance_at, drawn_from, due_at, model_access, running, Step};

/// An account explained as of `at`: the JSON the explain endpoint answers with and what
/// `ledger explain --json` prints. Field names are part of the API contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation<S = Note> {
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
    pub business_verification: Option<VerificationStatus>,
    /// When the allowance was last reset and when the scheduler refreshes it next, as of
    /// `at` (SPEC section 13); `null` where there is none.
    pub last_refresh_at: Option<Instant>,
    pub next_refresh_at: Option<Instant>,
    /// Every counted event, in version order.
    pub timeline: Vec<TimelineEntry<S>>,
    /// The buckets as of `at`.
    pub balance: BalanceAt,
    /// What had fallen due by `at` (expiries, hold timeouts, window closes, anniversary
    /// refreshes) but was not recorded yet: the next command at `at` would record it first.
    pub due: Vec<DueEntry<S>>,
    /// Every catalog model and whether it could run at `at`.
    pub models: Vec<ModelAccess>,
    /// Runs and credits by model up to `at`, charges net of refunds: the usage view's fold
    /// over the counted events.
    pub usage: UsageReport,
}

/// One event of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry<S = Note> {
    pub version: u64,
    pub occurred_at: Instant,
    pub recorded_at: Instant,
    /// The stable event type name (SPEC section 10).
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub actor: String,
    pub command_id: String,
    /// What happened, for humans: a [`Note`] here, its one line of text once an interface
    /// has rendered it (the service's `explain_text`).
    pub summary: S,
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
pub struct DueEntry<S = Note> {
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub summary: S,
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
    pub trial_status: Option<TrialStatus>,
}

impl<S> Explanation<S> {
    /// The same explanation with every entry's summary turned into `T`: how an interface
    /// renders the notes into its own words.
    pub fn map_summaries<T>(self, mut render: impl FnMut(S) -> T) -> Explanation<T> {
        Explanation {
            account_id: self.account_id,
            at: self.at,
            version: self.version,
            exists: self.exists,
            tier: self.tier,
            billing: self.billing,
            scope: self.scope,
            business_verification: self.business_verification,
            last_refresh_at: self.last_refresh_at,
            next_refresh_at: self.next_refresh_at,
            timeline: self
                .timeline
                .into_iter()
                .map(|entry| TimelineEntry {
                    version: entry.version,
                    occurred_at: entry.occurred_at,
                    recorded_at: entry.recorded_at,
                    type_name: entry.type_name,
                    actor: entry.actor,
                    command_id: entry.command_id,
                    summary: render(entry.summary),
                    changes: entry.changes,
                    drawn_from: entry.drawn_from,
                    forfeited: entry.forfeited,
                    after: entry.after,
                    totals: entry.totals,
                })
                .collect(),
            balance: self.balance,
            due: self
                .due
                .into_iter()
                .map(|due| DueEntry {
                    type_name: due.type_name,
                    summary: render(due.summary),
                    changes: due.changes,
                    forfeited: due.forfeited,
                })
                .collect(),
            models: self.models,
            usage: self.usage,
        }
    }
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
    let mut usage = Usage::default();
    for envelope in envelopes.iter().take_while(|e| e.occurred_at <= at) {
        usage.apply(&envelope.event, Stored::of(envelope));
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
    let refresh = core.map_or_else(Default::default, |core| {
        refresh_dates(&core.plan, &core.balance, at)
    });
    Explanation {
        account_id: account_id.to_string(),
        at,
        version,
        exists: core.is_some(),
        tier: core.map(|core| core.plan.tier),
        billing: core.and_then(|core| core.plan.billing),
        scope: core.map(|core| core.plan.scope),
        business_verification: core.map(|core| core.plan.verification.status()),
        last_refresh_at: refresh.last_refresh_at,
        next_refresh_at: refresh.next_refresh_at,
        balance: balance_at(core, at),
        due,
        models: catalog
            .models()
            .iter()
            .map(|model| model_access(&account, model, at))
            .collect(),
        usage: usage.report(&UsageRange::ALL, UsageBy::Model, catalog),
        timeline,
    }
}
