//! Commands: what callers ask the ledger to do, already parsed but not yet validated
//! against the rules. Validation of ranges and formats happens in `decide`, so a rejection
//! names what was wrong and nothing is written.

use crate::catalog::Tier;
use crate::credits::Credits;
use crate::events::{Billing, Via};
use crate::time::{DurationS, Instant};

/// A request to change an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OpenAccount,
    ChangeSubscription(ChangeSubscription),
    RenewAllowance(RenewAllowance),
    PurchaseTopUp(PurchaseTopUp),
    /// A top-up bought through a payment provider, recording the provider's payment so that
    /// a refund of it can find the lot.
    PurchasePaidTopUp(PaidTopUp),
    /// Takes back the unspent credits of the lot a refunded payment bought.
    RevokeTopUp(RevokeTopUp),
    /// Billing's record of the subscription (a provider's webhook), applied only when it
    /// changes the tier or billing and is not older than the current period: webhooks arrive
    /// late, twice and out of order, and most of them restate what the ledger already has.
    SyncSubscription(ChangeSubscription),
    SubmitBusinessVerification(SubmitBusinessVerification),
    ApproveBusinessVerification,
    RejectBusinessVerification {
        reason: String,
    },
    AddGrant(AddGrant),
    Charge(Charge),
    RefundCharge {
        charge_id: String,
        reason: String,
    },
    PlaceHold(PlaceHold),
    CaptureHold(CaptureHold),
    ReleaseHold {
        hold_id: String,
    },
    /// Housekeeping due at the command's time: expiries, hold timeouts, window closes and
    /// anniversary refreshes. Sent by the scheduler; every other command does it too.
    Tick,
    ConfigureAlerts(crate::alerts::ConfigureAlerts),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSubscription {
    pub tier: Tier,
    pub billing: Option<Billing>,
    pub period_start: Instant,
    pub period_end: Instant,
    pub reference: String,
    /// Enterprise only: a custom monthly allowance; none means unlimited.
    pub allowance: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewAllowance {
    pub invoice_id: String,
    pub period_start: Instant,
    pub period_end: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseTopUp {
    pub purchase_id: String,
    pub credits: u64,
    pub expires_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidTopUp {
    pub top_up: PurchaseTopUp,
    /// The provider's id of the payment (Stripe: the PaymentIntent).
    pub payment_ref: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeTopUp {
    /// The refunded payment (Stripe: the PaymentIntent).
    pub payment_ref: String,
    /// Billing's reference for the refund (Stripe: the charge).
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitBusinessVerification {
    pub company_name: String,
    pub country: String,
    pub registration_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddGrant {
    pub grant_id: String,
    pub credits: u64,
    pub reason: String,
    pub expires_at: Option<Instant>,
}

/// What a run of a model asks for: images, seconds, or neither for per-call models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quantity {
    pub images: Option<u32>,
    pub seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub charge_id: String,
    pub run_id: String,
    pub node_id: String,
    pub model: String,
    pub quantity: Quantity,
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceHold {
    pub hold_id: String,
    pub run_id: String,
    pub node_id: String,
    pub model: String,
    pub quantity: Quantity,
    pub via: Via,
    /// Default 15 minutes, at most 24 hours.
    pub ttl: Option<DurationS>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureHold {
    pub hold_id: String,
    /// The actual quantity; none captures the held quantity.
    pub quantity: Quantity,
}

impl Command {
    /// The stable name of the command, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::OpenAccount => "open_account",
            Command::ChangeSubscription(_) => "change_subscription",
            Command::RenewAllowance(_) => "renew_allowance",
            Command::PurchaseTopUp(_) => "purchase_top_up",
            Command::PurchasePaidTopUp(_) => "purchase_paid_top_up",
            Command::RevokeTopUp(_) => "revoke_top_up",
            Command::SyncSubscription(_) => "sync_subscription",
            Command::SubmitBusinessVerification(_) => "submit_business_verification",
            Command::ApproveBusinessVerification => "approve_business_verification",
            Command::RejectBusinessVerification { .. } => "reject_business_verification",
            Command::AddGrant(_) => "add_grant",
            Command::Charge(_) => "charge",
            Command::RefundCharge { .. } => "refund_charge",
            Command::PlaceHold(_) => "place_hold",
            Command::CaptureHold(_) => "capture_hold",
            Command::ReleaseHold { .. } => "release_hold",
            Command::Tick => "tick",
            Command::ConfigureAlerts(_) => "configure_alerts",
        }
    }
}

impl Command {
    /// Whether the command carries a caller-chosen id. Its replay answers with a record that
    /// never changes once written, so a replay needs no fresher look at the stream.
    pub fn has_caller_id(&self) -> bool {
        match self {
            Command::ChangeSubscription(_)
            | Command::SyncSubscription(_)
            | Command::RenewAllowance(_)
            | Command::PurchaseTopUp(_)
            | Command::PurchasePaidTopUp(_)
            | Command::AddGrant(_)
            | Command::Charge(_)
            | Command::RefundCharge { .. }
            | Command::PlaceHold(_)
            | Command::CaptureHold(_)
            | Command::ReleaseHold { .. } => true,
            // A revocation answers from the lot as it stands, which can change (it expires).
            Command::OpenAccount
            | Command::RevokeTopUp(_)
            | Command::SubmitBusinessVerification(_)
            | Command::ApproveBusinessVerification
            | Command::RejectBusinessVerification { .. }
            | Command::Tick
            | Command::ConfigureAlerts(_) => false,
        }
    }

    /// The id stored in the envelope and hashed into event ids: the caller's id where the
    /// command has one, so that a retried command maps to the same event ids.
    pub fn command_id(&self, now: Instant) -> String {
        // Concatenated rather than formatted, and the instant written only for the commands
        // named by it: this runs for every command, charges above all (issue 18's profile).
        let named = |prefix: &str, id: &str| [prefix, id].concat();
        let at = |prefix: &str| named(prefix, &crate::time::rfc3339(&now));
        match self {
            Command::OpenAccount => "open".into(),
            Command::ChangeSubscription(c) | Command::SyncSubscription(c) => {
                named("subscription:", &c.reference)
            }
            Command::RenewAllowance(c) => named("renewal:", &c.invoice_id),
            Command::PurchaseTopUp(c) => named("top-up:", &c.purchase_id),
            Command::PurchasePaidTopUp(c) => named("top-up:", &c.top_up.purchase_id),
            Command::RevokeTopUp(c) => named("revoke:", &c.payment_ref),
            Command::SubmitBusinessVerification(_) => at("verification-submitted:"),
            Command::ApproveBusinessVerification => at("verification-approved:"),
            Command::RejectBusinessVerification { .. } => at("verification-rejected:"),
            Command::AddGrant(c) => named("grant:", &c.grant_id),
            Command::Charge(c) => named("charge:", &c.charge_id),
            Command::RefundCharge { charge_id, .. } => named("refund:", charge_id),
            Command::PlaceHold(c) => named("hold:", &c.hold_id),
            Command::CaptureHold(c) => named("capture:", &c.hold_id),
            Command::ReleaseHold { hold_id } => named("release:", hold_id),
            Command::Tick => at("tick:"),
            Command::ConfigureAlerts(_) => at("alerts:"),
        }
    }
}
