//! The auditor: random command sequences over random catalogs and times, checking after
//! every step that no bucket goes negative, no charge overdraws, the ledger equation
//! balances, holds resolve at most once (and exactly once in the end), that replaying the
//! emitted events — in memory and through their stored JSON — rebuilds the same state, and
//! that rolling a command's events back restores the account exactly.

use std::collections::HashMap;

use chrono::TimeDelta;
use ledger_domain::alerts::{AlertWatch, ConfigureAlerts};
use ledger_domain::command::*;
use ledger_domain::envelope::{seal, Cause, RawEnvelope, GENESIS_HASH};
use ledger_domain::events::*;
use ledger_domain::state::{Core, PlanState, Trials};
use ledger_domain::{decide, Account, Catalog, Credits, Decision, Instant, Rejection, Tier};
use proptest::prelude::*;

fn catalog_strategy() -> impl Strategy<Value = Catalog> {
    (
        (1u64..2_000, 1u64..20_000, 1u64..50_000, prop::option::of(1u64..100_000)),
        (0u32..60, 1u64..120, 0u64..30, 0u64..50, 0u64..10),
        (1u32..6, 1u64..96),
    )
        .prop_map(|((free, pro, business, enterprise), (bonus, top_up_days, image, second, call), (runs, window_h))| {
            let json = serde_json::json!({
                "plans": {
                    "free": {"monthly_allowance": free, "scope": "free"},
                    "pro": {"monthly_allowance": pro, "scope": "deployment"},
                    "business": {"monthly_allowance": business, "scope": "admin", "requires_verification": true},
                    "enterprise": {"monthly_allowance": enterprise, "scope": "admin"}
                },
                "annual_bonus_percent": bonus,
                "top_up_expiry": format!("{top_up_days}d"),
                "models": [
                    {"id": "img", "kind": "image", "price": {"per_image": image}, "min_tier": "free"},
                    {"id": "img-pro", "kind": "image", "price": {"per_image": image + 3}, "min_tier": "pro", "free_trial": {"runs": runs}},
                    {"id": "vid", "kind": "video", "price": {"per_second": second}, "min_tier": "pro", "free_trial": {"window": format!("{window_h}h")}},
                    {"id": "vid-biz", "kind": "video", "price": {"per_second": second + 5}, "min_tier": "business"},
                    {"id": "chat", "kind": "assistant", "price": {"per_call": call}, "min_tier": "free"}
                ]
            });
            Catalog::from_json(&json.to_string()).expect("generated catalog is valid")
        })
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u32),
    Charge {
        id: u8,
        model: u8,
        amount: u32,
        api: bool,
    },
    TopUp {
        id: u8,
        credits: u64,
        expires_h: Option<u16>,
    },
    Grant {
        id: u8,
        credits: u64,
        expires_h: Option<u16>,
    },
    Subscribe {
        tier: u8,
        annual: bool,
        months: u8,
        reference: u8,
    },
    Renew {
        invoice: u8,
        shift_days: i16,
    },
    Verify(u8),
    Refund {
        id: u8,
        reason: bool,
    },
    Hold {
        id: u8,
        model: u8,
        amount: u32,
        ttl_m: u16,
    },
    Capture {
        id: u8,
        amount: Option<u32>,
    },
    Release(u8),
    /// A refund of the payment that bought top-up `p{id}` (odd ids are bought with one).
    Revoke(u8),
    Tick,
    Alerts(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..400_000).prop_map(Op::Advance),
        8 => (0u8..12, 0u8..6, 0u32..120, prop::bool::weighted(0.1))
            .prop_map(|(id, model, amount, api)| Op::Charge { id, model, amount, api }),
        2 => (0u8..5, 1u64..3_000, prop::option::of(1u16..3_000))
            .prop_map(|(id, credits, expires_h)| Op::TopUp { id, credits, expires_h }),
        1 => (0u8..4, 1u64..1_000, prop::option::of(1u16..3_000))
            .prop_map(|(id, credits, expires_h)| Op::Grant { id, credits, expires_h }),
        1 => (0u8..4, any::<bool>(), 1u8..13, 0u8..4)
            .prop_map(|(tier, annual, months, reference)| Op::Subscribe { tier, annual, months, reference }),
        1 => (0u8..4, -40i16..60).prop_map(|(invoice, shift_days)| Op::Renew { invoice, shift_days }),
        1 => (0u8..3).prop_map(Op::Verify),
        2 => (0u8..12, any::<bool>()).prop_map(|(id, reason)| Op::Refund { id, reason }),
        3 => (0u8..6, 0u8..6, 0u32..120, 1u16..300)
            .prop_map(|(id, model, amount, ttl_m)| Op::Hold { id, model, amount, ttl_m }),
        2 => (0u8..6, prop::option::of(0u32..120)).prop_map(|(id, amount)| Op::Capture { id, amount }),
        1 => (0u8..6).prop_map(Op::Release),
        1 => (0u8..5).prop_map(Op::Revoke),
        1 => Just(Op::Tick),
        1 => (0u8..16).prop_map(Op::Alerts),
    ]
}

const MODELS: [&str; 6] = ["img", "img-pro", "vid", "vid-biz", "chat", "nope"];

/// Mostly well-formed quantities for the model, sometimes not, so rejections get exercised.
fn quantity_for(model: &str, amount: u32) -> Quantity {
    match (model, amount % 17) {
        (_, 0) => Quantity::default(),
        ("img" | "img-pro", _) => Quantity {
            images: Some(amount % 101),
            seconds: None,
        },
        ("vid" | "vid-biz", _) => Quantity {
            images: None,
            seconds: Some(amount * 31),
        },
        _ => Quantity::default(),
    }
}

fn to_command(op: &Op, now: Instant, core: Option<&Core>) -> Command {
    let hours = |h: u16| now + TimeDelta::hours(i64::from(h));
    match op {
        Op::Advance(_) | Op::Tick => Command::Tick,
        // Every fourth setting is invalid (a zero threshold), so the rejection is exercised.
        Op::Alerts(n) => Command::ConfigureAlerts(ConfigureAlerts {
            low_balance: match n % 4 {
                0 => vec![0],
                _ => vec![u64::from(*n) * 50, u64::from(*n) * 50 + 700],
            },
            url: (n % 2 == 0).then(|| "https://hooks.example.com/ledger".to_string()),
        }),
        Op::Charge {
            id,
            model,
            amount,
            api,
        } => {
            let model = MODELS[*model as usize];
            Command::Charge(Charge {
                charge_id: format!("c{id}"),
                run_id: "run".into(),
                node_id: format!("n{}", amount % 3),
                model: model.into(),
                quantity: quantity_for(model, *amount),
                via: if *api { Via::Api } else { Via::App },
            })
        }
        Op::TopUp {
            id,
            credits,
            expires_h,
        } => {
            let top_up = PurchaseTopUp {
                purchase_id: format!("p{id}"),
                credits: *credits,
                expires_at: expires_h.map(hours),
            };
            if id % 2 == 1 {
                Command::PurchasePaidTopUp(PaidTopUp {
                    top_up,
                    payment_ref: format!("pi{id}"),
                })
            } else {
                Command::PurchaseTopUp(top_up)
            }
        }
        Op::Grant {
            id,
            credits,
            expires_h,
        } => Command::AddGrant(AddGrant {
            grant_id: format!("g{id}"),
            credits: *credits,
            reason: "support".into(),
            expires_at: expires_h.map(hours),
        }),
        Op::Subscribe {
            tier,
            annual,
            months,
            reference,
        } => {
            let tier = Tier::ALL[*tier as usize];
            let billing = match (tier, annual) {
                (Tier::Free, _) => None,
                (_, true) => Some(Billing::Annual),
                (_, false) => Some(Billing::Monthly),
            };
            Command::ChangeSubscription(ChangeSubscription {
                tier,
                billing,
                period_start: now,
                period_end: ledger_domain::time::add_months(now, u32::from(*months)),
                reference: format!("ref{reference}-{}", now.timestamp()),
                allowance: None,
            })
        }
        Op::Renew {
            invoice,
            shift_days,
        } => {
            let start = core.map_or(now, |core| core.plan.subscription_end)
                + TimeDelta::days(i64::from(*shift_days));
            Command::RenewAllowance(RenewAllowance {
                invoice_id: format!("inv{invoice}"),
                period_start: start,
                period_end: ledger_domain::time::add_months(start, 1),
            })
        }
        Op::Verify(0) => Command::SubmitBusinessVerification(SubmitBusinessVerification {
            company_name: "Acme".into(),
            country: "DE".into(),
            registration_number: "HRB 1".into(),
        }),
        Op::Verify(1) => Command::ApproveBusinessVerification,
        Op::Verify(_) => Command::RejectBusinessVerification {
            reason: "no".into(),
        },
        Op::Refund { id, reason } => Command::RefundCharge {
            charge_id: format!("c{id}"),
            reason: if *reason {
                "failed".into()
            } else {
                "timeout".into()
            },
        },
        Op::Hold {
            id,
            model,
            amount,
            ttl_m,
        } => {
            let model = MODELS[*model as usize];
            Command::PlaceHold(PlaceHold {
                hold_id: format!("h{id}"),
                run_id: "run".into(),
                node_id: "n".into(),
                model: model.into(),
                quantity: quantity_for(model, *amount),
                via: Via::App,
                ttl: Some(ledger_domain::DurationS::from_secs(u64::from(*ttl_m) * 60)),
            })
        }
        Op::Capture { id, amount } => Command::CaptureHold(CaptureHold {
            hold_id: format!("h{id}"),
            quantity: match amount {
                Some(a) => Quantity {
                    images: None,
                    seconds: Some(*a),
                },
                None => Quantity::default(),
            },
        }),
        Op::Release(id) => Command::ReleaseHold {
            hold_id: format!("h{id}"),
        },
        Op::Revoke(id) => Command::RevokeTopUp(RevokeTopUp {
            payment_ref: format!("pi{id}"),
            reference: format!("ch{id}"),
        }),
    }
}

fn non_unlimited(parts: &[Part]) -> Credits {
    parts
        .iter()
        .filter(|p| p.bucket != BucketKind::Unlimited)
        .map(|p| p.amount)
        .sum()
}

/// Independently kept books: what the events say went in and out.
#[derive(Default)]
struct Books {
    granted: u64,
    charged: u64,
    refunded: u64,
    forfeited: u64,
    hold_resolutions: HashMap<String, u32>,
    holds_placed: Vec<String>,
}

impl Books {
    fn record(&mut self, event: &Event) {
        match event {
            Event::AccountOpened(e) => self.granted += e.allowance.get(),
            Event::TierChanged(e) => {
                self.granted += e.allowance.map_or(0, Credits::get);
                self.forfeited += e.forfeited.get();
            }
            Event::AllowanceRenewed(e) => {
                self.granted += e.allowance.map_or(0, Credits::get);
                self.forfeited += e.forfeited.get();
            }
            Event::TopUpPurchased(e) => self.granted += e.credits.get(),
            Event::GrantAdded(e) => self.granted += e.credits.get(),
            Event::TopUpExpired(e) => self.forfeited += e.forfeited.get(),
            Event::TopUpRevoked(e) => {
                assert_eq!(
                    e.credits.get(),
                    e.revoked.get() + e.held.get() + e.spent.get(),
                    "a revoked lot accounts for every credit it was bought with"
                );
                self.forfeited += e.revoked.get();
            }
            Event::GrantExpired(e) => self.forfeited += e.forfeited.get(),
            Event::CreditsCharged(e) => self.charged += non_unlimited(&e.drawn_from).get(),
            Event::ChargeRefunded(e) => {
                self.refunded +=
                    non_unlimited(&e.returned).get() + non_unlimited(&e.forfeited).get();
                self.forfeited += non_unlimited(&e.forfeited).get();
            }
            Event::HoldPlaced(e) => self.holds_placed.push(e.hold_id.clone()),
            Event::HoldCaptured(e) => {
                self.charged += non_unlimited(&e.drawn_from).get();
                self.forfeited += non_unlimited(&e.forfeited).get();
                *self.hold_resolutions.entry(e.hold_id.clone()).or_default() += 1;
            }
            Event::HoldReleased(HoldReleased {
                hold_id, forfeited, ..
            })
            | Event::HoldExpired(HoldExpired {
                hold_id, forfeited, ..
            }) => {
                self.forfeited += non_unlimited(forfeited).get();
                *self.hold_resolutions.entry(hold_id.clone()).or_default() += 1;
            }
            _ => {}
        }
    }
}

/// The amount in the bucket a part names, live at `at`, or `None` if there is no such bucket.
fn bucket_remaining(core: &Core, part: &Part, at: Instant) -> Option<Credits> {
    core.balance
        .buckets
        .iter()
        .find(|b| b.kind == part.bucket && b.id == part.id)
        .filter(|b| b.expires_at.is_none_or(|end| at < end))
        .map(|b| b.remaining)
}

/// Before an event that draws credits is applied: every part comes from a live bucket that
/// holds at least that much. This is the no-overdraft rule, checked against the state.
fn check_draws(core: &Core, event: &Event, now: Instant) -> Result<(), TestCaseError> {
    let parts = match event {
        Event::CreditsCharged(e) if e.paid_by == PaidBy::Credits => &e.drawn_from,
        Event::HoldPlaced(e) if e.paid_by == PaidBy::Credits => &e.earmarked,
        Event::CreditsCharged(e) => {
            prop_assert!(
                core.plan.unlimited || e.paid_by == PaidBy::Trial,
                "unlimited charge on a limited account"
            );
            return Ok(());
        }
        _ => return Ok(()),
    };
    let mut cost = Credits::ZERO;
    for part in parts {
        let remaining = bucket_remaining(core, part, now);
        prop_assert!(
            remaining.is_some_and(|r| r >= part.amount),
            "overdraft: {part:?} from {remaining:?}"
        );
        cost = cost.checked_add(part.amount).unwrap();
    }
    prop_assert!(
        cost <= core.available(now),
        "charge beyond the live balance"
    );
    Ok(())
}

fn check_invariants(account: &Account, books: &Books, now: Instant) -> Result<(), TestCaseError> {
    let Some(core) = account.core.as_ref() else {
        return Ok(());
    };
    for bucket in core.balance.iter() {
        prop_assert!(bucket.remaining <= bucket.credits);
    }
    let allowances = core
        .balance
        .buckets
        .iter()
        .filter(|b| b.kind == BucketKind::Allowance)
        .count();
    prop_assert!(allowances <= 1, "{allowances} allowances");
    // Total available = the sum of the live buckets, counted here independently.
    let live: u64 = core
        .balance
        .buckets
        .iter()
        .filter(|b| b.expires_at.is_none_or(|end| now < end))
        .map(|b| b.remaining.get())
        .sum::<u64>();
    prop_assert_eq!(core.available(now).get(), live);
    // granted - charged + refunded - forfeited = everything in buckets plus everything held.
    let ledger = (books.granted + books.refunded) - (books.charged + books.forfeited);
    prop_assert_eq!(
        ledger,
        core.total_in_buckets().get(),
        "books {} vs buckets",
        ledger
    );
    prop_assert_eq!(core.balance.totals.granted.get(), books.granted);
    prop_assert_eq!(core.balance.totals.forfeited.get(), books.forfeited);
    for (hold_id, count) in &books.hold_resolutions {
        prop_assert!(*count <= 1, "hold {} resolved {} times", hold_id, count);
    }
    Ok(())
}

/// The alerts fold as an auditor sees it: its balance is the account's, and after every event
/// the thresholds it holds as crossed are exactly those the available total is below, so
/// each crossing notifies once and only once.
fn check_alert_watch(
    watch: &mut Option<AlertWatch>,
    account: &Account,
    event: &Event,
    now: Instant,
) -> Result<(), TestCaseError> {
    let Some(watch) = watch.as_mut() else {
        *watch = AlertWatch::create(event);
        return Ok(());
    };
    let notified = watch.apply(event, account.version, now);
    let core = account.core.as_ref().expect("an open account");
    prop_assert_eq!(&watch.balance, &core.balance);
    prop_assert_eq!(watch.unlimited, core.plan.unlimited);
    let Some(config) = watch.config.as_ref().filter(|_| !watch.unlimited) else {
        return Ok(());
    };
    let available = core.balance.available(now);
    let below: std::collections::BTreeSet<Credits> = config
        .low_balance
        .iter()
        .copied()
        .filter(|threshold| available < *threshold)
        .collect();
    prop_assert_eq!(&watch.below, &below);
    let mut keys: Vec<&str> = notified.iter().map(|n| n.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    prop_assert_eq!(
        keys.len(),
        notified.len(),
        "one notification per key and event"
    );
    Ok(())
}

fn run(catalog: &Catalog, ops: &[Op]) -> Result<Vec<Event>, TestCaseError> {
    let mut now: Instant = "2026-01-31T08:00:00Z".parse().unwrap();
    let mut account = Account::new("prop");
    let mut history: Vec<Event> = Vec::new();
    let mut books = Books::default();
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut watch: Option<AlertWatch> = None;
    let opened = decide(&account, catalog, &Command::OpenAccount, now).unwrap();
    let mut apply = |account: &mut Account,
                     events: Vec<Event>,
                     now: Instant,
                     history: &mut Vec<Event>,
                     books: &mut Books|
     -> Result<(), TestCaseError> {
        // Every event survives its trip through the stored JSON unchanged.
        let cause = Cause {
            command_id: format!("cmd-{}", history.len()),
            actor: "test".into(),
        };
        for (envelope, payload) in seal(
            "account-prop",
            account.version,
            &prev_hash,
            &cause,
            now,
            now,
            events,
        ) {
            let raw = RawEnvelope::parse(&payload).unwrap();
            prop_assert_eq!(raw.computed_hash(), envelope.hash.clone());
            prop_assert_eq!(&raw.decode().unwrap().event, &envelope.event);
            prev_hash = envelope.hash.clone();
            if let Some(core) = account.core.as_ref() {
                check_draws(core, &envelope.event, now)?;
            }
            let before = account
                .core
                .as_ref()
                .map(|core| (core.plan.clone(), core.trials.clone()));
            account.evolve(&envelope.event);
            // The sparse views (tier, trial-usage) leave a row alone for an event that these
            // rule out: such an event must not change what the row holds.
            if let (Some((plan, trials)), Some(core)) = (before, account.core.as_ref()) {
                if !PlanState::changed_by(&envelope.event) {
                    prop_assert_eq!(&plan, &core.plan, "an event ruled out changed the plan");
                }
                if !Trials::changed_by(&envelope.event) {
                    prop_assert_eq!(
                        &trials,
                        &core.trials,
                        "an event ruled out changed the trials"
                    );
                }
            }
            check_alert_watch(&mut watch, account, &envelope.event, now)?;
            books.record(&envelope.event);
            history.push(envelope.event);
        }
        Ok(())
    };
    apply(&mut account, opened.events, now, &mut history, &mut books)?;
    // The same account as the command side keeps it: spilling all but the latest record
    // after each command, and restoring what a command names from the history first.
    let mut spilling = account.clone();
    for op in ops {
        if let Op::Advance(secs) = op {
            now += TimeDelta::seconds(i64::from(*secs));
        }
        let command = to_command(op, now, account.core.as_ref());
        let decided_spilling = decide_restoring(&mut spilling, &history, catalog, &command, now)?;
        let decided = decide(&account, catalog, &command, now);
        prop_assert_eq!(&decided_spilling, &decided, "spilling changed the decision");
        let Ok(decision) = decided else {
            continue;
        };
        for event in &decision.events {
            spilling.evolve(event);
        }
        spilling.records.spill(1);
        if decision.replayed {
            prop_assert!(decision.events.is_empty());
        }
        // A batch's events can be taken back out exactly (the command handler does so when a
        // batched append fails): fold them, roll back, and the account is as it was.
        let before = account.clone();
        let savepoint = account.savepoint();
        for event in &decision.events {
            account.evolve(event);
        }
        account.rollback(savepoint, &decision.events);
        prop_assert_eq!(&account, &before, "rollback differs");
        apply(&mut account, decision.events, now, &mut history, &mut books)?;
        check_invariants(&account, &books, now)?;
        prop_assert_eq!(
            &Account::replay("prop", &history),
            &account,
            "replay differs"
        );
        prop_assert_eq!(&spilling.core, &account.core, "spilling changed the state");
        prop_assert!(spilling.records.whole_len() <= 2);
    }
    // Far in the future every hold has resolved, exactly once.
    now += TimeDelta::days(2);
    let decision = decide(&account, catalog, &Command::Tick, now).unwrap();
    apply(&mut account, decision.events, now, &mut history, &mut books)?;
    check_invariants(&account, &books, now)?;
    prop_assert!(account.core.as_ref().unwrap().balance.open_holds.is_empty());
    for hold_id in &books.holds_placed {
        prop_assert_eq!(
            books.hold_resolutions.get(hold_id).copied(),
            Some(1),
            "hold {}",
            hold_id
        );
    }
    Ok(history)
}

/// Decides `command` on an account that spills, restoring first the record it names from
/// `history`, as the command side restores it from the stream.
fn decide_restoring(
    account: &mut Account,
    history: &[Event],
    catalog: &Catalog,
    command: &Command,
    now: Instant,
) -> Result<Result<Decision, Rejection>, TestCaseError> {
    if let Some(spilled) = account.records.spilled_for(command) {
        let events = spilled
            .spill
            .versions()
            .map(|version| (version, history[version as usize - 1].clone()))
            .collect();
        account
            .records
            .restore(spilled, events)
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
    }
    Ok(decide(account, catalog, command, now))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(catalog in catalog_strategy(), ops in prop::collection::vec(op_strategy(), 1..80)) {
        run(&catalog, &ops)?;
    }
}

/// Guards the generator: random histories must reach every event type, or the invariants
/// above would be checked on too little.
#[test]
fn random_histories_reach_every_event_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        catalog_strategy(),
        prop::collection::vec(op_strategy(), 1..80),
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        let (catalog, ops) = strategy.new_tree(&mut runner).unwrap().current();
        for event in run(&catalog, &ops).unwrap() {
            seen.insert(event.type_name());
        }
    }
    let missing: Vec<_> = EVENT_TYPES.iter().filter(|t| !seen.contains(*t)).collect();
    assert!(missing.is_empty(), "never emitted: {missing:?}");
}
