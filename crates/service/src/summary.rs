//! The account summary of SPEC section 8, rendered from the three view shapes. Commands
//! answer from the state they just decided on; reads answer from the projections.

use ledger_domain::catalog::{Catalog, Scope, Tier};
use ledger_domain::events::{Billing, BucketKind};
use ledger_domain::insight::{refresh_dates, TrialState};
use ledger_domain::state::{Balance, PlanState, Trials, VerificationStatus};
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
    /// When the allowance was last reset or renewed.
    pub last_refresh_at: Option<Instant>,
    /// When the scheduler refreshes it next; `null` where billing renews it.
    pub next_refresh_at: Option<Instant>,
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
    #[serde(flatten)]
    pub state: TrialState,
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
    let refresh = refresh_dates(plan, balance, now);
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
        last_refresh_at: refresh.last_refresh_at,
        next_refresh_at: refresh.next_refresh_at,
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
            state: TrialState::held(trial, now),
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
            state: TrialState::offered(terms),
        });
    }
    summaries.sort_by(|a, b| a.model.cmp(&b.model));
    summaries
}
