//! `decide`: state + command + time → events or a rejection. Every rule of SPEC sections 2
//! to 7 is enforced below this module and nowhere else; `evolve` only folds what this
//! produced. This file is the dispatcher: each command has a thin handler in a module of
//! its own topic, and the rules they share (validation, pricing, access, trials, the due
//! list, receipts) each have one module.

mod access;
mod alerts;
mod billing;
mod holds;
mod housekeeping;
mod plan;
mod pricing;
mod purchases;
mod receipts;
mod runs;
mod trials;
mod validation;
mod verification;

use crate::catalog::Catalog;
use crate::command::*;
use crate::credits::Credits;
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::*;
use crate::time::Instant;

pub use access::{check_access, Access};
pub use holds::{HOLD_TTL_DEFAULT, HOLD_TTL_MAX};
pub use housekeeping::{housekeeping, next_due_at, refresh_dates, RefreshDates};
pub use pricing::{cost_of, priced_quantity, request_quantity};
pub use receipts::{ChargeReceipt, HoldReceipt, HoldResolutionReceipt, RefundReceipt};
pub use validation::{valid_account_id, ID_LEN_MAX, TEXT_LEN_MAX};

/// What a command decided: the events to append (none for an idempotent retry) and the
/// answer to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub reply: Reply,
    /// An idempotent retry: the first answer again, nothing to write.
    pub replayed: bool,
    /// For a replay, the stream version of the event whose answer it repeats: the answer is
    /// the account as of that version, at that event's time and position.
    pub replay_of: Option<u64>,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer with the account summary; `created` for 201.
    Summary {
        created: bool,
    },
    /// The verification was submitted (202) or decided (200).
    Verification {
        submitted: bool,
    },
    Charged(ChargeReceipt),
    Refunded(RefundReceipt),
    HoldPlaced(HoldReceipt),
    HoldResolved(HoldResolutionReceipt),
    /// Housekeeping only.
    Ticked,
    /// The alert settings were recorded.
    AlertsConfigured,
}

impl Decision {
    fn new(events: Vec<Event>, reply: Reply) -> Decision {
        Decision {
            events,
            reply,
            replayed: false,
            replay_of: None,
        }
    }

    /// One event, answered with the account summary (`created` for 201).
    fn summary(event: Event, created: bool) -> Decision {
        Decision::new(vec![event], Reply::Summary { created })
    }

    fn replay(reply: Reply, version: u64) -> Decision {
        Decision {
            events: Vec::new(),
            reply,
            replayed: true,
            replay_of: Some(version),
        }
    }
}

/// Decides `command` on `account` at `now`.
pub fn decide(
    account: &Account,
    catalog: &Catalog,
    command: &Command,
    now: Instant,
) -> Result<Decision, Rejection> {
    let Some(stored) = account.core.as_ref() else {
        return match command {
            Command::OpenAccount => plan::open_account(account, catalog, now),
            _ => Err(Rejection::AccountNotFound {
                account_id: account.account_id.clone(),
            }),
        };
    };
    if account.records.spilled_for(command).is_some() {
        // The command side restores a spilled record before deciding; deciding without it
        // could take a retry for a new command and charge twice.
        return Err(Rejection::Unavailable {
            message: "the record this id names is not loaded; retry with the same id".into(),
        });
    }
    // Decisions use the command's time: whatever fell due before it happens first, so a
    // lot past its expiry is unusable now even if the scheduler has not recorded it yet.
    let (housekeeping, scratch) = housekeeping::housekeeping(stored, account.version, now);
    let ctx = Ctx {
        account,
        stored,
        core: scratch.as_ref().unwrap_or(stored),
        catalog,
        now,
    };
    let mut decision = match command {
        Command::OpenAccount => Err(Rejection::AccountExists {
            account_id: account.account_id.clone(),
        }),
        Command::Tick => Ok(Decision::new(Vec::new(), Reply::Ticked)),
        Command::ChangeSubscription(c) => ctx.change_subscription(c),
        Command::RenewAllowance(c) => ctx.renew_allowance(c),
        Command::PurchaseTopUp(c) => ctx.purchase_top_up(c, None),
        Command::PurchasePaidTopUp(c) => ctx.purchase_top_up(&c.top_up, Some(&c.payment_ref)),
        Command::RevokeTopUp(c) => ctx.revoke_top_up(c),
        Command::SyncSubscription(c) => ctx.sync_subscription(c),
        Command::AddGrant(c) => ctx.add_grant(c),
        Command::SubmitBusinessVerification(c) => ctx.submit_verification(c),
        Command::ApproveBusinessVerification => ctx.approve_verification(),
        Command::RejectBusinessVerification { reason } => ctx.reject_verification(reason),
        Command::Charge(c) => ctx.charge(c),
        Command::RefundCharge { charge_id, reason } => ctx.refund(charge_id, reason),
        Command::PlaceHold(c) => ctx.place_hold(c),
        Command::CaptureHold(c) => ctx.capture_hold(c),
        Command::ReleaseHold { hold_id } => ctx.release_hold(hold_id),
        Command::ConfigureAlerts(c) => ctx.configure_alerts(c),
    }?;
    if !decision.replayed && !housekeeping.is_empty() {
        let mut events = housekeeping;
        events.append(&mut decision.events);
        decision.events = events;
    }
    Ok(decision)
}

/// A retry of a command with a caller id: the first answer if it asks the same, else a
/// conflict on that id.
fn replay_or_conflict(
    same: bool,
    reply: Reply,
    version: u64,
    id: &str,
) -> Result<Decision, Rejection> {
    if same {
        Ok(Decision::replay(reply, version))
    } else {
        Err(Rejection::IdempotencyConflict { id: id.to_string() })
    }
}

struct Ctx<'a> {
    account: &'a Account,
    /// The core as stored, before housekeeping.
    stored: &'a Core,
    /// The core after housekeeping due at `now`.
    core: &'a Core,
    catalog: &'a Catalog,
    now: Instant,
}

impl Ctx<'_> {
    fn balance(&self) -> Option<Credits> {
        (!self.core.plan.unlimited).then(|| self.core.available(self.now))
    }

    fn summary_replay(&self, same: bool, id: &str, version: u64) -> Result<Decision, Rejection> {
        replay_or_conflict(same, Reply::Summary { created: false }, version, id)
    }
}
