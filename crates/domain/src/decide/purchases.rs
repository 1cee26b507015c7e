//! Handlers that add credits: top-up purchases and grants.

use crate::command::*;
use crate::events::*;
use crate::rejection::Rejection;

use super::validation::{check_amount, check_id, check_text};
use super::{Ctx, Decision, Reply};

impl Ctx<'_> {
    /// A top-up; `payment_ref` names the provider's payment that bought it, if any.
    pub(super) fn purchase_top_up(
        &self,
        c: &PurchaseTopUp,
        payment_ref: Option<&str>,
    ) -> Result<Decision, Rejection> {
        check_id("purchase_id", &c.purchase_id)?;
        if let Some(payment_ref) = payment_ref {
            check_id("payment_ref", payment_ref)?;
        }
        if let Some(recorded) = self.account.records.purchases.get(&c.purchase_id) {
            let previous = &recorded.event;
            // Compared as sent: leaving out an `expires_at` that was sent, or sending one
            // that was defaulted, is a different body. v1 events did not record which it was.
            let same_expiry = match (previous.expires_at_requested, c.expires_at) {
                (Some(true), Some(at)) | (None, Some(at)) => at == previous.expires_at,
                (Some(true), None) | (Some(false), Some(_)) => false,
                (Some(false), None) | (None, None) => true,
            };
            let same = previous.credits.get() == c.credits
                && same_expiry
                && previous.payment_ref.as_deref() == payment_ref;
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
            payment_ref: payment_ref.map(str::to_string),
        };
        Ok(Decision::summary(event.into(), true))
    }

    pub(super) fn add_grant(&self, c: &AddGrant) -> Result<Decision, Rejection> {
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
        Ok(Decision::summary(event.into(), true))
    }
}
