//! Handlers for what a payment provider reports after the fact (SPEC section 12): revoking
//! the lot a refunded payment bought, and a subscription as billing last saw it. Webhooks
//! arrive late, twice and out of order, so both write nothing when there is nothing new.

use crate::command::*;
use crate::credits::Credits;
use crate::events::*;
use crate::rejection::Rejection;

use super::validation::check_id;
use super::{Ctx, Decision, Reply};

impl Ctx<'_> {
    /// An answer that writes nothing: the summary as it stands.
    fn unchanged(&self) -> Decision {
        Decision::new(Vec::new(), Reply::Summary { created: false })
    }

    pub(super) fn revoke_top_up(&self, c: &RevokeTopUp) -> Result<Decision, Rejection> {
        check_id("payment_ref", &c.payment_ref)?;
        check_id("reference", &c.reference)?;
        // A lot is found by the payment that bought it; an account buys few lots, so a scan
        // of its purchases costs less than another map kept forever.
        let Some(purchase) = self
            .account
            .records
            .purchases
            .values()
            .map(|recorded| &recorded.event)
            .find(|purchase| purchase.payment_ref.as_deref() == Some(c.payment_ref.as_str()))
        else {
            // The refund may have overtaken the purchase: a 404 makes the provider retry.
            return Err(Rejection::NotFound {
                what: "top-up paid by",
                id: c.payment_ref.clone(),
            });
        };
        // Gone already (expired, or revoked by an earlier refund of the same payment):
        // nothing is left to take back.
        let Some(lot) = self
            .core
            .balance
            .of_kind(BucketKind::TopUp)
            .find(|lot| lot.id == purchase.purchase_id)
        else {
            return Ok(self.unchanged());
        };
        let held = self.core.balance.held_from(BucketKind::TopUp, &lot.id);
        let spent = lot
            .credits
            .checked_sub(lot.remaining)
            .and_then(|left| left.checked_sub(held));
        // Returns only give back what was drawn: a lot never holds more than it was bought
        // with, remainder and earmarks together.
        debug_assert!(
            spent.is_some(),
            "lot {} holds more than it was bought with",
            lot.id
        );
        let spent = spent.unwrap_or(Credits::ZERO);
        let event = TopUpRevoked {
            purchase_id: lot.id.clone(),
            payment_ref: c.payment_ref.clone(),
            reference: c.reference.clone(),
            credits: lot.credits,
            revoked: lot.remaining,
            held,
            spent,
        };
        Ok(Decision::summary(event.into(), false))
    }

    pub(super) fn sync_subscription(&self, c: &ChangeSubscription) -> Result<Decision, Rejection> {
        check_id("reference", &c.reference)?;
        if self.account.records.references.contains_key(&c.reference) {
            // The same delivery again: the first answer, or a conflict if it changed.
            return self.change_subscription(c);
        }
        let plan = &self.core.plan;
        // The start of the period billing last set (a change or a billed renewal; anniversary
        // refreshes keep it). An account that never had one takes any subscription, even one
        // that began before the account did.
        let billed_since = (plan.anchor_at != plan.opened_at).then_some(plan.anchor_at);
        let older = billed_since.is_some_and(|start| c.period_start < start);
        let same_plan = c.tier == plan.tier && c.billing == plan.billing;
        if older || same_plan {
            return Ok(self.unchanged());
        }
        self.change_subscription(c)
    }
}
