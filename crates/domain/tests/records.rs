//! Spilled records: an account keeps its recent charges and resolved holds whole, spills
//! older ones to a fingerprint, and answers a late retry of one as it first did once its
//! events are restored from the stream.

mod support;

use ledger_domain::command::{PaidTopUp, PurchaseTopUp};
use ledger_domain::decide::Decision;
use ledger_domain::events::Event;
use ledger_domain::records::SpillRef;
use ledger_domain::{Command, Rejection};
use support::*;

/// Records kept whole in these tests.
const KEEP: usize = 4;

fn refund(charge_id: &str, reason: &str) -> Command {
    Command::RefundCharge {
        charge_id: charge_id.into(),
        reason: reason.into(),
    }
}

/// An account with a top-up and `charges` one-credit charges, `c-0` first.
fn given_charges(charges: usize) -> Given {
    let mut given = given_account().ran(top_up("lot", 1_000));
    for index in 0..charges {
        given.run(chat(&format!("c-{index}")));
    }
    given
}

/// The events a spill names, read back from the history as the command side reads them
/// from the stream.
fn read_back(given: &Given, spilled: &SpillRef) -> Vec<(u64, Event)> {
    spilled
        .spill
        .versions()
        .map(|version| (version, given.history[version as usize - 1].clone()))
        .collect()
}

/// Restores whatever `command` names, as the command side does before deciding it.
fn restore_for(given: &mut Given, command: &Command) {
    let spilled = given
        .account
        .records
        .spilled_for(command)
        .expect("the command names a spilled record");
    let events = read_back(given, &spilled);
    given
        .account
        .records
        .restore(spilled, events)
        .expect("restored");
}

fn decided(given: &Given, command: &Command) -> Result<Decision, Rejection> {
    ledger_domain::decide(&given.account, &given.catalog, command, given.now)
}

#[test]
fn spilling_keeps_the_most_recent_records_whole() {
    // Given an account with a top-up and ten charges
    let mut given = given_charges(10);
    assert_eq!(given.account.records.whole_len(), 11);

    // When it spills, keeping four
    given.account.records.spill(KEEP);

    // Then the four latest charges stay whole, and the top-up and six charges before them
    // are spilled
    let records = &given.account.records;
    assert_eq!(records.whole_len(), KEEP);
    assert_eq!(records.spilled_len(), 7);
    assert!(records.spilled_for(&top_up("lot", 1_000)).is_some());
    for index in 6..10 {
        assert!(
            records.charges.contains_key(&format!("c-{index}")),
            "c-{index}"
        );
    }
    assert!(records.spilled_for(&chat("c-0")).is_some());
    assert!(records.spilled_for(&chat("c-9")).is_none());
    assert!(
        records.spilled_for(&chat("never-sent")).is_none(),
        "an id never charged is not taken for a spilled one"
    );
}

#[test]
fn spilling_waits_until_twice_the_kept_records_are_whole() {
    // Given an account with a top-up and seven charges, twice the four kept
    let mut given = given_charges(2 * KEEP - 1);

    // When it spills
    given.account.records.spill(KEEP);

    // Then nothing is spilled yet: spilling in halves keeps its cost per record constant
    assert_eq!(given.account.records.whole_len(), 2 * KEEP);
    assert_eq!(given.account.records.spilled_len(), 0);
}

#[test]
fn a_retry_of_a_spilled_charge_is_refused_unavailable_until_it_is_restored() {
    // Given a spilled charge
    let mut given = given_charges(10);
    given.account.records.spill(KEEP);

    // When its retry is decided before its record is restored
    let outcome = decided(&given, &chat("c-0"));

    // Then it is refused as retryable, never charged again
    let rejection = outcome.expect_err("refused");
    assert_eq!(rejection.code(), "UNAVAILABLE", "{rejection}");
}

#[test]
fn a_retry_of_a_restored_charge_answers_as_it_first_did() {
    // Given a spilled charge, and the same account never spilled
    let mut given = given_charges(10);
    let whole = decided(&given, &chat("c-0")).expect("a replay");
    given.account.records.spill(KEEP);

    // When its retry comes after its events were read back
    restore_for(&mut given, &chat("c-0"));
    let replay = decided(&given, &chat("c-0")).expect("a replay");

    // Then it is a replay with the first answer and version, and writes nothing
    assert!(replay.replayed);
    assert!(replay.events.is_empty());
    assert_eq!(replay.reply, whole.reply);
    assert_eq!(replay.replay_of, whole.replay_of);
    assert!(given.account.records.spilled_for(&chat("c-0")).is_none());
}

#[test]
fn a_retry_of_a_spilled_charge_with_another_body_is_an_idempotency_conflict() {
    // Given a spilled charge
    let mut given = given_charges(10);
    given.account.records.spill(KEEP);
    let other = charge("c-1", "assistant-chat", None, Some(30));

    // When the same id comes with another body, after its events were read back
    restore_for(&mut given, &other);

    // Then it conflicts, as it would have before the spill
    given.when(other).then_rejects("IDEMPOTENCY_CONFLICT");
}

#[test]
fn a_refund_of_a_restored_charge_equals_one_of_a_charge_never_spilled() {
    // Given a spilled charge, and the same account never spilled
    let mut given = given_charges(10);
    let whole = decided(&given, &refund("c-2", "bad output")).expect("refunded");
    given.account.records.spill(KEEP);

    // When it is refunded after its events were read back
    restore_for(&mut given, &refund("c-2", "bad output"));
    let restored = decided(&given, &refund("c-2", "bad output")).expect("refunded");

    // Then the refund is the one the whole record gives
    assert_eq!(restored.events, whole.events);
    assert_eq!(restored.reply, whole.reply);
}

#[test]
fn a_refund_folded_in_for_a_spilled_charge_is_found_by_its_retry() {
    // Given a charge spilled on this node and refunded by another (the event arrives from
    // the stream)
    let mut given = given_charges(10);
    let mut other_node = given.account.clone();
    let refunded = decided(&given, &refund("c-0", "bad output")).expect("refunded");
    given.account.records.spill(KEEP);
    for event in &refunded.events {
        given.account.evolve(event);
        other_node.evolve(event);
        given.history.push(event.clone());
    }

    // When the refund is retried here, after the charge's events were read back
    restore_for(&mut given, &refund("c-0", "bad output"));
    let spilled_versions = given.account.records.charges["c-0"]
        .refund
        .as_ref()
        .map(|refund| refund.version);
    let retried = decided(&given, &refund("c-0", "bad output")).expect("a replay");

    // Then it is a replay of the refund the other node wrote
    assert_eq!(spilled_versions, Some(given.account.version));
    assert!(
        retried.replayed,
        "the refund is answered again, not written twice"
    );
    assert_eq!(
        retried.reply,
        decided(
            &Given {
                account: other_node,
                catalog: given.catalog.clone(),
                now: given.now,
                history: Vec::new(),
            },
            &refund("c-0", "bad output")
        )
        .expect("a replay")
        .reply
    );
}

#[test]
fn a_retry_of_a_spilled_hold_capture_answers_as_it_first_did() {
    // Given a captured hold, spilled behind later charges
    let mut given = given_account().ran(top_up("lot", 1_000));
    let place = hold("h-1", "assistant-chat", None, None, None);
    given.run(place.clone());
    let first = given.run(capture("h-1", None, None));
    for index in 0..10 {
        given.run(chat(&format!("c-{index}")));
    }
    given.account.records.spill(KEEP);
    assert!(given.account.records.spilled_for(&place).is_some());

    // When its capture is retried, after its events were read back
    restore_for(&mut given, &capture("h-1", None, None));
    let retried = decided(&given, &capture("h-1", None, None)).expect("a replay");

    // Then it answers with the first capture's receipt
    assert!(retried.replayed);
    assert_eq!(retried.reply, first.reply);
}

#[test]
fn restoring_from_events_that_are_not_the_records_fails_and_changes_nothing() {
    // Given a spilled charge
    let mut given = given_charges(10);
    given.account.records.spill(KEEP);
    let before = given.account.clone();
    let spilled = given
        .account
        .records
        .spilled_for(&chat("c-0"))
        .expect("spilled");

    // When the events read back are another version's
    let wrong = vec![(
        spilled.spill.first_version,
        given.history[spilled.spill.first_version as usize].clone(),
    )];
    let outcome = given.account.records.restore(spilled, wrong);

    // Then the restore is refused and the account is unchanged
    assert!(outcome.is_err());
    assert_eq!(given.account, before);
    assert!(given.account.records.spilled_for(&chat("c-0")).is_some());
}

#[test]
fn two_folds_of_the_same_events_that_spilled_alike_are_equal_whatever_their_seeds() {
    // Given two accounts folded from the same history, each with its own random seed
    let mut given = given_charges(10);
    let mut again = ledger_domain::Account::replay("acct-1", &given.history);

    // When both spill
    given.account.records.spill(KEEP);
    again.records.spill(KEEP);

    // Then they are equal
    assert_eq!(given.account, again);
}

#[test]
fn a_retry_of_a_spilled_grant_or_top_up_answers_as_it_first_did() {
    // Given a grant and a top-up spilled behind later charges
    let mut given = given_account();
    let first_top_up = given.run(top_up("lot", 1_000));
    let first_grant = given.run(grant("goodwill", 50, None));
    for index in 0..10 {
        given.run(chat(&format!("c-{index}")));
    }
    given.account.records.spill(KEEP);

    for (command, first) in [
        (top_up("lot", 1_000), first_top_up),
        (grant("goodwill", 50, None), first_grant),
    ] {
        // When each is retried, after its event was read back
        assert!(
            decided(&given, &command).is_err(),
            "refused before restoring"
        );
        restore_for(&mut given, &command);
        let retried = decided(&given, &command).expect("a replay");

        // Then it is a replay of the first answer
        assert!(retried.replayed);
        assert!(retried.events.is_empty());
        assert_eq!(retried.reply, first.reply);
    }
}

#[test]
fn a_top_up_paid_through_a_provider_stays_whole() {
    // Given a top-up paid through a payment provider, behind later charges
    let mut given = given_account();
    let paid = Command::PurchasePaidTopUp(PaidTopUp {
        top_up: PurchaseTopUp {
            purchase_id: "paid-lot".into(),
            credits: 1_000,
            expires_at: None,
        },
        payment_ref: "pi_123".into(),
    });
    given.run(paid.clone());
    for index in 0..10 {
        given.run(chat(&format!("c-{index}")));
    }

    // When the account spills
    given.account.records.spill(KEEP);

    // Then the paid top-up stays whole: a refund of the payment finds its lot by scanning
    // the purchases for the provider's id
    assert!(given.account.records.purchases.contains_key("paid-lot"));
    assert!(given.account.records.spilled_for(&paid).is_none());
}
