//! Handlers for business verification: submit, approve, reject.

use crate::command::*;
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::*;

use super::validation::check_text;
use super::{Ctx, Decision, Reply};

impl Ctx<'_> {
    pub(super) fn submit_verification(
        &self,
        c: &SubmitBusinessVerification,
    ) -> Result<Decision, Rejection> {
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

    pub(super) fn approve_verification(&self) -> Result<Decision, Rejection> {
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

    pub(super) fn reject_verification(&self, reason: &str) -> Result<Decision, Rejection> {
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
}
