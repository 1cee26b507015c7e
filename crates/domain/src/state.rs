//! The account state and `evolve`: folding events into state. No decisions here: `evolve`
//! trusts the events, which `decide` produced after checking every rule.

use std::collections::BTreeMap;

use crate::catalog::{Scope, Tier};
use crate::credits::Credits;
use crate::events::*;
use crate::time::Instant;

pub use crate::buckets::{allowance_id, Balance, Bucket, Hold, Origin, Totals};
pub use crate::records::{ChargeRecord, ClosedHold, IdMap, Recorded, Records};

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldResolution {
    Captured(HoldCaptured),
    Released(HoldReleased),
    Expired(HoldExpired),
}

impl HoldResolution {
    pub fn status(&self) -> HoldStatus {
        match self {
            HoldResolution::Captured(_) => HoldStatus::Captured,
            HoldResolution::Released(_) => HoldStatus::Released,
            HoldResolution::Expired(_) => HoldStatus::Expired,
        }
    }
}

/// Declares a status enum that serialises as, displays as and `as_str`s to its API name.
macro_rules! api_status {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

api_status! {
    /// How a hold ended, as receipts and `HOLD_CLOSED` name it.
    HoldStatus { Captured => "captured", Released => "released", Expired => "expired" }
}

api_status! {
    /// Business verification as the summary and explain show it.
    VerificationStatus {
        None => "none",
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
    }
}

api_status! {
    /// Trial status as the summary and explain show it.
    TrialStatus {
        Unused => "unused",
        Active => "active",
        Exhausted => "exhausted",
        Expired => "expired",
    }
}

/// One model's trial on this account. Lifetime: kept across tier changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trial {
    pub kind: TrialKind,
    /// Count trials: how many runs are free, as granted.
    pub limit: u32,
    pub used: u32,
    /// Time trials: the window length, as granted.
    pub window_s: u64,
    pub opened_at: Option<Instant>,
    pub closes_at: Option<Instant>,
    /// The scheduler recorded the window's close.
    pub closed: bool,
}

impl Trial {
    pub fn status(&self, at: Instant) -> TrialStatus {
        match self.kind {
            TrialKind::Runs if self.used >= self.limit => TrialStatus::Exhausted,
            TrialKind::Runs if self.used == 0 => TrialStatus::Unused,
            TrialKind::Runs => TrialStatus::Active,
            TrialKind::Window => match self.closes_at {
                None => TrialStatus::Unused,
                Some(closes_at) if at < closes_at && !self.closed => TrialStatus::Active,
                Some(_) => TrialStatus::Expired,
            },
        }
    }
}

/// Business verification, as far as it got.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    #[default]
    None,
    Pending(BusinessVerificationSubmitted),
    Approved(BusinessVerificationSubmitted),
    Rejected(BusinessVerificationSubmitted, String),
}

impl Verification {
    pub fn status(&self) -> VerificationStatus {
        match self {
            Verification::None => VerificationStatus::None,
            Verification::Pending(_) => VerificationStatus::Pending,
            Verification::Approved(_) => VerificationStatus::Approved,
            Verification::Rejected(..) => VerificationStatus::Rejected,
        }
    }
}

/// The plan an account is on: tier, billing, scope and business verification. The tier
/// view holds exactly this.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanState {
    pub opened_at: Instant,
    pub tier: Tier,
    pub billing: Option<Billing>,
    pub scope: Scope,
    /// Enterprise without an allowance: every charge succeeds.
    pub unlimited: bool,
    /// What each refresh gives (annual bonus included); `None` when unlimited.
    pub plan_allowance: Option<Credits>,
    /// The billing period the subscription is in.
    pub subscription_start: Instant,
    pub subscription_end: Instant,
    /// Free and annual accounts refresh on this instant's monthly anniversaries.
    pub anchor_at: Instant,
    pub verification: Verification,
}

/// The account's trials, by model. The trial-usage view holds exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Trials {
    pub models: BTreeMap<String, Trial>,
}

/// An account's three views together (plan, balance, trials): the small, frequently copied
/// part of the account that `decide` reads, the projector's views hold row by row, and the
/// service's read model and admission answer from. The one type for "an account as the
/// views see it".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Core {
    pub plan: PlanState,
    pub balance: Balance,
    pub trials: Trials,
}

/// One account, folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: String,
    /// Events applied so far: the stream version.
    pub version: u64,
    /// `None` until `account_opened`.
    pub core: Option<Core>,
    pub records: Records,
}

impl PlanState {
    /// The plan of a newly opened account.
    pub fn opened(data: &AccountOpened) -> PlanState {
        PlanState {
            opened_at: data.period_start,
            tier: data.tier,
            billing: None,
            scope: data.scope,
            unlimited: false,
            plan_allowance: Some(data.allowance),
            subscription_start: data.period_start,
            subscription_end: data.period_end,
            anchor_at: data.period_start,
            verification: Verification::None,
        }
    }

    /// Whether `event` can change a plan: exactly the events [`PlanState::apply`] folds. The
    /// tier view leaves its row alone for the others (charges above all); the property test
    /// holds the two together.
    pub fn changed_by(event: &Event) -> bool {
        matches!(
            event,
            Event::AccountOpened(_)
                | Event::TierChanged(_)
                | Event::AllowanceRenewed(_)
                | Event::BusinessVerificationSubmitted(_)
                | Event::BusinessVerificationApproved(_)
                | Event::BusinessVerificationRejected(_)
        )
    }

    /// Folds one event into the plan.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::AccountOpened(data) => *self = PlanState::opened(data),
            Event::TierChanged(data) => {
                self.tier = data.to;
                self.billing = data.billing;
                self.scope = data.scope;
                self.subscription_start = data.period_start;
                self.subscription_end = data.period_end;
                self.anchor_at = data.period_start;
                self.unlimited = data.allowance.is_none();
                self.plan_allowance = data.allowance;
            }
            Event::AllowanceRenewed(data) => {
                self.subscription_start = data.period_start;
                self.subscription_end = data.period_end;
                if data.source == RenewalSource::Billing {
                    self.anchor_at = data.period_start;
                }
                self.unlimited = data.allowance.is_none();
                self.plan_allowance = data.allowance;
            }
            Event::BusinessVerificationSubmitted(data) => {
                self.verification = Verification::Pending(data.clone())
            }
            Event::BusinessVerificationApproved(_) => {
                if let Verification::Pending(submission) = std::mem::take(&mut self.verification) {
                    self.verification = Verification::Approved(submission);
                }
            }
            Event::BusinessVerificationRejected(data) => {
                if let Verification::Pending(submission) = std::mem::take(&mut self.verification) {
                    self.verification = Verification::Rejected(submission, data.reason.clone());
                }
            }
            _ => {}
        }
    }
}

impl Trials {
    /// Whether `event` can change the trials: the events [`Trials::apply`] folds, and of runs
    /// only those a trial paid for. The trial-usage view leaves its row alone for the others
    /// (every charge paid with credits); the property test holds the two together.
    pub fn changed_by(event: &Event) -> bool {
        match event {
            Event::AccountOpened(_)
            | Event::TrialGranted(_)
            | Event::TrialRunConsumed(_)
            | Event::TrialWindowOpened(_)
            | Event::TrialWindowClosed(_) => true,
            Event::CreditsCharged(data) => data.paid_by == PaidBy::Trial,
            Event::HoldPlaced(data) => data.paid_by == PaidBy::Trial,
            _ => false,
        }
    }

    /// Folds one event into the trials.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::AccountOpened(_) => self.models.clear(),
            Event::TrialGranted(data) => {
                self.models.insert(
                    data.model.clone(),
                    Trial {
                        kind: data.kind,
                        limit: data.runs.unwrap_or(0),
                        used: 0,
                        window_s: data.window_s.unwrap_or(0),
                        opened_at: None,
                        closes_at: None,
                        closed: false,
                    },
                );
            }
            Event::TrialRunConsumed(data) => {
                if let Some(trial) = self.models.get_mut(&data.model) {
                    trial.used = data.used;
                }
            }
            Event::TrialWindowOpened(data) => {
                if let Some(trial) = self.models.get_mut(&data.model) {
                    trial.opened_at = Some(data.opened_at);
                    trial.closes_at = Some(data.closes_at);
                }
            }
            Event::TrialWindowClosed(data) => {
                if let Some(trial) = self.models.get_mut(&data.model) {
                    trial.closed = true;
                }
            }
            Event::CreditsCharged(data) => self.count_window_run(data.paid_by, &data.model),
            Event::HoldPlaced(data) => self.count_window_run(data.paid_by, &data.model),
            _ => {}
        }
    }

    /// Count trials are counted by `trial_run_consumed`; window trials count their free runs
    /// here so that the summary can show how much a window was used.
    fn count_window_run(&mut self, paid_by: PaidBy, model: &str) {
        if paid_by != PaidBy::Trial {
            return;
        }
        if let Some(trial) = self
            .models
            .get_mut(model)
            .filter(|trial| trial.kind == TrialKind::Window)
        {
            trial.used = trial.used.saturating_add(1);
        }
    }

    pub fn get(&self, model: &str) -> Option<&Trial> {
        self.models.get(model)
    }
}

impl Core {
    fn opened(data: &AccountOpened) -> Core {
        Core {
            plan: PlanState::opened(data),
            balance: Balance::opened(data),
            trials: Trials::default(),
        }
    }

    /// Credits that can pay for something at `at`.
    pub fn available(&self, at: Instant) -> Credits {
        self.balance.available(at)
    }

    /// Credits earmarked by open holds.
    pub fn held(&self) -> Credits {
        self.balance.held()
    }

    /// Credits in every bucket plus held credits.
    pub fn total_in_buckets(&self) -> Credits {
        self.balance.total_in_buckets()
    }
}

impl Account {
    /// An account that has no events yet.
    pub fn new(account_id: impl Into<String>) -> Account {
        Account {
            account_id: account_id.into(),
            version: 0,
            core: None,
            records: Records::default(),
        }
    }

    /// Folds a sequence of events from scratch.
    pub fn replay<'a>(account_id: &str, events: impl IntoIterator<Item = &'a Event>) -> Account {
        let mut account = Account::new(account_id);
        for event in events {
            account.evolve(event);
        }
        account
    }

    /// Folds owned events from scratch, without copying them.
    pub fn replay_owned(account_id: &str, events: impl IntoIterator<Item = Event>) -> Account {
        let mut account = Account::new(account_id);
        for event in events {
            account.apply(event);
        }
        account
    }

    pub fn is_open(&self) -> bool {
        self.core.is_some()
    }

    /// Applies one event.
    pub fn evolve(&mut self, event: &Event) {
        self.apply(event.clone());
    }

    /// Applies one owned event: the records keep it without a copy.
    pub fn apply(&mut self, event: Event) {
        self.version += 1;
        if let Event::AccountOpened(data) = &event {
            self.core = Some(Core::opened(data));
            return;
        }
        let Some(core) = self.core.as_mut() else {
            // Only account_opened can start a stream; decide never emits anything else first.
            return;
        };
        // Take the hold out before the core forgets it: its record outlives it.
        let closing =
            resolved_hold_id(&event).and_then(|hold_id| core.balance.open_holds.remove(hold_id));
        evolve_core(core, &event, self.version);
        // The identity the property test checks, asserted where it could first break.
        debug_assert!(
            core.balance.totals_balance(),
            "account {} at version {}: buckets plus held {} != granted - charged + refunded - forfeited ({:?})",
            self.account_id,
            self.version,
            core.balance.total_in_buckets(),
            core.balance.totals
        );
        self.records.evolve(closing, event, self.version);
    }
}

/// Where an account stood before a batch of decisions was folded in: enough to take the
/// batch back out when its append fails, without copying the records (a hot account holds
/// millions). Only the small core is copied.
#[derive(Debug, Clone)]
pub struct Savepoint {
    version: u64,
    core: Option<Core>,
    verification_submitted_version: u64,
    verification_decided_version: u64,
}

impl Account {
    /// Marks where the account stands now.
    pub fn savepoint(&self) -> Savepoint {
        Savepoint {
            version: self.version,
            core: self.core.clone(),
            verification_submitted_version: self.records.verification_submitted_version,
            verification_decided_version: self.records.verification_decided_version,
        }
    }

    /// Takes back `events`, every event applied since `savepoint` in the order they were
    /// applied, leaving the account exactly as it was at the savepoint. Each record an event
    /// added is keyed by an id that `decide` never reuses, so removing it restores the map.
    pub fn rollback<'a, I>(&mut self, savepoint: Savepoint, events: I)
    where
        I: IntoIterator<Item = &'a Event>,
        I::IntoIter: DoubleEndedIterator + ExactSizeIterator,
    {
        let events = events.into_iter();
        debug_assert_eq!(
            self.version,
            savepoint.version + events.len() as u64,
            "rollback must name every event applied since the savepoint"
        );
        let records = &mut self.records;
        for event in events.rev() {
            records.take_back(event);
        }
        records.verification_submitted_version = savepoint.verification_submitted_version;
        records.verification_decided_version = savepoint.verification_decided_version;
        self.core = savepoint.core;
        self.version = savepoint.version;
    }
}

/// Applies an event, the stream's `version`-th, to the core alone. Public so that `decide`
/// can look ahead on a copy.
pub fn evolve_core(core: &mut Core, event: &Event, version: u64) {
    core.plan.apply(event);
    core.balance.apply(event, version);
    core.trials.apply(event);
}

/// The id of the hold an event resolves, if it resolves one.
pub(crate) fn resolved_hold_id(event: &Event) -> Option<&str> {
    match event {
        Event::HoldCaptured(data) => Some(&data.hold_id),
        Event::HoldReleased(data) => Some(&data.hold_id),
        Event::HoldExpired(data) => Some(&data.hold_id),
        _ => None,
    }
}
