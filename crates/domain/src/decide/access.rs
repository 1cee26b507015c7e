//! Model access: tier gating, and the trial that may let a lower tier run a model.

use crate::catalog::{Model, Tier, TrialTerms};
use crate::rejection::Rejection;
use crate::state::Trial;
use crate::time::Instant;

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
