//! The account summary of SPEC section 8, rendered from the three view shapes. Commands
//! answer from the state they just decided on; reads answer from the projections.

use ledger_domain::catalog::{Catalog, Scope, Tier, TrialTerms};
use ledger_domain::events::TrialKind;
use ledger_domain::events::{Billing, BucketKind};
use ledger_domain::state::{Balance, PlanState, TrialStatus, Trials, VerificationStatus};
use ledger_domain::{Credits, Instant};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub account_id: String,
    pub tier: Tier,
    pub billing: Option<Billing>,
    pub scope: Scope,
    pub balance: BalanceSummary,
    pub unlimited: bool,
    pub trials: Vec<TrialSummary>,
    pub business_verification: VerificationStatus,
    pub position: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BalanceSummary {
    /// Credits available now; `null` when unlimited.
    pub total: Option<Credits>,
    /// The live allowance (0 once its period has ended and no renewal came).
    pub allowance: Credits,
    pub period_end: Option<Instant>,
    pub top_ups: Vec<LotSummary>,
    pub grants: Vec<GrantSummary>,
    pub held: Credits,
}

#[derive(Debug, Clone, Serialize)]
pub struct LotSummary {
    pub lot_id: String,
    pub remaining: Credits,
    pub expires_at: Instant,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrantSummary {
    pub grant_id: String,
    pub remaining: Credits,
    pub expires_at: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrialSummary {
    pub model: String,
    pub kind: TrialKind,
    /// Free runs for a count trial; `null` for a window.
    pub limit: Option<u32>,
    pub used: u32,
    pub opened_at: Option<Instant>,
    pub closes_at: Option<Instant>,
    pub status: TrialStatus,
}

/// Renders the summary as of `now`: buckets past their expiry are left out even before
/// their expiry event is written, as decisions already ignore them.
pub fn summarize(
    catalog: &Catalog,
    account_id: &str,
    plan: &PlanState,
    balance: &Balance,
    trials: &Trials,
    now: Instant,
    position: Option<u64>,
) -> Summary {
    Summary {
        account_id: account_id.to_string(),
        tier: plan.tier,
        billing: plan.billing,
        scope: plan.scope,
        balance: BalanceSummary {
            total: (!plan.unlimited).then(|| balance.available(now)),
            allowance: balance.live_remaining(BucketKind::Allowance, now),
            period_end: balance.allowance().and_then(|bucket| bucket.expires_at),
            top_ups: balance
                .live(BucketKind::TopUp, now)
                .map(|lot| LotSummary {
                    lot_id: lot.id.clone(),
                    remaining: lot.remaining,
                    expires_at: lot.expires_at.unwrap_or(now),
                })
                .collect(),
            grants: balance
                .live(BucketKind::Grant, now)
                .map(|lot| GrantSummary {
                    grant_id: lot.id.clone(),
                    remaining: lot.remaining,
                    expires_at: lot.expires_at,
                })
                .collect(),
            held: balance.held(),
        },
        unlimited: plan.unlimited,
        trials: trial_summaries(catalog, trials, now),
        business_verification: plan.verification.status(),
        position,
    }
}

/// Every trial the account has used, plus the catalog's trials it has not touched yet
/// (status `unused`), so a free account can see what it may try.
fn trial_summaries(catalog: &Catalog, trials: &Trials, now: Instant) -> Vec<TrialSummary> {
    let mut summaries: Vec<TrialSummary> = trials
        .models
        .iter()
        .map(|(model, trial)| TrialSummary {
            model: model.clone(),
            kind: trial.kind,
            limit: (trial.kind == TrialKind::Runs).then_some(trial.limit),
            used: trial.used,
            opened_at: trial.opened_at,
            closes_at: trial.closes_at,
            status: trial.status(now),
        })
        .collect();
    for model in catalog.models() {
        let Some(terms) = model.free_trial else {
            continue;
        };
        if trials.models.contains_key(&model.id) {
            continue;
        }
        summaries.push(TrialSummary {
            model: model.id.clone(),
            kind: terms.kind(),
            limit: match terms {
                TrialTerms::Runs(runs) => Some(runs),
                TrialTerms::Window(_) => None,
            },
            used: 0,
            opened_at: None,
            closes_at: None,
            status: TrialStatus::Unused,
        });
    }
    summaries.sort_by(|a, b| a.model.cmp(&b.model));
    summaries
}
