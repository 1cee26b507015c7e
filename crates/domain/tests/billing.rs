//! One given/when/then test per rule of what a payment provider reports (SPEC section 12):
//! paid top-ups, revoking a refunded lot, and subscriptions synced from billing, with each
//! rejection they can meet. Each test is named after the rule it pins.

mod support;

use ledger_domain::command::*;
use ledger_domain::decide::Reply;
use ledger_domain::events::*;
use ledger_domain::{Credits, Tier};
use support::*;

/// The lot expires before the allowance's period end, so charges draw on it first.
const LOT_EXPIRES: &str = "2026-01-20T12:00:00Z";

fn paid_top_up(purchase_id: &str, credits: u64, payment_ref: &str) -> Command {
    Command::PurchasePaidTopUp(PaidTopUp {
        top_up: PurchaseTopUp {
            purchase_id: purchase_id.into(),
            credits,
            expires_at: Some(at(LOT_EXPIRES)),
        },
        payment_ref: payment_ref.into(),
    })
}

fn revoke(payment_ref: &str, reference: &str) -> Command {
    Command::RevokeTopUp(RevokeTopUp {
        payment_ref: payment_ref.into(),
        reference: reference.into(),
    })
}

fn sync(tier: Tier, billing: Option<Billing>, start: &str, reference: &str) -> Command {
    Command::SyncSubscription(ChangeSubscription {
        tier,
        billing,
        period_start: at(start),
        period_end: at("2027-01-10T12:00:00Z"),
        reference: reference.into(),
        allowance: None,
    })
}

/// An account with a 1,000-credit lot bought with payment `pi_1`, 200 of it spent.
fn partly_spent_lot() -> Given {
    given_account()
        .ran(paid_top_up("cs_1", 1_000, "pi_1"))
        .ran(charge("c1", "flux-schnell", Some(100), None))
}

fn revoked(events: &[Event]) -> &TopUpRevoked {
    events
        .iter()
        .find_map(|event| match event {
            Event::TopUpRevoked(revoked) => Some(revoked),
            _ => None,
        })
        .expect("a top_up_revoked event")
}

fn assert_writes_nothing(then: &Then) {
    assert!(then.then_events().is_empty(), "{:?}", then.event_types());
    assert!(matches!(
        then.then_reply(),
        Reply::Summary { created: false }
    ));
}

// --- paid top-ups ----------------------------------------------------------------------------

#[test]
fn a_paid_top_up_records_the_payment_that_bought_it() {
    let then = given_account().when(paid_top_up("cs_1", 1_000, "pi_1"));
    match then.then_events() {
        [Event::TopUpPurchased(purchase)] => {
            assert_eq!(purchase.purchase_id, "cs_1");
            assert_eq!(purchase.payment_ref.as_deref(), Some("pi_1"));
            assert_eq!(purchase.credits, credits(1_000));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_paid_top_up_delivered_again_answers_as_the_first_time() {
    let then = given_account()
        .ran(paid_top_up("cs_1", 1_000, "pi_1"))
        .when(paid_top_up("cs_1", 1_000, "pi_1"));
    assert!(matches!(
        then.then_replayed(),
        Reply::Summary { created: true }
    ));
}

#[test]
fn a_paid_top_up_naming_another_payment_under_the_same_purchase_conflicts() {
    given_account()
        .ran(paid_top_up("cs_1", 1_000, "pi_1"))
        .when(paid_top_up("cs_1", 1_000, "pi_2"))
        .then_rejects("IDEMPOTENCY_CONFLICT");
}

#[test]
fn a_paid_top_up_with_an_unusable_payment_id_is_refused() {
    given_account()
        .when(paid_top_up("cs_1", 1_000, ""))
        .then_rejects("INVALID_REQUEST");
}

// --- revoking a refunded lot -----------------------------------------------------------------

#[test]
fn a_refund_revokes_the_unspent_remainder_and_records_what_was_spent() {
    let given = partly_spent_lot();
    assert_eq!(given.available(), 1_300);
    let then = given.when(revoke("pi_1", "ch_1"));
    let event = revoked(then.then_events());
    assert_eq!(event.purchase_id, "cs_1");
    assert_eq!(event.reference, "ch_1");
    assert_eq!(
        (event.credits, event.revoked, event.held, event.spent),
        (credits(1_000), credits(800), Credits::ZERO, credits(200))
    );
    let core = then.account.core.as_ref().expect("open");
    assert!(
        core.balance.of_kind(BucketKind::TopUp).next().is_none(),
        "the lot is gone"
    );
    assert_eq!(
        core.available(at(T0)),
        credits(500),
        "the allowance is untouched"
    );
    assert_eq!(core.balance.totals.forfeited, credits(800));
}

#[test]
fn a_refund_leaves_every_other_bucket_alone() {
    let then = partly_spent_lot()
        .ran(top_up("manual", 300))
        .when(revoke("pi_1", "ch_1"));
    let core = then.account.core.as_ref().expect("open");
    let lots: Vec<_> = core
        .balance
        .of_kind(BucketKind::TopUp)
        .map(|lot| &lot.id)
        .collect();
    assert_eq!(lots, ["manual"]);
    assert_eq!(core.available(at(T0)), credits(800));
}

#[test]
fn credits_of_a_revoked_lot_on_hold_are_forfeited_when_the_hold_returns_them() {
    let given = partly_spent_lot().ran(hold("h1", "flux-schnell", Some(50), None, None));
    let then = given.when(revoke("pi_1", "ch_1"));
    let event = revoked(then.then_events());
    assert_eq!(
        (event.revoked, event.held, event.spent),
        (credits(700), credits(100), credits(200))
    );
    let mut after = support::Given {
        account: then.account,
        catalog: ledger_domain::Catalog::shipped(),
        now: at(T0),
        history: Vec::new(),
    };
    let release = after.run(Command::ReleaseHold {
        hold_id: "h1".into(),
    });
    match release.events.as_slice() {
        [Event::HoldReleased(released)] => {
            assert!(released.returned.is_empty());
            assert_eq!(released.forfeited.len(), 1);
            assert_eq!(released.forfeited[0].amount, credits(100));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(after.available(), 500);
}

#[test]
fn a_second_refund_of_the_same_payment_writes_nothing() {
    let then = partly_spent_lot()
        .ran(revoke("pi_1", "ch_1"))
        .when(revoke("pi_1", "ch_1"));
    assert_writes_nothing(&then);
}

#[test]
fn a_fully_spent_lot_is_revoked_with_nothing_left_to_take() {
    let then = given_account()
        .ran(paid_top_up("cs_1", 100, "pi_1"))
        .ran(charge("c1", "flux-schnell", Some(50), None))
        .when(revoke("pi_1", "ch_1"));
    let event = revoked(then.then_events());
    assert_eq!((event.revoked, event.spent), (Credits::ZERO, credits(100)));
}

#[test]
fn a_refund_after_the_lot_expired_revokes_nothing() {
    let then = partly_spent_lot()
        .at("2026-01-21T00:00:00Z")
        .when(revoke("pi_1", "ch_1"));
    // The expiry due before the refund is recorded; the refund finds no lot left.
    assert_eq!(then.event_types(), ["top_up_expired"]);
}

#[test]
fn a_refund_of_a_payment_that_bought_no_lot_is_not_found() {
    partly_spent_lot()
        .when(revoke("pi_unknown", "ch_9"))
        .then_rejects("NOT_FOUND");
}

#[test]
fn a_refund_on_an_account_that_does_not_exist_is_account_not_found() {
    let then = support::Given {
        account: ledger_domain::Account::new("nobody"),
        catalog: ledger_domain::Catalog::shipped(),
        now: at(T0),
        history: Vec::new(),
    }
    .when(revoke("pi_1", "ch_1"));
    then.then_rejects("ACCOUNT_NOT_FOUND");
}

#[test]
fn a_refund_with_an_unusable_reference_is_refused() {
    partly_spent_lot()
        .when(revoke("pi_1", &"x".repeat(200)))
        .then_rejects("INVALID_REQUEST");
}

// --- subscriptions synced from billing -------------------------------------------------------

#[test]
fn a_synced_subscription_changes_the_plan() {
    let then = given_account().when(sync(Tier::Pro, Some(Billing::Annual), T0, "evt_1"));
    assert_eq!(then.event_types(), ["tier_changed"]);
    let core = then.account.core.as_ref().expect("open");
    assert_eq!(core.plan.tier, Tier::Pro);
    assert_eq!(
        core.available(at(T0)),
        credits(6_000),
        "pro annual with its bonus"
    );
}

#[test]
fn a_synced_subscription_delivered_again_answers_as_the_first_time() {
    let then = given_account()
        .ran(sync(Tier::Pro, Some(Billing::Annual), T0, "evt_1"))
        .when(sync(Tier::Pro, Some(Billing::Annual), T0, "evt_1"));
    then.then_replayed();
}

#[test]
fn a_synced_subscription_changed_under_the_same_reference_conflicts() {
    given_account()
        .ran(sync(Tier::Pro, Some(Billing::Annual), T0, "evt_1"))
        .when(sync(Tier::Pro, Some(Billing::Monthly), T0, "evt_1"))
        .then_rejects("IDEMPOTENCY_CONFLICT");
}

#[test]
fn a_synced_subscription_that_restates_the_plan_writes_nothing() {
    let then = given_account()
        .ran(sync(Tier::Pro, Some(Billing::Annual), T0, "evt_1"))
        .when(sync(
            Tier::Pro,
            Some(Billing::Annual),
            "2026-01-11T12:00:00Z",
            "evt_2",
        ));
    assert_writes_nothing(&then);
}

#[test]
fn a_synced_subscription_older_than_the_current_period_writes_nothing() {
    let then = given_account()
        .ran(sync(
            Tier::Pro,
            Some(Billing::Monthly),
            "2026-01-11T12:00:00Z",
            "evt_2",
        ))
        .when(sync(Tier::Pro, Some(Billing::Annual), T0, "evt_1"));
    assert_writes_nothing(&then);
}

#[test]
fn a_synced_subscription_on_an_account_never_subscribed_applies_however_early_it_began() {
    let then = given_account().when(sync(
        Tier::Pro,
        Some(Billing::Annual),
        "2025-06-10T12:00:00Z",
        "evt_1",
    ));
    assert_eq!(then.event_types(), ["tier_changed"]);
}

#[test]
fn a_synced_subscription_older_than_a_cancellation_writes_nothing() {
    let then = given_account()
        .ran(sync(Tier::Pro, Some(Billing::Monthly), T0, "evt_1"))
        .ran(sync(Tier::Free, None, "2026-01-12T12:00:00Z", "evt_2"))
        .at("2026-01-13T12:00:00Z")
        .when(sync(Tier::Pro, Some(Billing::Monthly), T0, "evt_late"));
    assert_writes_nothing(&then);
}

#[test]
fn a_synced_cancellation_moves_the_account_to_free() {
    let then = given_account()
        .ran(sync(Tier::Pro, Some(Billing::Monthly), T0, "evt_1"))
        .when(sync(Tier::Free, None, "2026-01-12T12:00:00Z", "evt_2"));
    assert_eq!(then.event_types(), ["tier_changed"]);
    let core = then.account.core.as_ref().expect("open");
    assert_eq!(core.plan.tier, Tier::Free);
    assert_eq!(core.available(at(T0)), credits(500));
}

#[test]
fn a_synced_business_subscription_needs_an_approved_verification() {
    given_account()
        .ran(verify())
        .when(sync(Tier::Business, Some(Billing::Monthly), T0, "evt_1"))
        .then_rejects("BUSINESS_VERIFICATION_REQUIRED");
}

#[test]
fn a_synced_paid_plan_without_billing_is_refused() {
    given_account()
        .when(sync(Tier::Pro, None, T0, "evt_1"))
        .then_rejects("INVALID_REQUEST");
}
