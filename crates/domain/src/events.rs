//! The events: what happened to an account, recorded with resolved prices and amounts so
//! that replaying history never depends on today's catalog. Type names are stable snake_case
//! strings (SPEC section 10), independent of the Rust names.

use serde::{Deserialize, Serialize};

pub use crate::alerts::AlertsConfigured;
use crate::catalog::{PriceUnit, Scope, Tier};
use crate::credits::Credits;
use crate::time::Instant;

/// Monthly or annual billing of a paid plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    Monthly,
    Annual,
}

impl Billing {
    /// The API's name, as it serialises.
    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Monthly => "monthly",
            Billing::Annual => "annual",
        }
    }
}

/// Where a run was started: the app (canvas) or the public API. Only API runs need scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    #[default]
    #[serde(alias = "ui", alias = "canvas", alias = "web")]
    App,
    Api,
}

/// A kind of bucket credits sit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketKind {
    Allowance,
    Grant,
    TopUp,
    /// Not a bucket: marks the cost of an unlimited (enterprise) charge.
    Unlimited,
}

/// An amount taken from or returned to one bucket. `id` is the bucket's id: the allowance's
/// period start, a top-up's `purchase_id`, a grant's `grant_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub bucket: BucketKind,
    pub id: String,
    pub amount: Credits,
}

/// How a run was paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaidBy {
    Credits,
    Trial,
    Unlimited,
    FreeNode,
}

/// Why the allowance was renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalSource {
    /// A paid invoice, sent by billing.
    Billing,
    /// The monthly anniversary of a free or annual account, emitted by the ledger's scheduler.
    Anniversary,
}

/// The shape of a trial grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialKind {
    Runs,
    Window,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountOpened {
    pub account_id: String,
    pub tier: Tier,
    pub scope: Scope,
    pub period_start: Instant,
    pub period_end: Instant,
    pub allowance: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierChanged {
    pub from: Tier,
    pub to: Tier,
    pub billing: Option<Billing>,
    pub scope: Scope,
    pub reference: String,
    /// The subscription period billing sent.
    pub period_start: Instant,
    pub period_end: Instant,
    /// The allowance window this change starts in: for free and annual plans the monthly
    /// anniversary window of `period_start` that contains the command's time, so a
    /// backdated subscription starts with the current window's full allowance (v2; v1 events
    /// read as `period_start`).
    pub allowance_period_start: Instant,
    /// The allowance period this change starts (a month for annual plans).
    pub allowance_period_end: Instant,
    /// The new allowance; `None` means unlimited.
    pub allowance: Option<Credits>,
    /// What was left of the old allowance, forfeited by the reset.
    pub forfeited: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessVerificationSubmitted {
    pub company_name: String,
    pub country: String,
    pub registration_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessVerificationApproved {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessVerificationRejected {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowanceRenewed {
    pub source: RenewalSource,
    /// Billing's invoice; `None` for a scheduled anniversary refresh.
    pub invoice_id: Option<String>,
    /// The subscription period after the renewal.
    pub period_start: Instant,
    pub period_end: Instant,
    /// The allowance period the new allowance lives in.
    pub allowance_period_start: Instant,
    pub allowance_period_end: Instant,
    /// The new allowance; `None` means unlimited.
    pub allowance: Option<Credits>,
    /// What was left of the old allowance, forfeited by the reset.
    pub forfeited: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUpPurchased {
    pub purchase_id: String,
    pub credits: Credits,
    pub expires_at: Instant,
    /// Whether the request carried `expires_at` (else it is the catalog's default after the
    /// purchase), so a retry is compared with the body as it was sent (v2; `None` in events
    /// upcast from v1, which did not record it).
    pub expires_at_requested: Option<bool>,
    /// The payment provider's id of the payment that bought the lot (Stripe: the
    /// PaymentIntent), so that a refund of that payment finds the lot (v3; `None` for
    /// purchases sent without one, and in events upcast from v1 and v2).
    pub payment_ref: Option<String>,
}

/// A top-up lot taken back because the payment that bought it was refunded: what was left
/// of it leaves the ledger, and what had been spent stays spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUpRevoked {
    pub purchase_id: String,
    /// The refunded payment (Stripe: the PaymentIntent).
    pub payment_ref: String,
    /// Billing's reference for the refund (Stripe: the refunded charge).
    pub reference: String,
    /// The credits the lot was bought with.
    pub credits: Credits,
    /// The lot's unspent remainder, removed (counted as forfeited in the totals).
    pub revoked: Credits,
    /// Credits of the lot earmarked by open holds: forfeited when the holds give them back.
    pub held: Credits,
    /// Credits of the lot already charged (net of refunds): `credits - revoked - held`.
    pub spent: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUpExpired {
    pub purchase_id: String,
    pub expired_at: Instant,
    pub forfeited: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantAdded {
    pub grant_id: String,
    pub credits: Credits,
    pub reason: String,
    pub expires_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantExpired {
    pub grant_id: String,
    pub expired_at: Instant,
    pub forfeited: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialGranted {
    pub model: String,
    pub kind: TrialKind,
    /// For a count trial: how many free runs.
    pub runs: Option<u32>,
    /// For a time trial: how long the window stays open.
    pub window_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialRunConsumed {
    pub model: String,
    /// The charge or hold that used the run.
    pub run_ref: String,
    pub used: u32,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialWindowOpened {
    pub model: String,
    pub opened_at: Instant,
    pub closes_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialWindowClosed {
    pub model: String,
    pub closed_at: Instant,
}

/// `credits_charged`, schema version 3. Version 1 lacked `via`, `paid_by` and
/// `balance_after`; see [`crate::upcast`]. Version 3 has version 2's fields: it marks a charge
/// whose refund, if any, is a `charge_refunded` v2 that names it, which is all the usage view
/// needs to know to forget it ([`crate::usage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditsCharged {
    pub charge_id: String,
    pub run_id: String,
    pub node_id: String,
    pub model: String,
    pub via: Via,
    pub price_unit: PriceUnit,
    pub unit_price: Credits,
    /// Images, seconds, or 1 for a per-call model.
    pub quantity: u32,
    pub cost: Credits,
    pub paid_by: PaidBy,
    pub drawn_from: Vec<Part>,
    /// Credits available right after the charge; `None` when unlimited, or unknown (v1).
    pub balance_after: Option<Credits>,
}

/// `charge_refunded`, schema version 2. Version 1 named the charge by `charge_id` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRefunded {
    pub charge_id: String,
    /// The refunded charge's model; `None` only for a version 1 refund.
    pub model: Option<String>,
    /// The stream version of the refunded charge's `credits_charged`; `None` only for a
    /// version 1 refund.
    pub charge_version: Option<u64>,
    /// The refunded charge's cost; `None` only for a version 1 refund. The parts do not
    /// always add up to it: an unlimited account's charge returns nothing.
    pub cost: Option<Credits>,
    pub reason: String,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
    pub balance_after: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldPlaced {
    pub hold_id: String,
    pub run_id: String,
    pub node_id: String,
    pub model: String,
    pub via: Via,
    pub price_unit: PriceUnit,
    pub unit_price: Credits,
    pub quantity: u32,
    pub cost: Credits,
    pub paid_by: PaidBy,
    pub earmarked: Vec<Part>,
    pub ttl_s: u64,
    pub expires_at: Instant,
    pub balance_after: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldCaptured {
    pub hold_id: String,
    pub quantity: u32,
    pub cost: Credits,
    pub drawn_from: Vec<Part>,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
    pub balance_after: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldReleased {
    pub hold_id: String,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
    pub balance_after: Option<Credits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldExpired {
    pub hold_id: String,
    pub expired_at: Instant,
    pub returned: Vec<Part>,
    pub forfeited: Vec<Part>,
}

macro_rules! events {
    ($( $variant:ident($payload:ident) = $name:literal v $version:literal ),+ $(,)?) => {
        /// Everything that can happen to an account.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event {
            $( $variant($payload), )+
        }

        /// Every event type name, in the order of SPEC section 10.
        pub const EVENT_TYPES: &[&str] = &[$( $name, )+];

        impl Event {
            /// The stable type name stored with the event.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $name, )+
                }
            }

            /// The schema version this code writes for the event's type.
            pub fn schema_version(&self) -> u32 {
                match self {
                    $( Event::$variant(_) => $version, )+
                }
            }

            /// The event's `data`, as JSON.
            pub fn data_json(&self) -> serde_json::Value {
                match self {
                    // Serialising these plain structs cannot fail: no maps with non-string
                    // keys, no custom serialisers that error.
                    $( Event::$variant(data) => serde_json::to_value(data).expect("event data serialises"), )+
                }
            }

            /// The event's `data` as JSON text, ready to embed in an envelope. Serialised once
            /// and never parsed back: `to_raw_value` trusts serde_json's own output, where
            /// `RawValue::from_string` would validate it again on every sealed event.
            pub fn raw_data(&self) -> Box<serde_json::value::RawValue> {
                match self {
                    $( Event::$variant(data) => serde_json::value::to_raw_value(data).expect("event data serialises"), )+
                }
            }

            /// Reads `data` of the current schema version of `type_name`.
            pub fn from_current(type_name: &str, data: &str) -> Result<Event, DecodeError> {
                match type_name {
                    $( $name => serde_json::from_str(data).map(Event::$variant).map_err(|err| DecodeError::Data {
                        type_name: $name, message: err.to_string()
                    }), )+
                    other => Err(DecodeError::UnknownType(other.to_string())),
                }
            }

            /// The current schema version of `type_name`, if the type exists.
            pub fn current_schema_version(type_name: &str) -> Option<u32> {
                match type_name {
                    $( $name => Some($version), )+
                    _ => None,
                }
            }
        }

        $(
            impl From<$payload> for Event {
                fn from(data: $payload) -> Event {
                    Event::$variant(data)
                }
            }
        )+
    };
}

events! {
    AccountOpened(AccountOpened) = "account_opened" v 1,
    TierChanged(TierChanged) = "tier_changed" v 2,
    BusinessVerificationSubmitted(BusinessVerificationSubmitted) = "business_verification_submitted" v 1,
    BusinessVerificationApproved(BusinessVerificationApproved) = "business_verification_approved" v 1,
    BusinessVerificationRejected(BusinessVerificationRejected) = "business_verification_rejected" v 1,
    AllowanceRenewed(AllowanceRenewed) = "allowance_renewed" v 1,
    TopUpPurchased(TopUpPurchased) = "top_up_purchased" v 3,
    TopUpExpired(TopUpExpired) = "top_up_expired" v 1,
    GrantAdded(GrantAdded) = "grant_added" v 1,
    GrantExpired(GrantExpired) = "grant_expired" v 1,
    TrialGranted(TrialGranted) = "trial_granted" v 1,
    TrialRunConsumed(TrialRunConsumed) = "trial_run_consumed" v 1,
    TrialWindowOpened(TrialWindowOpened) = "trial_window_opened" v 1,
    TrialWindowClosed(TrialWindowClosed) = "trial_window_closed" v 1,
    CreditsCharged(CreditsCharged) = "credits_charged" v 3,
    ChargeRefunded(ChargeRefunded) = "charge_refunded" v 2,
    HoldPlaced(HoldPlaced) = "hold_placed" v 1,
    HoldCaptured(HoldCaptured) = "hold_captured" v 1,
    HoldReleased(HoldReleased) = "hold_released" v 1,
    HoldExpired(HoldExpired) = "hold_expired" v 1,
    TopUpRevoked(TopUpRevoked) = "top_up_revoked" v 1,
    AlertsConfigured(AlertsConfigured) = "alerts_configured" v 1,
}

/// An event that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event type {type_name:?} has no schema version {version} (this code knows up to {current})")]
    UnknownVersion {
        type_name: String,
        version: u32,
        current: u32,
    },
    #[error("invalid {type_name} data: {message}")]
    Data {
        type_name: &'static str,
        message: String,
    },
    #[error("invalid envelope: {0}")]
    Envelope(String),
}
