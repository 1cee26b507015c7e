//! The fold behind explain: each event applied to the account with the bucket changes it
//! made, the running sums after it, the buckets as of `at`, what is due, and model access.

use std::collections::BTreeMap;

use crate::catalog::{Catalog, Model};
use crate::command::Command;
use crate::credits::Credits;
use crate::decide::{check_access, decide, Access};
use crate::events::*;
use crate::rejection::Rejection;
use crate::state::{Account, Balance, Core, Totals, TrialStatus};
use crate::time::Instant;

use super::*;

/// One event folded into the account, with what it did.
pub(super) struct Step {
    pub(super) summary: Note,
    pub(super) changes: Vec<BucketChange>,
    pub(super) forfeited: Credits,
}

impl Step {
    pub(super) fn apply(account: &mut Account, event: &Event) -> Step {
        // The summary reads the state before the event: a capture or a refund names what it
        // resolves, which the event itself does not repeat.
        let summary = Note::before(event, account);
        let before = Buckets::of(account.core.as_ref());
        let forfeited_before = forfeited_total(account.core.as_ref());
        account.evolve(event);
        let after = Buckets::of(account.core.as_ref());
        Step {
            summary,
            changes: before.changes_to(&after),
            forfeited: forfeited_total(account.core.as_ref())
                .checked_sub(forfeited_before)
                .unwrap_or(Credits::ZERO),
        }
    }
}

pub(super) fn forfeited_total(core: Option<&Core>) -> Credits {
    core.map_or(Credits::ZERO, |core| core.balance.totals.forfeited)
}

/// A bucket's identity across events. The allowance also carries the version of the event
/// that set it: a reset may start a period at the same instant as the one it replaces, and
/// the old bucket's loss and the new one's gain are two changes, not their net.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BucketKey {
    bucket: BucketName,
    id: String,
    generation: u64,
}

/// Every bucket's remainder, held credits included.
struct Buckets(BTreeMap<BucketKey, Credits>);

impl Buckets {
    fn of(core: Option<&Core>) -> Buckets {
        let mut buckets = BTreeMap::new();
        let Some(balance) = core.map(|core| &core.balance) else {
            return Buckets(buckets);
        };
        let mut put = |bucket, id: &str, generation, amount| {
            buckets.insert(
                BucketKey {
                    bucket,
                    id: id.to_string(),
                    generation,
                },
                amount,
            );
        };
        for bucket in balance.iter() {
            if let Some(name) = BucketName::of(bucket.kind) {
                put(name, &bucket.id, bucket.origin.version, bucket.remaining);
            }
        }
        for (hold_id, hold) in &balance.open_holds {
            put(BucketName::Held, hold_id, hold.version, hold.amount());
        }
        Buckets(buckets)
    }

    /// The non-zero differences from `self` to `after`, in bucket order.
    fn changes_to(&self, after: &Buckets) -> Vec<BucketChange> {
        let mut keys: Vec<&BucketKey> = self.0.keys().chain(after.0.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                let before = self.0.get(key).copied().unwrap_or(Credits::ZERO);
                let now = after.0.get(key).copied().unwrap_or(Credits::ZERO);
                let delta = signed_delta(before, now);
                (delta != 0).then(|| BucketChange {
                    bucket: key.bucket,
                    id: key.id.clone(),
                    delta,
                })
            })
            .collect()
    }
}

/// `after - before` as a signed amount. Amounts entering the ledger are capped far below
/// `i64::MAX`; should one not be, the delta saturates rather than wraps.
pub(super) fn signed_delta(before: Credits, after: Credits) -> i64 {
    match after.checked_sub(before) {
        Some(gain) => i64::try_from(gain.get()).unwrap_or(i64::MAX),
        None => {
            let loss = before.checked_sub(after).unwrap_or(Credits::ZERO);
            i64::try_from(loss.get())
                .ok()
                .and_then(i64::checked_neg)
                .unwrap_or(i64::MIN)
        }
    }
}

pub(super) fn drawn_from(event: &Event) -> Option<Vec<Part>> {
    match event {
        Event::CreditsCharged(data) => Some(data.drawn_from.clone()),
        Event::HoldCaptured(data) => Some(data.drawn_from.clone()),
        _ => None,
    }
}

pub(super) fn running(balance: &Balance, at: Instant) -> Running {
    Running {
        available: balance.available(at),
        allowance: balance.live_remaining(BucketKind::Allowance, at),
        top_ups: balance.live_remaining(BucketKind::TopUp, at),
        grants: balance.live_remaining(BucketKind::Grant, at),
        held: balance.held(),
        in_buckets: balance.total_in_buckets(),
    }
}

pub(super) fn balance_at(core: Option<&Core>, at: Instant) -> BalanceAt {
    let Some(core) = core else {
        return BalanceAt {
            total: Credits::ZERO,
            allowance: None,
            top_ups: Vec::new(),
            grants: Vec::new(),
            held: Credits::ZERO,
            holds: Vec::new(),
            unlimited: false,
            in_buckets: Credits::ZERO,
            totals: Totals::default(),
        };
    };
    let balance = &core.balance;
    BalanceAt {
        total: balance.available(at),
        allowance: balance.allowance().and_then(|bucket| {
            let (period_start, period_end) = bucket.period()?;
            Some(AllowanceAt {
                id: bucket.id.clone(),
                amount: bucket.credits,
                remaining: bucket.remaining,
                period_start,
                period_end,
                // The rule `Balance::available` applies, so `live` and `total` always agree.
                live: bucket.is_live(at),
            })
        }),
        top_ups: balance
            .of_kind(BucketKind::TopUp)
            .map(|lot| TopUpAt {
                lot_id: lot.id.clone(),
                credits: lot.credits,
                remaining: lot.remaining,
                expires_at: lot.expires_at,
                live: lot.is_live(at),
            })
            .collect(),
        grants: balance
            .of_kind(BucketKind::Grant)
            .map(|lot| GrantAt {
                grant_id: lot.id.clone(),
                credits: lot.credits,
                remaining: lot.remaining,
                expires_at: lot.expires_at,
                live: lot.is_live(at),
            })
            .collect(),
        held: balance.held(),
        holds: balance
            .open_holds
            .values()
            .map(|hold| HoldAt {
                hold_id: hold.placed.hold_id.clone(),
                model: hold.placed.model.clone(),
                amount: hold.amount(),
                expires_at: hold.placed.expires_at,
                live: at < hold.placed.expires_at,
            })
            .collect(),
        unlimited: core.plan.unlimited,
        in_buckets: balance.total_in_buckets(),
        totals: balance.totals,
    }
}

/// The housekeeping a command at `at` would record first, found by asking `decide` for a
/// tick: the same rules, not a second copy of them. Returns the entries and the account
/// with them applied.
pub(super) fn due_at(
    mut account: Account,
    catalog: &Catalog,
    at: Instant,
) -> (Vec<DueEntry>, Account) {
    if !account.is_open() {
        return (Vec::new(), account);
    }
    let Ok(decision) = decide(&account, catalog, &Command::Tick, at) else {
        return (Vec::new(), account);
    };
    let due = decision
        .events
        .iter()
        .map(|event| {
            let step = Step::apply(&mut account, event);
            DueEntry {
                type_name: event.type_name(),
                summary: step.summary,
                changes: step.changes,
                forfeited: step.forfeited,
            }
        })
        .collect();
    (due, account)
}

pub(super) fn model_access(account: &Account, model: &Model, at: Instant) -> ModelAccess {
    let Some(core) = account.core.as_ref() else {
        let rejection = Rejection::AccountNotFound {
            account_id: account.account_id.clone(),
        };
        return blocked(model, &rejection, None);
    };
    let trial = core.trials.get(&model.id);
    // A trial the account never touched is still there to be used.
    let trial_status = trial
        .map(|trial| trial.status(at))
        .or_else(|| model.free_trial.map(|_| TrialStatus::Unused));
    match check_access(core.plan.tier, trial, model, at) {
        Ok(access) => ModelAccess {
            model: model.id.clone(),
            min_tier: model.min_tier,
            access: match access {
                Access::Paid => ModelAccessKind::Paid,
                Access::Trial => ModelAccessKind::Trial,
            },
            reason_code: None,
            reason: None,
            trial_status,
        },
        Err(rejection) => blocked(model, &rejection, trial_status),
    }
}

pub(super) fn blocked(
    model: &Model,
    rejection: &Rejection,
    trial_status: Option<TrialStatus>,
) -> ModelAccess {
    ModelAccess {
        model: model.id.clone(),
        min_tier: model.min_tier,
        access: ModelAccessKind::Blocked,
        reason_code: Some(rejection.code()),
        reason: Some(rejection.message()),
        trial_status,
    }
}
