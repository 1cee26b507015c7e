//! One given/when/then test per credit rule of SPEC sections 2 to 7, and one per rejection
//! code. Each test is named after the rule it pins.

mod support;

use ledger_domain::command::*;
use ledger_domain::decide::Reply;
use ledger_domain::events::*;
use ledger_domain::state::TrialStatus;
use ledger_domain::{Catalog, Rejection, Tier};
use support::*;

fn charged(events: &[Event]) -> &CreditsCharged {
    events
        .iter()
        .find_map(|e| match e {
            Event::CreditsCharged(c) => Some(c),
            _ => None,
        })
        .expect("a credits_charged event")
}

fn part(bucket: BucketKind, id: &str, amount: u64) -> Part {
    Part {
        bucket,
        id: id.into(),
        amount: credits(amount),
    }
}

fn approved() -> Given {
    given_account()
        .ran(verify())
        .ran(Command::ApproveBusinessVerification)
}

// --- tiers and allowances ----------------------------------------------------------------

#[test]
fn opening_an_account_starts_free_with_the_free_allowance_for_one_month() {
    let given = given_account();
    let core = given.account.core.as_ref().unwrap();
    assert_eq!(core.plan.tier, Tier::Free);
    let allowance = core.balance.allowance().unwrap();
    assert_eq!(allowance.remaining, credits(500));
    assert_eq!(
        allowance.period(),
        Some((at(T0), at("2026-02-10T12:00:00Z")))
    );
    assert_eq!(core.plan.scope.as_str(), "free");
}

#[test]
fn renewal_resets_the_allowance_and_records_the_forfeited_remainder() {
    let then = given_account()
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .ran(chat("c1"))
        .at("2026-02-10T12:00:00Z")
        .when(renew(
            "inv-2",
            "2026-02-10T12:00:00Z",
            "2026-03-10T12:00:00Z",
        ));
    match &then.then_events()[0] {
        Event::AllowanceRenewed(renewed) => {
            assert_eq!(renewed.forfeited, credits(4_999));
            assert_eq!(renewed.allowance, Some(credits(5_000)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        then.account
            .core
            .unwrap()
            .balance
            .allowance()
            .unwrap()
            .remaining,
        credits(5_000)
    );
}

#[test]
fn renewal_and_tier_changes_leave_top_ups_and_grants_untouched() {
    let then = given_account()
        .ran(top_up("p1", 300))
        .ran(grant("g1", 40, None))
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .when(renew(
            "inv-2",
            "2026-02-10T11:00:00Z",
            "2026-03-10T12:00:00Z",
        ));
    let core = then.account.core.unwrap();
    let remaining = |kind| {
        let mut lots = core.balance.of_kind(kind);
        lots.next().unwrap().remaining
    };
    assert_eq!(remaining(BucketKind::TopUp), credits(300));
    assert_eq!(remaining(BucketKind::Grant), credits(40));
}

#[test]
fn a_late_renewal_still_resets_at_its_arrival() {
    let given = given_account()
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .at("2026-02-15T00:00:00Z");
    // The period has ended: the allowance is unusable until billing renews.
    assert_eq!(given.available(), 0);
    let then = given.when(renew(
        "inv-2",
        "2026-02-10T12:00:00Z",
        "2026-03-10T12:00:00Z",
    ));
    then.then_events();
    assert_eq!(
        then.account
            .core
            .unwrap()
            .available(at("2026-02-15T00:00:00Z")),
        credits(5_000)
    );
}

#[test]
fn an_annual_plan_refreshes_monthly_with_the_annual_bonus() {
    let mut given = given_account().ran(subscribe(
        Tier::Pro,
        Some(Billing::Annual),
        T0,
        "2027-01-10T12:00:00Z",
        "sub-a",
    ));
    assert_eq!(given.available(), 6_000, "pro annual carries the 20% bonus");
    given.run(chat("c1"));
    let then = given.at("2026-02-10T12:00:00Z").when(Command::Tick);
    match &then.then_events()[0] {
        Event::AllowanceRenewed(renewed) => {
            assert_eq!(renewed.source, RenewalSource::Anniversary);
            assert_eq!(renewed.allowance, Some(credits(6_000)));
            assert_eq!(renewed.forfeited, credits(5_999));
            assert_eq!(renewed.allowance_period_end, at("2026-03-10T12:00:00Z"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn free_accounts_refresh_on_their_anniversary_clamped_at_month_end() {
    let given = given_account_at("2026-01-31T09:00:00Z").ran(chat("c1"));
    let then = given.at("2026-02-28T09:00:00Z").when(Command::Tick);
    match &then.then_events()[0] {
        Event::AllowanceRenewed(renewed) => {
            assert_eq!(renewed.allowance_period_start, at("2026-02-28T09:00:00Z"));
            assert_eq!(renewed.allowance_period_end, at("2026-03-31T09:00:00Z"));
            assert_eq!(renewed.forfeited, credits(499));
        }
        other => panic!("unexpected {other:?}"),
    }
    // And the period after runs to Mar 31 → Apr 30, anchored on the 31st again.
    let mut given = given_account_at("2026-01-31T09:00:00Z").at("2026-03-31T09:00:00Z");
    given.run(Command::Tick);
    let allowance = given
        .account
        .core
        .as_ref()
        .unwrap()
        .balance
        .allowance()
        .cloned()
        .unwrap();
    assert_eq!(
        allowance.period(),
        Some((at("2026-03-31T09:00:00Z"), at("2026-04-30T09:00:00Z")))
    );
}

#[test]
fn a_charge_at_the_anniversary_is_paid_from_the_refreshed_allowance() {
    let then = given_account().at("2026-02-10T12:00:00Z").when(chat("c1"));
    assert_eq!(then.event_types(), ["allowance_renewed", "credits_charged"]);
    assert_eq!(
        charged(then.then_events()).balance_after,
        Some(credits(499))
    );
}

#[test]
fn a_subscription_change_starts_a_new_period_with_the_new_allowance() {
    let then = given_account().ran(chat("c1")).when(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        "2026-01-11T00:00:00Z",
        "2026-02-11T00:00:00Z",
        "sub-1",
    ));
    match &then.then_events()[0] {
        Event::TierChanged(changed) => {
            assert_eq!((changed.from, changed.to), (Tier::Free, Tier::Pro));
            assert_eq!(changed.forfeited, credits(499));
            assert_eq!(changed.scope.as_str(), "deployment");
        }
        other => panic!("unexpected {other:?}"),
    }
    let core = then.account.core.unwrap();
    assert_eq!(core.balance.allowance().unwrap().remaining, credits(5_000));
    // Cancelling to free resets to the free allowance.
    let then = given_account()
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .when(subscribe(
            Tier::Free,
            None,
            T0,
            "2026-02-10T12:00:00Z",
            "cancel-1",
        ));
    assert_eq!(
        then.account
            .core
            .unwrap()
            .balance
            .allowance()
            .unwrap()
            .remaining,
        credits(500)
    );
}

#[test]
fn enterprise_unlimited_charges_always_succeed_and_are_recorded_with_their_cost() {
    let then = given_account()
        .ran(subscribe(
            Tier::Enterprise,
            Some(Billing::Annual),
            T0,
            "2027-01-10T12:00:00Z",
            "ent-1",
        ))
        .when(charge("c1", "seedance-2.0-t2v", None, Some(3_600)));
    let event = charged(then.then_events());
    assert_eq!(event.paid_by, PaidBy::Unlimited);
    assert_eq!(event.cost, credits(144_000));
    assert_eq!(
        event.drawn_from,
        vec![part(BucketKind::Unlimited, "unlimited", 144_000)]
    );
    assert_eq!(event.balance_after, None);
}

#[test]
fn enterprise_may_carry_a_custom_allowance() {
    let mut command = subscribe(
        Tier::Enterprise,
        Some(Billing::Monthly),
        T0,
        "2026-02-10T12:00:00Z",
        "ent-1",
    );
    if let Command::ChangeSubscription(c) = &mut command {
        c.allowance = Some(credits(50));
    }
    let mut given = given_account().ran(command);
    assert_eq!(given.available(), 50);
    given.run(charge("c1", "custom-lora", None, None));
    given.run(charge("c2", "custom-lora", None, None));
    given
        .when(charge("c3", "custom-lora", None, None))
        .then_rejects("INSUFFICIENT_CREDITS");
}

#[test]
fn business_requires_an_approved_verification() {
    let business = || {
        subscribe(
            Tier::Business,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "biz-1",
        )
    };
    let rejection = given_account()
        .when(business())
        .then_rejects("BUSINESS_VERIFICATION_REQUIRED");
    assert_eq!(rejection.details()["status"], "none");
    given_account()
        .ran(verify())
        .when(business())
        .then_rejects("BUSINESS_VERIFICATION_REQUIRED");
    let then = approved().when(business());
    assert_eq!(then.account.core.unwrap().plan.tier, Tier::Business);
}

#[test]
fn a_rejected_verification_can_be_submitted_again() {
    let given = given_account()
        .ran(verify())
        .ran(Command::RejectBusinessVerification {
            reason: "unreadable".into(),
        });
    assert_eq!(
        given
            .account
            .core
            .as_ref()
            .unwrap()
            .plan
            .verification
            .status()
            .as_str(),
        "rejected"
    );
    let then = given.when(verify());
    assert_eq!(then.event_types(), ["business_verification_submitted"]);
}

// --- scope and model access ---------------------------------------------------------------

#[test]
fn api_runs_need_deployment_or_admin_scope() {
    given_account()
        .when(api_chat("c1"))
        .then_rejects("SCOPE_REQUIRED");
    let then = given_account()
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .when(api_chat("c1"));
    assert_eq!(charged(then.then_events()).via, Via::Api);
}

#[test]
fn seedance_is_blocked_below_business_whatever_the_balance() {
    for given in [
        given_account().ran(top_up("p1", 1_000_000)),
        given_account().ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        )),
    ] {
        let rejection = given
            .when(charge("c1", "seedance-2.0-i2v", None, Some(5)))
            .then_rejects("MODEL_TIER_REQUIRED");
        assert_eq!(rejection.http_status(), 403);
        assert_eq!(rejection.details()["required_tier"], "business");
    }
    let then = approved()
        .ran(subscribe(
            Tier::Business,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "biz-1",
        ))
        .when(charge("c1", "seedance-2.0-i2v", None, Some(5)));
    assert_eq!(charged(then.then_events()).cost, credits(200));
}

#[test]
fn a_pro_model_without_a_trial_needs_pro() {
    given_account()
        .when(charge("c1", "stable-audio", None, Some(10)))
        .then_rejects("MODEL_TIER_REQUIRED");
}

#[test]
fn a_count_trial_gives_free_runs_then_blocks_and_top_ups_do_not_help() {
    let mut given = given_account();
    for run in 1..=3 {
        let decision = given.run(charge(&format!("c{run}"), "flux-pro", Some(1), None));
        let event = charged(&decision.events);
        assert_eq!((event.paid_by, event.cost), (PaidBy::Trial, credits(0)));
    }
    assert_eq!(given.available(), 500, "trial runs move no credits");
    let types: Vec<_> = given.history.iter().map(Event::type_name).collect();
    assert_eq!(
        types.iter().filter(|t| **t == "trial_granted").count(),
        1,
        "granted once, before its first use"
    );
    assert_eq!(types[1], "trial_granted");
    let rejection = given
        .when(charge("c4", "flux-pro", Some(1), None))
        .then_rejects("TRIAL_EXHAUSTED");
    assert_eq!(rejection.details()["limit"], 3);

    let mut given = given_account();
    for run in 1..=3 {
        given.run(charge(&format!("c{run}"), "flux-pro", Some(1), None));
    }
    given
        .ran(top_up("p1", 10_000))
        .when(charge("c4", "flux-pro", Some(1), None))
        .then_rejects("TRIAL_EXHAUSTED");
}

#[test]
fn an_upgrade_unblocks_an_exhausted_trial_model_and_a_downgrade_keeps_it_exhausted() {
    let mut given = given_account();
    for run in 1..=3 {
        given.run(charge(&format!("c{run}"), "flux-pro", Some(1), None));
    }
    given.run(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        T0,
        "2026-02-10T12:00:00Z",
        "sub-1",
    ));
    let decision = given.run(charge("c4", "flux-pro", Some(2), None));
    assert_eq!(charged(&decision.events).cost, credits(16));
    given
        .ran(subscribe(
            Tier::Free,
            None,
            "2026-01-11T00:00:00Z",
            "2026-02-11T00:00:00Z",
            "cancel-1",
        ))
        .when(charge("c5", "flux-pro", Some(1), None))
        .then_rejects("TRIAL_EXHAUSTED");
}

#[test]
fn a_window_trial_opens_on_first_run_and_expires_at_its_end() {
    let mut given = given_account();
    let decision = given.run(charge("c1", "kling-2", None, Some(10)));
    let types: Vec<_> = decision.events.iter().map(Event::type_name).collect();
    assert_eq!(
        types,
        ["trial_granted", "trial_window_opened", "credits_charged"]
    );
    let trial = given.account.core.as_ref().unwrap().trials.models["kling-2"].clone();
    assert_eq!(trial.closes_at, Some(at("2026-01-17T12:00:00Z")));
    // Inside the window: free. One millisecond before the end still counts.
    let mut given = given.at("2026-01-17T11:59:59.999Z");
    let decision = given.run(charge("c2", "kling-2", None, Some(10)));
    assert_eq!(charged(&decision.events).paid_by, PaidBy::Trial);
    let rejection = given
        .at("2026-01-17T12:00:00Z")
        .when(charge("c3", "kling-2", None, Some(10)))
        .then_rejects("TRIAL_EXPIRED");
    assert_eq!(
        rejection.details()["closed_at"],
        "2026-01-17T12:00:00+00:00"
    );
}

#[test]
fn the_scheduler_records_a_window_trials_close() {
    let mut given = given_account();
    given.run(charge("c1", "kling-2", None, Some(10)));
    let then = given.at("2026-01-18T00:00:00Z").when(Command::Tick);
    assert_eq!(then.event_types(), ["trial_window_closed"]);
    let core = then.account.core.unwrap();
    assert_eq!(
        core.trials.models["kling-2"].status(at("2026-01-18T00:00:00Z")),
        TrialStatus::Expired
    );
}

// --- pricing ----------------------------------------------------------------------------

#[test]
fn prices_are_per_image_per_second_or_per_call() {
    let mut given = given_account();
    assert_eq!(
        charged(
            &given
                .run(charge("c1", "flux-schnell", Some(4), None))
                .events
        )
        .cost,
        credits(8)
    );
    assert_eq!(charged(&given.run(chat("c2")).events).cost, credits(1));
    let mut pro = given_account().ran(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        T0,
        "2026-02-10T12:00:00Z",
        "sub-1",
    ));
    let event = pro.run(charge("c3", "kling-2", None, Some(7))).events;
    let event = charged(&event);
    assert_eq!(
        (event.cost, event.quantity, event.unit_price),
        (credits(140), 7, credits(20))
    );
    assert_eq!(event.price_unit.as_str(), "per_second");
}

#[test]
fn a_charge_without_its_quantity_or_with_the_wrong_one_is_invalid() {
    for command in [
        charge("c1", "flux-schnell", None, None),
        charge("c1", "flux-schnell", None, Some(3)),
        charge("c1", "flux-schnell", Some(1), Some(3)),
        charge("c1", "flux-schnell", Some(0), None),
        charge("c1", "flux-schnell", Some(101), None),
        charge("c1", "kling-2", None, Some(3_601)),
        charge("c1", "kling-2", Some(2), None),
        charge("c1", "assistant-chat", Some(1), None),
    ] {
        let rejection = given_account()
            .when(command)
            .then_rejects("INVALID_REQUEST");
        assert_eq!(rejection.http_status(), 400);
    }
    let then = given_account().when(charge("c1", "flux-schnell", Some(100), None));
    assert_eq!(charged(then.then_events()).cost, credits(200));
}

#[test]
fn an_unknown_model_is_refused() {
    let rejection = given_account()
        .when(charge("c1", "dall-e-9", Some(1), None))
        .then_rejects("UNKNOWN_MODEL");
    assert_eq!(rejection.http_status(), 400);
}

// --- buckets, burn order, overdraft -------------------------------------------------------

#[test]
fn charges_burn_the_soonest_expiry_first() {
    // Allowance ends Feb 10; the top-up ends Jan 20; the grant never expires.
    let then = given_account()
        .ran(top_up_until("p-soon", 5, "2026-01-20T00:00:00Z"))
        .ran(grant("g-never", 100, None))
        .when(charge("c1", "flux-schnell", Some(10), None));
    assert_eq!(
        charged(then.then_events()).drawn_from,
        vec![
            part(BucketKind::TopUp, "p-soon", 5),
            part(BucketKind::Allowance, "2026-01-10T12:00:00Z", 15)
        ]
    );
}

#[test]
fn on_equal_expiry_the_allowance_goes_first() {
    let end = "2026-02-10T12:00:00Z";
    let then = given_account()
        .ran(top_up_until("p-old", 10, end))
        .ran(grant("g1", 10, Some(end)))
        .when(chat("c1"));
    assert_eq!(
        charged(then.then_events()).drawn_from,
        vec![part(BucketKind::Allowance, "2026-01-10T12:00:00Z", 1)]
    );
}

#[test]
fn a_charge_spans_buckets_in_order_on_equal_expiry() {
    let end = "2026-02-10T12:00:00Z";
    let then = given_account()
        .ran(top_up_until("p-old", 10, end))
        .ran(top_up_until("p-new", 10, end))
        .ran(grant("g1", 10, Some(end)))
        .ran(grant("g-big", 1_000, None))
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(45), None))
        .when(charge("c3", "flux-schnell", Some(20), None));
    // 490 of 500 allowance used; 40 credits due: 10 allowance, 10 grant, 10 + 10 top-ups.
    assert_eq!(
        charged(then.then_events()).drawn_from,
        vec![
            part(BucketKind::Allowance, "2026-01-10T12:00:00Z", 10),
            part(BucketKind::Grant, "g1", 10),
            part(BucketKind::TopUp, "p-old", 10),
            part(BucketKind::TopUp, "p-new", 10),
        ]
    );
}

#[test]
fn no_overdraft_a_charge_beyond_the_live_balance_moves_nothing() {
    let given = given_account()
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None));
    let rejection = given
        .when(charge("c2", "flux-schnell", Some(51), None))
        .then_rejects("INSUFFICIENT_CREDITS");
    assert_eq!(rejection.http_status(), 402);
    assert_eq!(rejection.details()["required"], 102);
    assert_eq!(rejection.details()["available"], 100);
}

#[test]
fn a_rejection_is_not_remembered_so_a_retry_after_a_top_up_succeeds() {
    let mut given = given_account()
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None));
    let command = charge("c2", "flux-schnell", Some(60), None);
    assert!(ledger_domain::decide(&given.account, &given.catalog, &command, given.now).is_err());
    given.run(top_up("p1", 100));
    let then = given.when(command);
    assert_eq!(charged(then.then_events()).cost, credits(120));
}

#[test]
fn a_lot_is_usable_until_just_before_its_expiry_and_not_at_it() {
    let given = given_account()
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(50), None))
        .ran(top_up_until("p1", 10, "2026-01-20T12:00:00Z"));
    let then = given.at("2026-01-20T11:59:59.999Z").when(chat("c3"));
    assert_eq!(
        charged(then.then_events()).drawn_from,
        vec![part(BucketKind::TopUp, "p1", 1)]
    );
    let given = given_account()
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(50), None))
        .ran(top_up_until("p1", 10, "2026-01-20T12:00:00Z"))
        .at("2026-01-20T12:00:00Z");
    given.when(chat("c3")).then_rejects("INSUFFICIENT_CREDITS");
}

#[test]
fn expiry_records_the_forfeited_remainder_when_it_is_written() {
    let then = given_account()
        .ran(top_up_until("p1", 10, "2026-01-20T12:00:00Z"))
        .ran(grant("g1", 7, Some("2026-01-21T00:00:00Z")))
        .at("2026-01-22T00:00:00Z")
        .when(Command::Tick);
    assert_eq!(then.event_types(), ["top_up_expired", "grant_expired"]);
    match &then.then_events()[0] {
        Event::TopUpExpired(expired) => assert_eq!(expired.forfeited, credits(10)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        then.account.core.unwrap().balance.totals.forfeited,
        credits(17)
    );
}

#[test]
fn top_ups_expire_after_the_catalogs_default_when_no_expiry_is_given() {
    let then = given_account().when(top_up("p1", 10));
    match &then.then_events()[0] {
        Event::TopUpPurchased(bought) => assert_eq!(bought.expires_at, at("2026-04-10T12:00:00Z")),
        other => panic!("unexpected {other:?}"),
    }
}

// --- refunds ------------------------------------------------------------------------------

#[test]
fn a_refund_returns_the_recorded_parts_to_their_buckets() {
    let then = given_account()
        .ran(charge("c1", "flux-schnell", Some(10), None))
        .when(Command::RefundCharge {
            charge_id: "c1".into(),
            reason: "node failed".into(),
        });
    match &then.then_events()[0] {
        Event::ChargeRefunded(refund) => {
            assert_eq!(
                refund.returned,
                vec![part(BucketKind::Allowance, "2026-01-10T12:00:00Z", 20)]
            );
            assert!(refund.forfeited.is_empty());
            assert_eq!(refund.balance_after, Some(credits(500)));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_refunded_part_whose_bucket_expired_or_was_reset_is_forfeited() {
    let then = given_account()
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(50), None))
        .ran(top_up_until("p1", 10, "2026-01-20T12:00:00Z"))
        .ran(charge("c3", "assistant-chat", None, None))
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            "2026-01-11T00:00:00Z",
            "2026-02-11T00:00:00Z",
            "sub-1",
        ))
        .at("2026-01-25T00:00:00Z")
        .when(Command::RefundCharge {
            charge_id: "c2".into(),
            reason: "failed".into(),
        });
    // c2 drew from the free allowance, since reset by the upgrade.
    let refund = then
        .then_events()
        .iter()
        .find_map(|e| match e {
            Event::ChargeRefunded(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert!(refund.returned.is_empty());
    assert_eq!(
        refund.forfeited,
        vec![part(BucketKind::Allowance, "2026-01-10T12:00:00Z", 100)]
    );
    // The lot used by c3 expired before the refund arrived: forfeited too.
    let given = given_account()
        .ran(charge("c0", "flux-schnell", Some(100), None))
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(50), None))
        .ran(top_up_until("p1", 10, "2026-01-20T12:00:00Z"))
        .ran(chat("c3"))
        .at("2026-01-25T00:00:00Z");
    let then = given.when(Command::RefundCharge {
        charge_id: "c3".into(),
        reason: "failed".into(),
    });
    assert_eq!(then.event_types(), ["top_up_expired", "charge_refunded"]);
}

#[test]
fn refunding_an_unknown_charge_is_not_found() {
    let rejection = given_account()
        .when(Command::RefundCharge {
            charge_id: "nope".into(),
            reason: "x".into(),
        })
        .then_rejects("NOT_FOUND");
    assert_eq!(rejection.http_status(), 404);
}

// --- holds --------------------------------------------------------------------------------

#[test]
fn a_hold_earmarks_credits_that_other_charges_cannot_use() {
    let mut given = given_account();
    given.run(hold("h1", "flux-schnell", Some(100), None, None));
    given.run(hold("h2", "flux-schnell", Some(100), None, None));
    assert_eq!(given.available(), 100);
    assert_eq!(given.account.core.as_ref().unwrap().held(), credits(400));
    given
        .when(charge("c1", "flux-schnell", Some(51), None))
        .then_rejects("INSUFFICIENT_CREDITS");
}

#[test]
fn capture_charges_the_actual_quantity_and_returns_the_rest() {
    let mut given = given_account().ran(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        T0,
        "2026-02-10T12:00:00Z",
        "sub-1",
    ));
    given.run(hold("h1", "kling-2", None, Some(10), Some("30m")));
    assert_eq!(given.available(), 4_800);
    let then = given.when(capture("h1", None, Some(4)));
    match then.then_reply() {
        Reply::HoldResolved(receipt) => {
            assert_eq!(receipt.cost, credits(80));
            assert_eq!(receipt.returned[0].amount, credits(120));
            assert_eq!(receipt.balance, Some(credits(4_920)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(then.account.core.unwrap().held(), credits(0));
}

#[test]
fn capture_cannot_exceed_the_held_quantity() {
    given_account()
        .ran(hold("h1", "flux-schnell", Some(2), None, None))
        .when(capture("h1", Some(3), None))
        .then_rejects("INVALID_REQUEST");
}

#[test]
fn release_returns_everything() {
    let mut given = given_account();
    given.run(hold("h1", "flux-schnell", Some(10), None, None));
    let then = given.when(Command::ReleaseHold {
        hold_id: "h1".into(),
    });
    assert_eq!(then.event_types(), ["hold_released"]);
    assert_eq!(then.account.core.unwrap().available(at(T0)), credits(500));
}

#[test]
fn an_uncaptured_hold_expires_after_its_ttl_and_returns_everything() {
    let mut given = given_account();
    given.run(hold("h1", "flux-schnell", Some(10), None, Some("90s")));
    // Before the ttl it is open; at it, the hold is closed even before the scheduler runs.
    let mut given = given.at("2026-01-10T12:01:30Z");
    given
        .when_ref(capture("h1", None, None))
        .then_rejects("HOLD_CLOSED");
    let decision = given.run(Command::Tick);
    assert_eq!(
        decision
            .events
            .iter()
            .map(Event::type_name)
            .collect::<Vec<_>>(),
        ["hold_expired"]
    );
    assert_eq!(given.available(), 500);
}

trait WhenRef {
    fn when_ref(&self, command: Command) -> Then;
}

impl WhenRef for Given {
    fn when_ref(&self, command: Command) -> Then {
        Given {
            account: self.account.clone(),
            catalog: self.catalog.clone(),
            now: self.now,
            history: Vec::new(),
        }
        .when(command)
    }
}

#[test]
fn a_hold_resolves_exactly_once() {
    let mut given = given_account();
    given.run(hold("h1", "flux-schnell", Some(10), None, None));
    given.run(capture("h1", Some(5), None));
    let rejection = given
        .when_ref(Command::ReleaseHold {
            hold_id: "h1".into(),
        })
        .then_rejects("HOLD_CLOSED");
    assert_eq!(rejection.details()["status"], "captured");
    given
        .when_ref(capture("h1", Some(6), None))
        .then_rejects("HOLD_CLOSED");
    // The same capture again is an idempotent retry.
    given.when_ref(capture("h1", Some(5), None)).then_replayed();
    given
        .when_ref(capture("nope", None, None))
        .then_rejects("NOT_FOUND");
}

#[test]
fn earmarked_credits_survive_renewal_and_are_forfeited_on_return_if_their_bucket_is_gone() {
    let mut given = given_account().ran(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        T0,
        "2026-02-10T12:00:00Z",
        "sub-1",
    ));
    given.run(hold("h1", "kling-2", None, Some(100), Some("24h")));
    assert_eq!(given.available(), 3_000);
    let mut given = given.at("2026-01-10T13:00:00Z");
    let decision = given.run(renew(
        "inv-2",
        "2026-01-10T13:00:00Z",
        "2026-02-10T13:00:00Z",
    ));
    match &decision.events[0] {
        Event::AllowanceRenewed(renewed) => assert_eq!(
            renewed.forfeited,
            credits(3_000),
            "earmarks are not forfeited"
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(given.account.core.as_ref().unwrap().held(), credits(2_000));
    let then = given.when(capture("h1", None, Some(40)));
    match then.then_reply() {
        Reply::HoldResolved(receipt) => {
            assert_eq!(receipt.cost, credits(800));
            assert!(receipt.returned.is_empty());
            assert_eq!(receipt.forfeited[0].amount, credits(1_200));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_hold_ttl_over_a_day_is_invalid() {
    given_account()
        .when(hold("h1", "flux-schnell", Some(1), None, Some("25h")))
        .then_rejects("INVALID_REQUEST");
}

// --- idempotency --------------------------------------------------------------------------

#[test]
fn the_same_charge_id_and_body_returns_the_first_result_and_writes_nothing() {
    let mut given = given_account();
    let first = given.run(chat("c1")).reply;
    let then = given.when(chat("c1"));
    assert_eq!(then.then_replayed(), &first);
}

#[test]
fn the_same_charge_id_with_a_different_body_is_a_conflict() {
    let rejection = given_account()
        .ran(chat("c1"))
        .when(charge("c1", "flux-schnell", Some(1), None))
        .then_rejects("IDEMPOTENCY_CONFLICT");
    assert_eq!(rejection.http_status(), 409);
}

#[test]
fn billing_commands_are_idempotent_by_their_provider_ids() {
    let sub = || {
        subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        )
    };
    let given = given_account()
        .ran(top_up("p1", 10))
        .ran(grant("g1", 5, None))
        .ran(sub());
    given.when_ref(top_up("p1", 10)).then_replayed();
    given
        .when_ref(top_up("p1", 11))
        .then_rejects("IDEMPOTENCY_CONFLICT");
    given.when_ref(grant("g1", 5, None)).then_replayed();
    given
        .when_ref(grant("g1", 6, None))
        .then_rejects("IDEMPOTENCY_CONFLICT");
    given.when_ref(sub()).then_replayed();
    given
        .when_ref(subscribe(
            Tier::Pro,
            Some(Billing::Annual),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .then_rejects("IDEMPOTENCY_CONFLICT");
    let given = given.ran(renew(
        "inv-2",
        "2026-02-10T12:00:00Z",
        "2026-03-10T12:00:00Z",
    ));
    given
        .when_ref(renew(
            "inv-2",
            "2026-02-10T12:00:00Z",
            "2026-03-10T12:00:00Z",
        ))
        .then_replayed();
    given
        .when_ref(renew(
            "inv-2",
            "2026-02-10T12:00:00Z",
            "2026-03-11T12:00:00Z",
        ))
        .then_rejects("IDEMPOTENCY_CONFLICT");
}

#[test]
fn a_top_up_retry_is_compared_with_the_body_as_sent() {
    // First sent without `expires_at`: a retry that sends the defaulted expiry is another body.
    let given = given_account().ran(top_up("p1", 10));
    let defaulted = "2026-04-10T12:00:00Z";
    given.when_ref(top_up("p1", 10)).then_replayed();
    given
        .when_ref(top_up_until("p1", 10, defaulted))
        .then_rejects("IDEMPOTENCY_CONFLICT");
    // First sent with `expires_at`: leaving it out of the retry is another body.
    let given = given_account().ran(top_up_until("p2", 10, "2026-03-01T00:00:00Z"));
    given
        .when_ref(top_up_until("p2", 10, "2026-03-01T00:00:00Z"))
        .then_replayed();
    given
        .when_ref(top_up("p2", 10))
        .then_rejects("IDEMPOTENCY_CONFLICT");
}

#[test]
fn a_replay_names_the_version_whose_answer_it_repeats() {
    let given = given_account()
        .ran(top_up("p1", 10))
        .ran(chat("c1"))
        .ran(grant("g1", 5, None));
    let then = given.when_ref(top_up("p1", 10));
    then.then_replayed();
    assert_eq!(then.outcome.as_ref().unwrap().replay_of, Some(2));
    let then = given.when_ref(chat("c1"));
    then.then_replayed();
    assert_eq!(then.outcome.as_ref().unwrap().replay_of, Some(3));
    let then = given.when_ref(chat("c2"));
    assert_eq!(then.outcome.as_ref().unwrap().replay_of, None);
}

#[test]
fn a_backdated_annual_subscription_lands_in_the_window_that_contains_its_time() {
    // A paid year that began on Jan 31, subscribed to on Nov 27: the current anniversary
    // window is Oct 31 .. Nov 30, with its full allowance and the annual bonus at once.
    let mut given = given_account_at("2026-11-27T10:00:00Z");
    given.run(subscribe(
        Tier::Pro,
        Some(Billing::Annual),
        "2026-01-31T09:00:00Z",
        "2027-01-31T09:00:00Z",
        "sub-back",
    ));
    let core = given.account.core.clone().unwrap();
    let allowance = core.balance.allowance().unwrap();
    assert_eq!(
        allowance.period(),
        Some((at("2026-10-31T09:00:00Z"), at("2026-11-30T09:00:00Z")))
    );
    assert_eq!(allowance.remaining, credits(6_000));
    assert_eq!(given.available(), 6_000);
    // Nothing is due until the window ends: no phantom refresh of an earlier window.
    given.run(chat("c1"));
    given.now = at("2026-11-27T10:00:01Z");
    let then = given.when_ref(Command::Tick);
    assert!(then.then_events().is_empty(), "no refresh is due yet");
    let then = given.at("2026-11-30T09:00:00Z").when(Command::Tick);
    match &then.then_events()[0] {
        Event::AllowanceRenewed(renewed) => {
            assert_eq!(renewed.allowance_period_start, at("2026-11-30T09:00:00Z"));
            assert_eq!(renewed.allowance_period_end, at("2026-12-31T09:00:00Z"));
            assert_eq!(renewed.forfeited, credits(5_999));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_backdated_free_or_monthly_subscription_starts_with_its_windows_full_allowance() {
    let mut given = given_account_at("2026-11-27T10:00:00Z");
    given.run(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        "2026-11-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
        "sub-m",
    ));
    assert_eq!(given.available(), 5_000);
    given.run(subscribe(
        Tier::Free,
        None,
        "2026-08-15T00:00:00Z",
        "2026-12-15T00:00:00Z",
        "sub-f",
    ));
    let allowance = given
        .account
        .core
        .clone()
        .unwrap()
        .balance
        .allowance()
        .cloned()
        .unwrap();
    assert_eq!(
        allowance.period(),
        Some((at("2026-11-15T00:00:00Z"), at("2026-12-15T00:00:00Z")))
    );
    assert_eq!(given.available(), 500);
    let then = given.at("2026-11-27T10:00:01Z").when(Command::Tick);
    assert!(then.then_events().is_empty(), "no refresh is due yet");
}

#[test]
fn a_renewal_not_starting_after_the_current_period_is_stale() {
    let given = given_account()
        .ran(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "sub-1",
        ))
        .ran(renew(
            "inv-2",
            "2026-02-10T12:00:00Z",
            "2026-03-10T12:00:00Z",
        ));
    let rejection = given
        .when_ref(renew(
            "inv-old",
            "2026-02-10T12:00:00Z",
            "2026-03-10T12:00:00Z",
        ))
        .then_rejects("STALE_RENEWAL");
    assert_eq!(rejection.http_status(), 409);
    given
        .when_ref(renew("inv-older", T0, "2026-02-10T12:00:00Z"))
        .then_rejects("STALE_RENEWAL");
}

#[test]
fn the_same_hold_id_is_idempotent_even_after_the_hold_resolved() {
    let mut given = given_account();
    let first = given
        .run(hold("h1", "flux-schnell", Some(10), None, None))
        .reply;
    given.run(Command::ReleaseHold {
        hold_id: "h1".into(),
    });
    assert_eq!(
        given
            .when_ref(hold("h1", "flux-schnell", Some(10), None, None))
            .then_replayed(),
        &first
    );
    given
        .when_ref(hold("h1", "flux-schnell", Some(11), None, None))
        .then_rejects("IDEMPOTENCY_CONFLICT");
    given
        .when_ref(Command::ReleaseHold {
            hold_id: "h1".into(),
        })
        .then_replayed();
}

#[test]
fn a_refund_is_idempotent() {
    let given = given_account().ran(chat("c1")).ran(Command::RefundCharge {
        charge_id: "c1".into(),
        reason: "failed".into(),
    });
    given
        .when_ref(Command::RefundCharge {
            charge_id: "c1".into(),
            reason: "failed".into(),
        })
        .then_replayed();
    given
        .when_ref(Command::RefundCharge {
            charge_id: "c1".into(),
            reason: "other".into(),
        })
        .then_rejects("IDEMPOTENCY_CONFLICT");
}

// --- accounts and validation ---------------------------------------------------------------

#[test]
fn an_account_opens_once() {
    let rejection = given_account()
        .when(Command::OpenAccount)
        .then_rejects("ACCOUNT_EXISTS");
    assert_eq!(rejection.http_status(), 409);
}

#[test]
fn commands_on_a_missing_account_are_account_not_found() {
    let account = ledger_domain::Account::new("ghost");
    let rejection =
        ledger_domain::decide(&account, &Catalog::shipped(), &chat("c1"), at(T0)).unwrap_err();
    assert_eq!(rejection.code(), "ACCOUNT_NOT_FOUND");
    assert_eq!(rejection.http_status(), 404);
}

#[test]
fn account_ids_are_checked() {
    for bad in ["", "has space", "ünicode", &"x".repeat(65)] {
        let account = ledger_domain::Account::new(bad);
        let rejection =
            ledger_domain::decide(&account, &Catalog::shipped(), &Command::OpenAccount, at(T0))
                .unwrap_err();
        assert_eq!(rejection.code(), "INVALID_REQUEST", "{bad:?}");
    }
}

#[test]
fn amounts_and_periods_are_validated() {
    given_account()
        .when(top_up("p1", 0))
        .then_rejects("INVALID_REQUEST");
    given_account()
        .when(top_up_until("p1", 5, "2026-01-01T00:00:00Z"))
        .then_rejects("INVALID_REQUEST");
    given_account()
        .when(subscribe(
            Tier::Pro,
            Some(Billing::Monthly),
            "2026-02-10T12:00:00Z",
            T0,
            "s",
        ))
        .then_rejects("INVALID_REQUEST");
    given_account()
        .when(subscribe(Tier::Pro, None, T0, "2026-02-10T12:00:00Z", "s"))
        .then_rejects("INVALID_REQUEST");
    given_account()
        .when(subscribe(
            Tier::Free,
            Some(Billing::Monthly),
            T0,
            "2026-02-10T12:00:00Z",
            "s",
        ))
        .then_rejects("INVALID_REQUEST");
    given_account()
        .when(renew("inv", "2026-02-10T12:00:00Z", "2026-03-10T12:00:00Z"))
        .then_rejects("INVALID_REQUEST");
}

#[test]
fn every_error_code_maps_to_its_http_status() {
    let now = at(T0);
    let table: Vec<(Rejection, &str, u16)> = vec![
        (Rejection::invalid("x"), "INVALID_REQUEST", 400),
        (
            Rejection::UnknownModel { model: "m".into() },
            "UNKNOWN_MODEL",
            400,
        ),
        (Rejection::Unauthenticated, "UNAUTHENTICATED", 401),
        (
            Rejection::Forbidden {
                role: "executor".into(),
            },
            "FORBIDDEN",
            403,
        ),
        (
            Rejection::ModelTierRequired {
                model: "m".into(),
                required: Tier::Pro,
                tier: Tier::Free,
            },
            "MODEL_TIER_REQUIRED",
            403,
        ),
        (
            Rejection::TrialExhausted {
                model: "m".into(),
                limit: 3,
            },
            "TRIAL_EXHAUSTED",
            403,
        ),
        (
            Rejection::TrialExpired {
                model: "m".into(),
                closed_at: now,
            },
            "TRIAL_EXPIRED",
            403,
        ),
        (
            Rejection::ScopeRequired { scope: "free" },
            "SCOPE_REQUIRED",
            403,
        ),
        (
            Rejection::BusinessVerificationRequired { status: "none" },
            "BUSINESS_VERIFICATION_REQUIRED",
            403,
        ),
        (
            Rejection::InsufficientCredits {
                required: credits(2),
                available: credits(1),
            },
            "INSUFFICIENT_CREDITS",
            402,
        ),
        (
            Rejection::AccountNotFound {
                account_id: "a".into(),
            },
            "ACCOUNT_NOT_FOUND",
            404,
        ),
        (
            Rejection::NotFound {
                what: "hold",
                id: "h".into(),
            },
            "NOT_FOUND",
            404,
        ),
        (
            Rejection::AccountExists {
                account_id: "a".into(),
            },
            "ACCOUNT_EXISTS",
            409,
        ),
        (
            Rejection::IdempotencyConflict { id: "c".into() },
            "IDEMPOTENCY_CONFLICT",
            409,
        ),
        (
            Rejection::StaleRenewal {
                period_start: now,
                current_period_start: now,
            },
            "STALE_RENEWAL",
            409,
        ),
        (
            Rejection::HoldClosed {
                hold_id: "h".into(),
                status: "captured",
            },
            "HOLD_CLOSED",
            409,
        ),
        (
            Rejection::PayloadTooLarge {
                limit_bytes: 65_536,
            },
            "PAYLOAD_TOO_LARGE",
            413,
        ),
        (
            Rejection::Unavailable {
                message: "down".into(),
            },
            "UNAVAILABLE",
            503,
        ),
    ];
    for (rejection, code, status) in table {
        assert_eq!(rejection.code(), code);
        assert_eq!(rejection.http_status(), status, "{code}");
        let message = rejection.message();
        assert!(
            !message.is_empty() && !message.ends_with('.'),
            "{code}: {message:?}"
        );
        assert!(rejection.details().is_object());
    }
}

#[test]
fn the_scheduler_knows_when_an_account_next_has_something_due() {
    let given = given_account();
    // A free account: its anniversary.
    assert_eq!(due_at(&given.account, T0), Some(at("2026-02-10T12:00:00Z")));
    let mut given = given.ran(top_up_until("p1", 5, "2026-01-20T00:00:00Z"));
    given.run(hold("h1", "assistant-chat", None, None, Some("15m")));
    assert_eq!(due_at(&given.account, T0), Some(at("2026-01-10T12:15:00Z")));
    // A monthly pro account with nothing else pending waits for billing.
    let given = given_account().ran(subscribe(
        Tier::Pro,
        Some(Billing::Monthly),
        T0,
        "2026-02-10T12:00:00Z",
        "s",
    ));
    assert_eq!(due_at(&given.account, T0), None);
    // Ticking before it writes nothing; at it, the due events.
    let given = given_account().at("2026-02-10T11:59:59Z");
    assert!(given.when_ref(Command::Tick).then_events().is_empty());
}

/// When the scheduler, asking at `now`, next has something to do for the account.
fn due_at(account: &ledger_domain::Account, now: &str) -> Option<ledger_domain::Instant> {
    let core = account.core.as_ref().unwrap();
    ledger_domain::decide::next_due_at(&core.plan, &core.balance, &core.trials, at(now))
}

#[test]
fn a_lapsed_annual_plan_is_left_to_billing_not_ticked_again_and_again() {
    let given = given_account().ran(subscribe(
        Tier::Pro,
        Some(Billing::Annual),
        T0,
        "2027-01-10T12:00:00Z",
        "sub-a",
    ));
    assert_eq!(due_at(&given.account, T0), Some(at("2026-02-10T12:00:00Z")));
    // Past the paid year with no renewal: a tick would write nothing, so nothing is due.
    let late = "2027-02-01T00:00:00Z";
    assert_eq!(due_at(&given.account, late), None);
    assert!(given
        .at(late)
        .when_ref(Command::Tick)
        .then_events()
        .is_empty());
}
