//! Handlers for the plan: opening an account, changing the subscription, renewing the
//! allowance.

use crate::catalog::{Catalog, Tier};
use crate::command::*;
use crate::credits::Credits;
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::*;
use crate::time::{add_months, anniversary_period, Instant};

use super::validation::{check_amount, check_id, check_period, valid_account_id};
use super::{Ctx, Decision};

pub(super) fn open_account(
    account: &Account,
    catalog: &Catalog,
    now: Instant,
) -> Result<Decision, Rejection> {
    if !valid_account_id(&account.account_id) {
        return Err(Rejection::invalid(
            "account_id must be 1 to 64 characters of letters, digits, '_' and '-'",
        ));
    }
    let plan = catalog.plan(Tier::Free);
    let allowance = plan
        .monthly_allowance
        .ok_or_else(|| Rejection::invalid("the catalog's free plan has no allowance"))?;
    let event = AccountOpened {
        account_id: account.account_id.clone(),
        tier: Tier::Free,
        scope: plan.scope,
        period_start: now,
        period_end: add_months(now, 1),
        allowance,
    };
    Ok(Decision::summary(event.into(), true))
}

impl Ctx<'_> {
    /// What a reset of the allowance forfeits: whatever the current one has left.
    fn allowance_left(&self) -> Credits {
        self.core
            .balance
            .allowance()
            .map_or(Credits::ZERO, |bucket| bucket.remaining)
    }

    /// The allowance a plan gives per refresh, with the annual bonus where it applies.
    fn plan_allowance(
        &self,
        tier: Tier,
        billing: Option<Billing>,
        custom: Option<Credits>,
    ) -> Result<Option<Credits>, Rejection> {
        let base = match (tier, custom) {
            (Tier::Enterprise, Some(custom)) => return Ok(Some(custom)),
            _ => self.catalog.plan(tier).monthly_allowance,
        };
        match (base, billing) {
            (Some(amount), Some(Billing::Annual)) => amount
                .checked_percent(100 + u64::from(self.catalog.annual_bonus_percent))
                .map(Some)
                .ok_or_else(|| Rejection::invalid("allowance overflows")),
            (base, _) => Ok(base),
        }
    }

    pub(super) fn change_subscription(
        &self,
        c: &ChangeSubscription,
    ) -> Result<Decision, Rejection> {
        check_id("reference", &c.reference)?;
        if let Some(recorded) = self.account.records.references.get(&c.reference) {
            let previous = &recorded.event;
            let same = previous.to == c.tier
                && previous.billing == c.billing
                && previous.period_start == c.period_start
                && previous.period_end == c.period_end
                && (c.tier != Tier::Enterprise || previous.allowance == c.allowance);
            return self.summary_replay(same, &c.reference, recorded.version);
        }
        check_period(c.period_start, c.period_end)?;
        if c.period_end <= self.now {
            return Err(Rejection::invalid("period_end is already past"));
        }
        match (c.tier, c.billing) {
            (Tier::Free, Some(_)) => {
                return Err(Rejection::invalid(
                    "the free tier has no billing: send billing null",
                ))
            }
            (Tier::Pro | Tier::Business | Tier::Enterprise, None) => {
                return Err(Rejection::invalid(
                    "paid tiers need billing \"monthly\" or \"annual\"",
                ))
            }
            _ => {}
        }
        let custom = match c.allowance {
            Some(_) if c.tier != Tier::Enterprise => {
                return Err(Rejection::invalid(
                    "only enterprise may carry a custom allowance",
                ))
            }
            Some(amount) => Some(check_amount("allowance", amount.get())?),
            None => None,
        };
        if self.catalog.plan(c.tier).requires_verification
            && !matches!(self.core.plan.verification, Verification::Approved(_))
        {
            return Err(Rejection::BusinessVerificationRequired {
                status: self.core.plan.verification.status().as_str(),
            });
        }
        let allowance = self.plan_allowance(c.tier, c.billing, custom)?;
        let (allowance_period_start, allowance_period_end) =
            subscription_window(c.tier, c.billing, c.period_start, c.period_end, self.now);
        let event = TierChanged {
            from: self.core.plan.tier,
            to: c.tier,
            billing: c.billing,
            scope: self.catalog.plan(c.tier).scope,
            reference: c.reference.clone(),
            period_start: c.period_start,
            period_end: c.period_end,
            allowance_period_start,
            allowance_period_end,
            allowance,
            forfeited: self.allowance_left(),
        };
        Ok(Decision::summary(event.into(), false))
    }

    pub(super) fn renew_allowance(&self, c: &RenewAllowance) -> Result<Decision, Rejection> {
        check_id("invoice_id", &c.invoice_id)?;
        if let Some(recorded) = self.account.records.invoices.get(&c.invoice_id) {
            let previous = &recorded.event;
            let same =
                previous.period_start == c.period_start && previous.period_end == c.period_end;
            return self.summary_replay(same, &c.invoice_id, recorded.version);
        }
        check_period(c.period_start, c.period_end)?;
        if self.core.plan.tier == Tier::Free {
            return Err(Rejection::invalid(
                "free accounts refresh on their anniversary, not on invoices",
            ));
        }
        if c.period_start <= self.core.plan.subscription_start {
            return Err(Rejection::StaleRenewal {
                period_start: c.period_start,
                current_period_start: self.core.plan.subscription_start,
            });
        }
        // A late annual renewal lands in the window that contains its arrival, as a
        // backdated subscription does.
        let (allowance_period_start, allowance_period_end) = subscription_window(
            self.core.plan.tier,
            self.core.plan.billing,
            c.period_start,
            c.period_end,
            self.now,
        );
        let event = AllowanceRenewed {
            source: RenewalSource::Billing,
            invoice_id: Some(c.invoice_id.clone()),
            period_start: c.period_start,
            period_end: c.period_end,
            allowance_period_start,
            allowance_period_end,
            allowance: self.core.plan.plan_allowance,
            forfeited: self.allowance_left(),
        };
        Ok(Decision::summary(event.into(), false))
    }
}

/// The allowance window a subscription change starts in. Free and annual plans refresh on
/// the monthly anniversaries of `period_start`, so a backdated one (an annual year that began
/// months ago) lands straight in the anniversary window that contains `now`, with that
/// window's full allowance; no refresh for an earlier window is ever written. Monthly paid
/// plans have one window: the billed period.
fn subscription_window(
    tier: Tier,
    billing: Option<Billing>,
    period_start: Instant,
    period_end: Instant,
    now: Instant,
) -> (Instant, Instant) {
    let monthly_anniversaries = tier == Tier::Free || billing == Some(Billing::Annual);
    if !monthly_anniversaries {
        return (period_start, period_end);
    }
    let (start, end) = if now <= period_start {
        (period_start, add_months(period_start, 1))
    } else {
        anniversary_period(period_start, now)
    };
    if tier == Tier::Free {
        (start, end)
    } else {
        (start, end.min(period_end))
    }
}
