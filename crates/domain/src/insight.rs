//! Insight for the product pages (SPEC section 13): the model picker's access badges and the
//! trial state they show. A badge is the admission check's own answer for one run of the
//! model ([`check_access`], the code `admit` and every charge call), so a badge can never
//! disagree with what a charge would do.

use serde::Serialize;

use crate::catalog::{Catalog, Model, ModelKind, PriceUnit, Tier, TrialTerms};
use crate::credits::Credits;
use crate::decide::{check_access, Access};
use crate::events::TrialKind;
use crate::state::{Core, Trial, TrialStatus, Trials};
use crate::time::Instant;

pub use crate::decide::{refresh_dates, RefreshDates};

/// How the model picker shows a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadgeAccess {
    /// Paid from credits, or unlimited.
    Open,
    /// Runs only through a trial grant that still has headroom.
    Trial,
    /// The tier is too low, or the trial is exhausted or expired.
    Locked,
}

/// A model's price as the picker shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PriceTag {
    pub unit: PriceUnit,
    pub credits: Credits,
}

/// A trial as an account sees it: as granted and used, or as the catalog offers it while
/// the account has not touched it (`unused`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrialState {
    pub kind: TrialKind,
    /// Free runs of a count trial; `null` for a window.
    pub limit: Option<u32>,
    pub used: u32,
    pub opened_at: Option<Instant>,
    pub closes_at: Option<Instant>,
    pub status: TrialStatus,
}

impl TrialState {
    /// The state of a trial the account holds, at `at`.
    pub fn held(trial: &Trial, at: Instant) -> TrialState {
        TrialState {
            kind: trial.kind,
            limit: (trial.kind == TrialKind::Runs).then_some(trial.limit),
            used: trial.used,
            opened_at: trial.opened_at,
            closes_at: trial.closes_at,
            status: trial.status(at),
        }
    }

    /// The state of a catalog trial the account has not touched yet.
    pub fn offered(terms: TrialTerms) -> TrialState {
        TrialState {
            kind: terms.kind(),
            limit: match terms {
                TrialTerms::Runs(runs) => Some(runs),
                TrialTerms::Window(_) => None,
            },
            used: 0,
            opened_at: None,
            closes_at: None,
            status: TrialStatus::Unused,
        }
    }

    /// The model's trial on an account at `at`: held, offered, or `None` for a model
    /// without one. A trial granted under older terms stays as granted.
    pub fn of(model: &Model, trials: &Trials, at: Instant) -> Option<TrialState> {
        match trials.get(&model.id) {
            Some(trial) => Some(TrialState::held(trial, at)),
            None => model.free_trial.map(TrialState::offered),
        }
    }
}

/// One catalog model as the picker shows it to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelBadge {
    pub model: String,
    pub kind: ModelKind,
    pub price: PriceTag,
    pub access: BadgeAccess,
    /// The lowest tier that opens the model; `null` when it is open.
    pub required_tier: Option<Tier>,
    pub trial: Option<TrialState>,
    /// The code a run would be refused with (`MODEL_TIER_REQUIRED`, `TRIAL_EXHAUSTED`,
    /// `TRIAL_EXPIRED`); `null` unless locked.
    pub reason_code: Option<&'static str>,
}

/// The badge of one model on `account` at `now`.
pub fn model_badge(account: &Core, model: &Model, now: Instant) -> ModelBadge {
    let trial = account.trials.get(&model.id);
    let (access, reason_code) = match check_access(account.plan.tier, trial, model, now) {
        Ok(Access::Paid) => (BadgeAccess::Open, None),
        Ok(Access::Trial) => (BadgeAccess::Trial, None),
        Err(rejection) => (BadgeAccess::Locked, Some(rejection.code())),
    };
    ModelBadge {
        model: model.id.clone(),
        kind: model.kind,
        price: PriceTag {
            unit: model.price.unit,
            credits: model.price.unit_price,
        },
        access,
        required_tier: (access != BadgeAccess::Open).then_some(model.min_tier),
        trial: TrialState::of(model, &account.trials, now),
        reason_code,
    }
}

/// Every catalog model's badge on `account` at `now`, in catalog order.
pub fn model_badges(account: &Core, catalog: &Catalog, now: Instant) -> Vec<ModelBadge> {
    catalog
        .models()
        .iter()
        .map(|model| model_badge(account, model, now))
        .collect()
}
