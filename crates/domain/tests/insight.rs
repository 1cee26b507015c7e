//! The insight reads of SPEC section 13 held to the rules they report: a model's badge is
//! `locked` exactly when admission would refuse it with a tier or trial code, every history
//! point is what explain gives as of its instant, and usage nets refunds out and counts trial
//! runs at 0 credits. Random histories run through `decide`, as the service runs them.

mod support;

use std::collections::BTreeSet;

use chrono::TimeDelta;
use ledger_domain::admission::{admit, AdmissionNode, NodeType};
use ledger_domain::catalog::{Model, ModelKind, PriceUnit, Tier};
use ledger_domain::command::*;
use ledger_domain::envelope::{seal, Cause, Envelope, GENESIS_HASH};
use ledger_domain::events::{ChargeRefunded, Event, PaidBy, Via};
use ledger_domain::explain::{explain, history, HistoryError, HistoryRange, Point};
use ledger_domain::insight::{model_badge, refresh_dates, BadgeAccess};
use ledger_domain::usage::{Stored, Tally, Usage, UsageBy, UsageRange, UsageRangeError};
use ledger_domain::{decide, Account, Catalog, DurationS, Instant};
use proptest::prelude::*;
use support::*;

#[derive(Debug, Clone)]
enum Op {
    Advance(u32),
    Charge { model: u8, amount: u8 },
    TopUp { credits: u16, expires_h: u16 },
    Grant { credits: u16 },
    Subscribe { tier: u8, annual: bool },
    Hold { model: u8, ttl_m: u8 },
    Capture { hold: u8 },
    Refund { charge: u8 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..2_000_000).prop_map(Op::Advance),
        6 => (0u8..6, 1u8..20).prop_map(|(model, amount)| Op::Charge { model, amount }),
        1 => (1u16..2_000, 1u16..3_000).prop_map(|(credits, expires_h)| Op::TopUp { credits, expires_h }),
        1 => (1u16..500).prop_map(|credits| Op::Grant { credits }),
        1 => (0u8..4, any::<bool>()).prop_map(|(tier, annual)| Op::Subscribe { tier, annual }),
        2 => (0u8..6, 1u8..60).prop_map(|(model, ttl_m)| Op::Hold { model, ttl_m }),
        1 => (0u8..40).prop_map(|hold| Op::Capture { hold }),
        1 => (0u8..40).prop_map(|charge| Op::Refund { charge }),
    ]
}

/// The request fields a model's price unit needs.
fn quantity(model: &Model, amount: u32) -> Quantity {
    match model.price.unit {
        PriceUnit::PerImage => Quantity {
            images: Some(amount.clamp(1, 100)),
            seconds: None,
        },
        PriceUnit::PerSecond => Quantity {
            images: None,
            seconds: Some(amount.clamp(1, 3_600)),
        },
        PriceUnit::PerCall => Quantity::default(),
    }
}

fn command(op: &Op, catalog: &Catalog, index: usize, now: Instant) -> Option<Command> {
    let model = |at: u8| &catalog.models()[usize::from(at) % catalog.models().len()];
    Some(match *op {
        Op::Advance(_) => return None,
        Op::Charge { model: at, amount } => Command::Charge(Charge {
            charge_id: format!("c{index}"),
            run_id: "run".into(),
            node_id: "node".into(),
            model: model(at).id.clone(),
            quantity: quantity(model(at), u32::from(amount)),
            via: Via::App,
        }),
        Op::TopUp { credits, expires_h } => Command::PurchaseTopUp(PurchaseTopUp {
            purchase_id: format!("p{index}"),
            credits: u64::from(credits),
            expires_at: Some(now + TimeDelta::hours(i64::from(expires_h))),
        }),
        Op::Grant { credits } => Command::AddGrant(AddGrant {
            grant_id: format!("g{index}"),
            credits: u64::from(credits),
            reason: "goodwill".into(),
            expires_at: None,
        }),
        Op::Subscribe { tier, annual } => {
            let tier = [Tier::Free, Tier::Pro, Tier::Enterprise, Tier::Pro][usize::from(tier)];
            let months = if annual { 12 } else { 1 };
            Command::ChangeSubscription(ChangeSubscription {
                tier,
                billing: (tier != Tier::Free).then_some(if annual {
                    ledger_domain::events::Billing::Annual
                } else {
                    ledger_domain::events::Billing::Monthly
                }),
                period_start: now,
                period_end: ledger_domain::time::add_months(now, months),
                reference: format!("s{index}"),
                allowance: None,
            })
        }
        Op::Hold { model: at, ttl_m } => Command::PlaceHold(PlaceHold {
            hold_id: format!("h{index}"),
            run_id: "run".into(),
            node_id: "node".into(),
            model: model(at).id.clone(),
            quantity: quantity(model(at), 10),
            via: Via::App,
            ttl: Some(DurationS::from_secs(u64::from(ttl_m) * 60)),
        }),
        Op::Capture { hold } => Command::CaptureHold(CaptureHold {
            hold_id: format!("h{hold}"),
            quantity: Quantity::default(),
        }),
        Op::Refund { charge } => Command::RefundCharge {
            charge_id: format!("c{charge}"),
            reason: "run failed".into(),
        },
    })
}

/// An account opened at `T0` and driven through `ops`, its stream sealed as the service seals
/// it; rejected commands write nothing. Calls `each` with the account after every step.
fn drive(
    catalog: &Catalog,
    ops: &[Op],
    mut each: impl FnMut(&Account, Instant) -> Result<(), TestCaseError>,
) -> Result<(Vec<Envelope>, Instant), TestCaseError> {
    let mut account = Account::new("acct");
    let mut now = at(T0);
    let mut envelopes: Vec<Envelope> = Vec::new();
    let steps = std::iter::once(None).chain(ops.iter().map(Some));
    for (index, op) in steps.enumerate() {
        let command = match op {
            None => Some(Command::OpenAccount),
            Some(op) => {
                if let Op::Advance(seconds) = op {
                    now += TimeDelta::seconds(i64::from(*seconds));
                }
                command(op, catalog, index - 1, now)
            }
        };
        if let Some(decision) =
            command.and_then(|command| decide(&account, catalog, &command, now).ok())
        {
            let prev = envelopes
                .last()
                .map_or(GENESIS_HASH.to_string(), |last| last.hash.clone());
            let cause = Cause {
                command_id: format!("cmd-{index}"),
                actor: "test".into(),
            };
            for (envelope, _) in seal(
                "account-acct",
                account.version,
                &prev,
                &cause,
                now,
                now,
                decision.events,
            ) {
                account.evolve(&envelope.event);
                envelopes.push(envelope);
            }
        }
        each(&account, now)?;
    }
    Ok((envelopes, now))
}

fn node_for(model: &Model) -> AdmissionNode {
    let node_type = match model.kind {
        ModelKind::Image => NodeType::ImageGenerator,
        ModelKind::Video => NodeType::VideoGenerator,
        ModelKind::Music => NodeType::MusicGenerator,
        ModelKind::Assistant => NodeType::Assistant,
        ModelKind::Custom => NodeType::CustomModel,
    };
    AdmissionNode {
        node_id: "n1".into(),
        node_type,
        model: Some(model.id.clone()),
        quantity: quantity(model, 1),
    }
}

const TIER_OR_TRIAL: [&str; 3] = ["MODEL_TIER_REQUIRED", "TRIAL_EXHAUSTED", "TRIAL_EXPIRED"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_badge_is_locked_exactly_when_admission_refuses_with_a_tier_or_trial_code(
        ops in prop::collection::vec(op_strategy(), 1..40),
        later_s in 0i64..1_000_000,
    ) {
        let catalog = Catalog::shipped();
        drive(&catalog, &ops, |account, now| {
            let core = account.core.as_ref().expect("opened");
            // Also later than the last command: a trial window runs out by the clock alone.
            for at in [now, now + TimeDelta::seconds(later_s)] {
                for model in catalog.models() {
                    let badge = model_badge(core, model, at);
                    let admitted = admit(core, &catalog, Via::App, &[node_for(model)], at);
                    let refused_by_tier_or_trial = admitted
                        .as_ref()
                        .err()
                        .is_some_and(|blocked| TIER_OR_TRIAL.contains(&blocked.rejection.code()));
                    prop_assert_eq!(badge.access == BadgeAccess::Locked, refused_by_tier_or_trial,
                        "{} at {}: {:?} vs {:?}", model.id, at, badge, admitted);
                    let by_trial = admitted.as_ref().is_ok_and(|ok| ok.nodes[0].paid_by == PaidBy::Trial);
                    prop_assert_eq!(badge.access == BadgeAccess::Trial, by_trial, "{}", model.id);
                    prop_assert_eq!(badge.reason_code, admitted.as_ref().err()
                        .map(|blocked| blocked.rejection.code())
                        .filter(|code| TIER_OR_TRIAL.contains(code)));
                    prop_assert_eq!(badge.required_tier.is_none(), badge.access == BadgeAccess::Open);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn every_history_point_is_what_explain_gives_as_of_its_instant(
        ops in prop::collection::vec(op_strategy(), 1..40),
        points in 1i64..60,
        before_s in 0i64..10_000,
    ) {
        let catalog = Catalog::shipped();
        let (envelopes, last) = drive(&catalog, &ops, |_, _| Ok(()))?;
        let from = at(T0) - TimeDelta::seconds(before_s);
        let step_s = ((last - from).num_seconds() / points).max(1);
        let to = last + TimeDelta::seconds(step_s);
        let range = HistoryRange::new(from, to, DurationS::from_secs(step_s as u64), to)
            .expect("a valid range");
        let drawn = history(&envelopes, &range);
        prop_assert_eq!(drawn.len() as u64, range.len());
        for (point, at) in drawn.iter().zip(range.instants()) {
            let explained = explain("acct", &envelopes, &catalog, at);
            prop_assert_eq!(*point, Point::of(&explained.balance, at));
        }
    }

    /// Before `charge_refunded` v2 named its charge, the usage row remembered every charge
    /// by id; now it keeps only the day of each run of charge versions. Read as the old
    /// versions (charges at v2, refunds at v1, upcast), the same history must count the
    /// same, and the new row must stay as small as its days.
    #[test]
    fn regression_the_usage_row_kept_every_charge_id_and_grew_with_each_charge(
        ops in prop::collection::vec(op_strategy(), 1..60),
    ) {
        let catalog = Catalog::shipped();
        let (envelopes, _) = drive(&catalog, &ops, |_, _| Ok(()))?;
        let mut named = Usage::default();
        let mut remembered = Usage::default();
        for envelope in &envelopes {
            named.apply(&envelope.event, Stored::of(envelope));
            let (event, schema_version) = match &envelope.event {
                Event::CreditsCharged(_) => (envelope.event.clone(), 2),
                Event::ChargeRefunded(refund) => {
                    let v1 = ChargeRefunded { model: None, charge_version: None, cost: None, ..refund.clone() };
                    (Event::ChargeRefunded(v1), 1)
                }
                other => (other.clone(), envelope.schema_version),
            };
            remembered.apply(&event, Stored { schema_version, ..Stored::of(envelope) });
        }
        prop_assert_eq!(&named.days, &remembered.days);
        prop_assert!(named.legacy_charges.is_empty());
        let charged_days = named.charge_days.iter().map(|entry| entry.1).collect::<BTreeSet<_>>();
        prop_assert_eq!(charged_days.len(), named.charge_days.len(), "one entry per day");
    }
}

#[test]
fn history_ranges_are_checked_before_anything_is_read() {
    let now = at("2026-03-01T00:00:00Z");
    let day = DurationS::from_secs(86_400);
    let range = |from: &str, to: &str, step| HistoryRange::new(at(from), at(to), step, now);
    assert!(matches!(
        range("2026-02-02T00:00:00Z", "2026-02-01T00:00:00Z", day),
        Err(HistoryError::Reversed { .. })
    ));
    assert!(matches!(
        range("2026-02-01T00:00:00Z", "2026-03-02T00:00:00Z", day),
        Err(HistoryError::Future { .. })
    ));
    assert!(matches!(
        range(
            "2026-02-01T00:00:00Z",
            "2026-02-02T00:00:00Z",
            DurationS::from_secs(0)
        ),
        Err(HistoryError::ZeroStep)
    ));
    let too_many = range(
        "2026-02-01T00:00:00Z",
        "2026-02-02T00:00:00Z",
        DurationS::from_secs(60),
    );
    assert!(
        matches!(
            too_many,
            Err(HistoryError::TooManyPoints { points: 1_441, .. })
        ),
        "{too_many:?}"
    );
    let fine = range("2026-02-01T00:00:00Z", "2026-02-11T00:00:00Z", day).expect("11 points");
    assert_eq!(fine.len(), 11);
    assert_eq!(fine.instants().last(), Some(at("2026-02-11T00:00:00Z")));
    let exact = range(
        "2026-01-01T00:00:00Z",
        "2026-01-01T16:39:00Z",
        DurationS::from_secs(60),
    );
    assert_eq!(exact.map(|range| range.len()), Ok(1_000));
}

#[test]
fn refresh_dates_follow_the_plan() {
    let plan = |given: &Given| {
        let core = given.account.core.as_ref().expect("opened");
        refresh_dates(&core.plan, &core.balance, given.now)
    };
    // Free: refreshed at opening, next on the monthly anniversary.
    let mut given = given_account().at("2026-01-20T00:00:00Z");
    let free = plan(&given);
    assert_eq!(free.last_refresh_at, Some(at(T0)));
    assert_eq!(free.next_refresh_at, Some(at("2026-02-10T12:00:00Z")));
    // A refresh due but not yet written counts as done at `now`.
    given = given.at("2026-02-15T00:00:00Z");
    let due = plan(&given);
    assert_eq!(due.last_refresh_at, Some(at("2026-02-10T12:00:00Z")));
    assert_eq!(due.next_refresh_at, Some(at("2026-03-10T12:00:00Z")));
    // Monthly pro renews through billing: no scheduled refresh.
    given.run(subscribe(
        Tier::Pro,
        Some(ledger_domain::events::Billing::Monthly),
        "2026-02-15T00:00:00Z",
        "2026-03-15T00:00:00Z",
        "s1",
    ));
    let monthly = plan(&given);
    assert_eq!(monthly.last_refresh_at, Some(at("2026-02-15T00:00:00Z")));
    assert_eq!(monthly.next_refresh_at, None);
    // Annual pro refreshes monthly inside its paid year, and billing renews at its end.
    given.run(subscribe(
        Tier::Pro,
        Some(ledger_domain::events::Billing::Annual),
        "2026-02-15T00:00:00Z",
        "2027-02-15T00:00:00Z",
        "s2",
    ));
    assert_eq!(
        plan(&given).next_refresh_at,
        Some(at("2026-03-15T00:00:00Z"))
    );
    given = given.at("2027-01-20T00:00:00Z");
    let last_month = plan(&given);
    assert_eq!(last_month.last_refresh_at, Some(at("2027-01-15T00:00:00Z")));
    assert_eq!(last_month.next_refresh_at, None);
}

#[test]
fn usage_nets_refunds_out_on_the_charges_day_and_counts_trial_runs_at_zero() {
    let mut given = given_account();
    given.run(charge("c1", "flux-schnell", Some(3), None));
    given.run(charge("c2", "flux-pro", Some(1), None));
    given = given.at("2026-01-11T09:00:00Z");
    given.run(chat("c3"));
    given.run(Command::RefundCharge {
        charge_id: "c1".into(),
        reason: "failed".into(),
    });
    given.run(hold("h1", "flux-schnell", Some(2), None, None));
    given.run(capture("h1", Some(1), None));
    let mut usage = Usage::default();
    let mut now = at(T0);
    for (index, event) in given.history.iter().enumerate() {
        if matches!(event, ledger_domain::events::Event::CreditsCharged(data) if data.charge_id == "c3")
        {
            now = at("2026-01-11T09:00:00Z");
        }
        let stored = Stored {
            version: index as u64 + 1,
            schema_version: event.schema_version(),
            occurred_at: now,
        };
        usage.apply(event, stored);
    }
    assert!(
        usage.legacy_charges.is_empty(),
        "charges that refunds name are not remembered"
    );
    let catalog = Catalog::shipped();
    let all = usage.report(&UsageRange::ALL, UsageBy::Model, &catalog);
    let rows: Vec<(&str, u64, u64)> = all
        .rows
        .iter()
        .map(|row| (row.key.as_str(), row.runs, row.credits.get()))
        .collect();
    assert_eq!(
        rows,
        [
            ("flux-schnell", 1, 2),
            ("assistant-chat", 1, 1),
            ("flux-pro", 1, 0)
        ]
    );
    assert_eq!(
        all.total,
        Tally {
            runs: 3,
            credits: credits(3)
        }
    );
    let day = |from: &str, to: &str| UsageRange::new(at(from), at(to));
    let first_day = usage.report(
        &day("2026-01-10T00:00:00Z", "2026-01-11T00:00:00Z").expect("a day"),
        UsageBy::Day,
        &catalog,
    );
    assert_eq!(first_day.rows.len(), 1, "one day");
    assert_eq!(
        (first_day.rows[0].key.as_str(), first_day.total.runs),
        ("2026-01-10", 1)
    );
    let by_node = usage.report(&UsageRange::ALL, UsageBy::NodeType, &catalog);
    let keys: Vec<&str> = by_node.rows.iter().map(|row| row.key.as_str()).collect();
    assert_eq!(keys, ["image_generator", "assistant"]);
    assert!(matches!(
        day("2026-01-10T01:00:00Z", "2026-01-11T00:00:00Z"),
        Err(UsageRangeError::NotMidnight { name: "from", .. })
    ));
    assert!(matches!(
        day("2026-01-11T00:00:00Z", "2026-01-11T00:00:00Z"),
        Err(UsageRangeError::Reversed { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The usage row writes its days itself (for speed); the bytes must stay chrono's, or a
    /// view file written before would read back differently from one written after.
    #[test]
    fn a_usage_row_stores_its_days_exactly_as_chrono_writes_them(
        days_from_ce in -1_000_000i32..4_000_000,
    ) {
        let date = chrono::NaiveDate::from_num_days_from_ce_opt(days_from_ce).expect("in range");
        let chrono_text = serde_json::to_value(date).expect("chrono serialises");
        let mut usage = Usage::default();
        usage.days.entry(date).or_default().insert("m".into(), Tally::default());
        usage.legacy_charges.insert(
            "c".into(),
            ledger_domain::usage::Charged(date, "m".into(), ledger_domain::Credits::new(1)),
        );
        usage.charge_days.push(ledger_domain::usage::ChargeDay(7, date));
        let stored = serde_json::to_value(&usage).expect("a usage row serialises");
        prop_assert_eq!(&stored["legacy_charges"]["c"][0], &chrono_text);
        prop_assert_eq!(&stored["charge_days"][0][1], &chrono_text);
        let key = stored["days"].as_object().expect("days is a map").keys().next().cloned();
        prop_assert_eq!(key.as_deref(), chrono_text.as_str());
        let read: Usage = serde_json::from_value(stored).expect("a stored row reads back");
        prop_assert_eq!(read, usage);
    }
}
