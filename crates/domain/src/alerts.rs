//! Alerts out (SPEC section 14): the settings an account records (`alerts_configured`) and the
//! pure fold that turns an account's events into the notifications its receiver is owed.
//!
//! The alerts projector runs [`AlertWatch::apply`] over each watched account's stream and
//! writes what it returns into its outbox; nothing here knows about HTTP, signing or retries.
//! Notification ids
//! are derived from the stream position of the event that caused them, so replaying the same
//! history after a crash gives the same ids and the outbox can ignore the repeats.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::buckets::Balance;
use crate::credits::Credits;
use crate::events::Event;
use crate::rejection::Rejection;
use crate::time::{rfc3339, Instant};

/// An account names at most this many low-balance thresholds: each is a notification per
/// crossing, and a long list is a misconfiguration rather than a need.
pub const THRESHOLDS_MAX: usize = 10;
/// A receiver URL is at most this long.
pub const URL_LEN_MAX: usize = 2048;

/// `PUT /v1/accounts/{id}/alerts`: the thresholds and the receiver, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigureAlerts {
    pub low_balance: Vec<u64>,
    /// `None` turns delivery off; the thresholds are still tracked.
    pub url: Option<String>,
}

/// `alerts_configured`: the account's alert settings from now on, replacing earlier ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfigured {
    /// Distinct thresholds, ascending.
    pub low_balance: Vec<Credits>,
    pub url: Option<String>,
}

/// Checks what a caller sent and gives the event's settings. Only the URL's shape is checked
/// here; whether its host may be reached (loopback, private ranges, DNS) needs the network and
/// is the service's guard.
pub fn check_configuration(command: &ConfigureAlerts) -> Result<AlertsConfigured, Rejection> {
    if command.low_balance.len() > THRESHOLDS_MAX {
        return Err(Rejection::invalid(format!(
            "low_balance takes at most {THRESHOLDS_MAX} thresholds"
        )));
    }
    let mut thresholds = BTreeSet::new();
    for &threshold in &command.low_balance {
        if threshold == 0 || threshold > Credits::MAX_COMMAND.get() {
            return Err(Rejection::invalid(format!(
                "each low_balance threshold must be between 1 and {}",
                Credits::MAX_COMMAND
            )));
        }
        if !thresholds.insert(Credits::new(threshold)) {
            return Err(Rejection::invalid(format!(
                "low_balance lists {threshold} twice"
            )));
        }
    }
    if let Some(url) = &command.url {
        check_url_shape(url)?;
    }
    Ok(AlertsConfigured {
        low_balance: thresholds.into_iter().collect(),
        url: command.url.clone(),
    })
}

fn check_url_shape(url: &str) -> Result<(), Rejection> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Err(Rejection::invalid("url must start with https://"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if url.len() > URL_LEN_MAX
        || host.is_empty()
        || host.contains('@')
        || url.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Rejection::invalid(format!(
            "url must be an absolute http(s) URL with a host, no credentials and at most {URL_LEN_MAX} characters"
        )));
    }
    Ok(())
}

/// What a receiver is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertKind {
    #[serde(rename = "balance.low")]
    BalanceLow,
    #[serde(rename = "balance.recovered")]
    BalanceRecovered,
    #[serde(rename = "trial.exhausted")]
    TrialExhausted,
    #[serde(rename = "trial.expired")]
    TrialExpired,
    #[serde(rename = "hold.expired")]
    HoldExpired,
    #[serde(rename = "allowance.renewed")]
    AllowanceRenewed,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::BalanceLow,
        AlertKind::BalanceRecovered,
        AlertKind::TrialExhausted,
        AlertKind::TrialExpired,
        AlertKind::HoldExpired,
        AlertKind::AllowanceRenewed,
    ];

    /// The `type` a receiver sees.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BalanceLow => "balance.low",
            AlertKind::BalanceRecovered => "balance.recovered",
            AlertKind::TrialExhausted => "trial.exhausted",
            AlertKind::TrialExpired => "trial.expired",
            AlertKind::HoldExpired => "hold.expired",
            AlertKind::AllowanceRenewed => "allowance.renewed",
        }
    }
}

/// One notification owed to the account's receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub kind: AlertKind,
    /// Tells apart the notifications one event causes (a charge can cross two thresholds).
    pub key: String,
    pub data: Value,
}

/// Namespace of notification ids (UUID v5), apart from event ids.
const NOTIFICATION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b6e_6f75_6473_2d61_6c65_7274_732d_6964);

/// The id of a notification: the same for the same event of the same stream, however often
/// the history is replayed, so receivers and the outbox can both deduplicate.
pub fn notification_id(account_id: &str, version: u64, key: &str) -> Uuid {
    Uuid::new_v5(
        &NOTIFICATION_ID_NAMESPACE,
        format!("{account_id}\n{version}\n{key}").as_bytes(),
    )
}

/// One account as the alerts projector follows it: its balance (the domain's own fold),
/// whether it is unlimited, its settings, and which thresholds it is below right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertWatch {
    pub balance: Balance,
    pub unlimited: bool,
    pub config: Option<AlertsConfigured>,
    /// Thresholds crossed downwards and not yet recovered: what makes each crossing notify once.
    pub below: BTreeSet<Credits>,
}

impl AlertWatch {
    /// The watch `event` starts: only `account_opened` starts an account.
    pub fn create(event: &Event) -> Option<AlertWatch> {
        match event {
            Event::AccountOpened(data) => Some(AlertWatch {
                balance: Balance::opened(data),
                unlimited: false,
                config: None,
                below: BTreeSet::new(),
            }),
            _ => None,
        }
    }

    /// Folds the stream's `version`-th event, which took effect at `occurred_at`, and returns
    /// the notifications it causes, in the order a receiver should get them.
    pub fn apply(
        &mut self,
        event: &Event,
        version: u64,
        occurred_at: Instant,
    ) -> Vec<Notification> {
        self.balance.apply(event, version);
        match event {
            Event::TierChanged(data) => self.unlimited = data.allowance.is_none(),
            Event::AllowanceRenewed(data) => self.unlimited = data.allowance.is_none(),
            Event::AlertsConfigured(data) => {
                // A threshold kept across a change keeps its state: re-sending the same
                // settings must not notify again.
                self.below
                    .retain(|threshold| data.low_balance.contains(threshold));
                self.config = Some(data.clone());
            }
            _ => {}
        }
        let Some(config) = &self.config else {
            return Vec::new();
        };
        let mut out: Vec<Notification> = event_notification(event).into_iter().collect();
        if !self.unlimited {
            let available = self.balance.available(occurred_at);
            // Falling, the higher threshold is crossed first; rising, the lower one.
            for &threshold in config.low_balance.iter().rev() {
                if available < threshold && self.below.insert(threshold) {
                    out.push(crossing(AlertKind::BalanceLow, threshold, available));
                }
            }
            for &threshold in &config.low_balance {
                if available >= threshold && self.below.remove(&threshold) {
                    out.push(crossing(AlertKind::BalanceRecovered, threshold, available));
                }
            }
        }
        out
    }
}

fn crossing(kind: AlertKind, threshold: Credits, available: Credits) -> Notification {
    Notification {
        kind,
        key: format!("{}:{threshold}", kind.as_str()),
        data: json!({ "threshold": threshold, "available": available }),
    }
}

fn event_notification(event: &Event) -> Option<Notification> {
    let (kind, data) = match event {
        Event::TrialRunConsumed(d) if d.used >= d.limit => (
            AlertKind::TrialExhausted,
            json!({ "model": d.model, "used": d.used, "limit": d.limit }),
        ),
        Event::TrialWindowClosed(d) => (
            AlertKind::TrialExpired,
            json!({ "model": d.model, "closed_at": rfc3339(&d.closed_at) }),
        ),
        Event::HoldExpired(d) => (
            AlertKind::HoldExpired,
            json!({
                "hold_id": d.hold_id,
                "expired_at": rfc3339(&d.expired_at),
                "returned": d.returned.iter().map(|part| part.amount).sum::<Credits>(),
                "forfeited": d.forfeited.iter().map(|part| part.amount).sum::<Credits>(),
            }),
        ),
        Event::AllowanceRenewed(d) => (
            AlertKind::AllowanceRenewed,
            json!({
                "source": d.source,
                "allowance": d.allowance,
                "period_start": rfc3339(&d.allowance_period_start),
                "period_end": rfc3339(&d.allowance_period_end),
                "forfeited": d.forfeited,
            }),
        ),
        _ => return None,
    };
    Some(Notification {
        kind,
        key: kind.as_str().to_string(),
        data,
    })
}
