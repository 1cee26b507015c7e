//! Request bodies of the HTTP contract. Every one refuses unknown fields; ranges and formats
//! are checked by the domain so that the rules live in one place.

use ledger_domain::admission::{AdmissionNode, NodeType};
use ledger_domain::catalog::Tier;
use ledger_domain::command::{self, Command, Quantity};
use ledger_domain::events::{Billing, Via};
use ledger_domain::{Credits, DurationS, Instant};
use serde::Deserialize;

/// A request body that is one command.
pub trait IntoCommand: serde::de::DeserializeOwned + Send + 'static {
    fn into_command(self) -> Command;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAccount {
    pub account_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub tier: Tier,
    #[serde(default)]
    pub billing: Option<Billing>,
    pub period_start: Instant,
    pub period_end: Instant,
    pub reference: String,
    #[serde(default)]
    pub allowance: Option<u64>,
}

impl IntoCommand for Subscription {
    fn into_command(self) -> Command {
        Command::ChangeSubscription(command::ChangeSubscription {
            tier: self.tier,
            billing: self.billing,
            period_start: self.period_start,
            period_end: self.period_end,
            reference: self.reference,
            allowance: self.allowance.map(Credits::new),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewal {
    pub invoice_id: String,
    pub period_start: Instant,
    pub period_end: Instant,
}

impl IntoCommand for Renewal {
    fn into_command(self) -> Command {
        Command::RenewAllowance(command::RenewAllowance {
            invoice_id: self.invoice_id,
            period_start: self.period_start,
            period_end: self.period_end,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    pub purchase_id: String,
    pub credits: u64,
    #[serde(default)]
    pub expires_at: Option<Instant>,
}

impl IntoCommand for TopUp {
    fn into_command(self) -> Command {
        Command::PurchaseTopUp(command::PurchaseTopUp {
            purchase_id: self.purchase_id,
            credits: self.credits,
            expires_at: self.expires_at,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    pub company_name: String,
    pub country: String,
    pub registration_number: String,
}

impl IntoCommand for Verification {
    fn into_command(self) -> Command {
        Command::SubmitBusinessVerification(command::SubmitBusinessVerification {
            company_name: self.company_name,
            country: self.country,
            registration_number: self.registration_number,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub grant_id: String,
    pub credits: u64,
    pub reason: String,
    #[serde(default)]
    pub expires_at: Option<Instant>,
}

impl IntoCommand for Grant {
    fn into_command(self) -> Command {
        Command::AddGrant(command::AddGrant {
            grant_id: self.grant_id,
            credits: self.credits,
            reason: self.reason,
            expires_at: self.expires_at,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    #[serde(default)]
    pub via: Option<Via>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub node_id: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub images: Option<u32>,
    #[serde(default)]
    pub seconds: Option<u32>,
}

impl Node {
    pub fn into_node(self) -> AdmissionNode {
        AdmissionNode {
            node_id: self.node_id,
            node_type: self.node_type,
            model: self.model,
            quantity: Quantity {
                images: self.images,
                seconds: self.seconds,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    pub charge_id: String,
    pub run_id: String,
    pub node_id: String,
    pub model: String,
    #[serde(default)]
    pub images: Option<u32>,
    #[serde(default)]
    pub seconds: Option<u32>,
    #[serde(default)]
    pub via: Option<Via>,
}

impl IntoCommand for Charge {
    fn into_command(self) -> Command {
        Command::Charge(command::Charge {
            charge_id: self.charge_id,
            run_id: self.run_id,
            node_id: self.node_id,
            model: self.model,
            quantity: Quantity {
                images: self.images,
                seconds: self.seconds,
            },
            via: self.via.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub hold_id: String,
    pub run_id: String,
    pub node_id: String,
    pub model: String,
    #[serde(default)]
    pub images: Option<u32>,
    #[serde(default)]
    pub seconds: Option<u32>,
    #[serde(default)]
    pub ttl: Option<DurationS>,
    #[serde(default)]
    pub via: Option<Via>,
}

impl IntoCommand for Hold {
    fn into_command(self) -> Command {
        Command::PlaceHold(command::PlaceHold {
            hold_id: self.hold_id,
            run_id: self.run_id,
            node_id: self.node_id,
            model: self.model,
            quantity: Quantity {
                images: self.images,
                seconds: self.seconds,
            },
            via: self.via.unwrap_or_default(),
            ttl: self.ttl,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    #[serde(default)]
    pub images: Option<u32>,
    #[serde(default)]
    pub seconds: Option<u32>,
}

/// `PUT /v1/accounts/{id}/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    pub low_balance: Vec<u64>,
    /// Required, though it may be null (delivery off): serde would read a missing `Option` as
    /// `None` and turn delivery off for a body that never said so.
    #[serde(deserialize_with = "present")]
    pub url: Option<String>,
}

/// Reads a field that must be present, null or not.
fn present<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer)
}

impl IntoCommand for Alerts {
    fn into_command(self) -> Command {
        Command::ConfigureAlerts(ledger_domain::alerts::ConfigureAlerts {
            low_balance: self.low_balance,
            url: self.url,
        })
    }
}

/// `?min_position=P` on reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default)]
    pub min_position: Option<u64>,
}

/// `?after=&limit=` on the events endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub min_position: Option<u64>,
}

/// `?at=` on explain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    #[serde(default)]
    pub at: Option<Instant>,
    #[serde(default)]
    pub min_position: Option<u64>,
}

/// `?since=&until=` on the audit export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    pub since: Option<Instant>,
    #[serde(default)]
    pub until: Option<Instant>,
}
