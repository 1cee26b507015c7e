//! The property: for random histories on several accounts, decided by the domain at advancing
//! times and appended to a real store, every view row equals the same part of the domain's
//! account folded over the same events — in memory and in the files, with random batch
//! sizes, and across a stop and restart from the checkpoint in the middle of the history.

use std::time::Duration;

use chrono::TimeDelta;
use ledger_domain::command::*;
use ledger_domain::events::{Billing, Via};
use ledger_domain::{Command, DurationS, Tier};
use ledger_projector::{ProjectorConfig, Projectors, ViewName, ViewSelection};
use proptest::prelude::*;

use crate::support::*;

const ACCOUNTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Advance(u32),
    Open,
    Charge {
        model: u8,
        amount: u32,
        api: bool,
    },
    TopUp {
        credits: u64,
        expires_h: Option<u16>,
    },
    Grant {
        credits: u64,
        expires_h: Option<u16>,
    },
    Subscribe {
        tier: u8,
        annual: bool,
        months: u8,
    },
    Renew {
        shift_days: i16,
    },
    Verify(u8),
    Refund {
        back: u8,
    },
    Hold {
        model: u8,
        amount: u32,
        ttl_m: u16,
    },
    Capture {
        back: u8,
        amount: Option<u32>,
    },
    Release {
        back: u8,
    },
    /// A refund of the payment that bought the top-up `back` ops ago.
    Revoke {
        back: u8,
    },
    Tick,
    /// Alert settings: no view folds them, and every view must pass them by unchanged.
    Alerts(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..400_000).prop_map(Op::Advance),
        1 => Just(Op::Open),
        8 => (0u8..8, 0u32..60, prop::bool::weighted(0.1))
            .prop_map(|(model, amount, api)| Op::Charge { model, amount, api }),
        2 => (1u64..3_000, prop::option::of(1u16..3_000))
            .prop_map(|(credits, expires_h)| Op::TopUp { credits, expires_h }),
        1 => (1u64..1_000, prop::option::of(1u16..3_000))
            .prop_map(|(credits, expires_h)| Op::Grant { credits, expires_h }),
        1 => (0u8..4, any::<bool>(), 1u8..13)
            .prop_map(|(tier, annual, months)| Op::Subscribe { tier, annual, months }),
        1 => (-40i16..60).prop_map(|shift_days| Op::Renew { shift_days }),
        1 => (0u8..3).prop_map(Op::Verify),
        2 => (0u8..12).prop_map(|back| Op::Refund { back }),
        3 => (0u8..8, 0u32..60, 1u16..300)
            .prop_map(|(model, amount, ttl_m)| Op::Hold { model, amount, ttl_m }),
        2 => (0u8..8, prop::option::of(0u32..60)).prop_map(|(back, amount)| Op::Capture { back, amount }),
        1 => (0u8..8).prop_map(|back| Op::Release { back }),
        1 => (0u8..12).prop_map(|back| Op::Revoke { back }),
        1 => Just(Op::Tick),
        1 => (1u8..8).prop_map(Op::Alerts),
    ]
}

const MODELS: [&str; 8] = [
    "flux-schnell",
    "flux-pro",
    "kling-2",
    "seedance-2.0-i2v",
    "stable-audio",
    "assistant-chat",
    "custom-lora",
    "nope",
];

fn quantity_for(model: &str, amount: u32) -> Quantity {
    match model {
        "flux-schnell" | "flux-pro" => Quantity {
            images: Some(1 + amount % 4),
            seconds: None,
        },
        "kling-2" | "seedance-2.0-i2v" | "stable-audio" => Quantity {
            images: None,
            seconds: Some(1 + amount),
        },
        _ => Quantity::default(),
    }
}

/// The command for the `index`-th op. Ids refer back by index, so refunds, captures and
/// releases often hit earlier charges and holds, and sometimes nothing.
fn to_command(writer: &Writer, index: usize, op: &Op) -> Command {
    let now = writer.now;
    let hours = |h: u16| now + TimeDelta::hours(i64::from(h));
    let back = |back: u8| index.saturating_sub(usize::from(back));
    match op {
        Op::Advance(_) | Op::Tick => Command::Tick,
        Op::Open => Command::OpenAccount,
        Op::Charge { model, amount, api } => {
            let model = MODELS[usize::from(*model)];
            Command::Charge(Charge {
                charge_id: format!("c{index}"),
                run_id: "run".into(),
                node_id: format!("n{}", amount % 3),
                model: model.into(),
                quantity: quantity_for(model, *amount),
                via: if *api { Via::Api } else { Via::App },
            })
        }
        // Every top-up is paid, so that a later refund can revoke it.
        Op::TopUp { credits, expires_h } => Command::PurchasePaidTopUp(PaidTopUp {
            top_up: PurchaseTopUp {
                purchase_id: format!("p{index}"),
                credits: *credits,
                expires_at: expires_h.map(hours),
            },
            payment_ref: format!("pi{index}"),
        }),
        Op::Grant { credits, expires_h } => Command::AddGrant(AddGrant {
            grant_id: format!("g{index}"),
            credits: *credits,
            reason: "support".into(),
            expires_at: expires_h.map(hours),
        }),
        Op::Subscribe {
            tier,
            annual,
            months,
        } => {
            let tier = Tier::ALL[usize::from(*tier)];
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
                reference: format!("ref{index}"),
                allowance: None,
            })
        }
        Op::Renew { shift_days } => Command::RenewAllowance(RenewAllowance {
            invoice_id: format!("inv{index}"),
            period_start: now + TimeDelta::days(i64::from(*shift_days)),
            period_end: ledger_domain::time::add_months(
                now + TimeDelta::days(i64::from(*shift_days)),
                1,
            ),
        }),
        Op::Verify(0) => Command::SubmitBusinessVerification(SubmitBusinessVerification {
            company_name: "Acme".into(),
            country: "DE".into(),
            registration_number: "HRB 1".into(),
        }),
        Op::Verify(1) => Command::ApproveBusinessVerification,
        Op::Verify(_) => Command::RejectBusinessVerification {
            reason: "no".into(),
        },
        Op::Refund { back: offset } => Command::RefundCharge {
            charge_id: format!("c{}", back(*offset)),
            reason: "failed".into(),
        },
        Op::Hold {
            model,
            amount,
            ttl_m,
        } => {
            let model = MODELS[usize::from(*model)];
            Command::PlaceHold(PlaceHold {
                hold_id: format!("h{index}"),
                run_id: "run".into(),
                node_id: "n".into(),
                model: model.into(),
                quantity: quantity_for(model, *amount),
                via: Via::App,
                ttl: Some(DurationS::from_secs(u64::from(*ttl_m) * 60)),
            })
        }
        Op::Capture {
            back: offset,
            amount,
        } => Command::CaptureHold(CaptureHold {
            hold_id: format!("h{}", back(*offset)),
            quantity: amount.map_or_else(Quantity::default, |amount| Quantity {
                images: Some(1 + amount % 4),
                seconds: None,
            }),
        }),
        Op::Revoke { back: offset } => Command::RevokeTopUp(RevokeTopUp {
            payment_ref: format!("pi{}", back(*offset)),
            reference: format!("ch{index}"),
        }),
        Op::Release { back: offset } => Command::ReleaseHold {
            hold_id: format!("h{}", back(*offset)),
        },
        Op::Alerts(n) => Command::ConfigureAlerts(ledger_domain::alerts::ConfigureAlerts {
            low_balance: vec![u64::from(*n) * 100],
            url: Some("https://hooks.example.com/ledger".into()),
        }),
    }
}

/// Appends the ops `range` of the history.
async fn append_ops(
    writer: &mut Writer,
    store: &dyn ledger_store::EventStore,
    ops: &[(usize, Op)],
    range: std::ops::Range<usize>,
) {
    for index in range {
        let (account, op) = &ops[index];
        if let Op::Advance(seconds) = op {
            writer.advance(i64::from(*seconds));
        }
        let command = to_command(writer, index, op);
        writer
            .run(store, &Workload::account_id(*account), &command)
            .await;
    }
}

fn check_files(data_dir: &std::path::Path, writer: &Writer) -> Result<(), TestCaseError> {
    for view in ViewName::ALL {
        let rows = file_rows(data_dir, view);
        let open: Vec<_> = writer
            .accounts
            .iter()
            .filter_map(|(id, written)| Some((id, written, written.account.core.as_ref()?)))
            .collect();
        prop_assert_eq!(rows.len(), open.len(), "rows in the {} file", view);
        for (stored, (account_id, written, core)) in rows.iter().zip(open) {
            prop_assert_eq!(&stored.account_id, account_id);
            // A sparse view's row keeps the version of the last event that could change it.
            let version = match view {
                ViewName::Tier => written.plan_version,
                ViewName::TrialUsage => written.trials_version,
                ViewName::Balance | ViewName::Usage => written.account.version,
            };
            prop_assert_eq!(stored.version, version, "version in the {} file", view);
            let json = stored.row.as_bytes();
            match view {
                ViewName::Balance => {
                    prop_assert_eq!(
                        &ledger_projection_balance::decode(json).unwrap(),
                        &core.balance
                    )
                }
                ViewName::TrialUsage => prop_assert_eq!(
                    &ledger_projection_trial_usage::decode(json).unwrap(),
                    &core.trials
                ),
                ViewName::Tier => {
                    prop_assert_eq!(&ledger_projection_tier::decode(json).unwrap(), &core.plan)
                }
                ViewName::Usage => prop_assert_eq!(
                    &ledger_projection_usage::decode(json).unwrap(),
                    &written.usage
                ),
            }
        }
    }
    Ok(())
}

fn run_case(
    ops: &[(usize, Op)],
    batch: usize,
    catch_up: bool,
    restart_at: usize,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = temp_dir();
        let (store, _) = store_in(dir.path());
        let data = dir.path().join("data");
        // Either every event is history (catch-up batches) or none is (live batches); both
        // with small limits, so that batches end at every place in the history.
        let config = ProjectorConfig {
            batch_events_max: batch,
            batch_idle: Duration::from_millis(1),
            catch_up_age: if catch_up {
                Duration::ZERO
            } else {
                Duration::MAX
            },
            catch_up_batch_events_max: batch * 3,
            ..ProjectorConfig::default()
        };
        let mut writer = Writer::new();
        writer
            .run(&*store, &Workload::account_id(0), &Command::OpenAccount)
            .await;
        let restart_at = restart_at.min(ops.len());

        // First part: appended, then projected from zero, then stopped.
        append_ops(&mut writer, &*store, ops, 0..restart_at).await;
        let projectors =
            Projectors::start(store.clone(), &data, ViewSelection::All, config.clone())
                .await
                .unwrap();
        let views = projectors.views().unwrap();
        caught_up(&views, &*store).await;
        assert_views_equal_fold(&views, &writer);
        projectors.stop().await.unwrap();
        check_files(&data, &writer)?;

        // Second part: resumed from the checkpoint, projected live while being appended.
        let projectors = Projectors::start(store.clone(), &data, ViewSelection::All, config)
            .await
            .unwrap();
        let views = projectors.views().unwrap();
        append_ops(&mut writer, &*store, ops, restart_at..ops.len()).await;
        caught_up(&views, &*store).await;
        assert_views_equal_fold(&views, &writer);
        for metrics in projectors.metrics() {
            prop_assert_eq!(metrics.stale_events_skipped, 0);
        }
        projectors.stop().await.unwrap();
        check_files(&data, &writer)?;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_view_equals_the_domain_fold(
        ops in prop::collection::vec((0..ACCOUNTS, op_strategy()), 1..60),
        batch in 1usize..40,
        catch_up in any::<bool>(),
        restart_at in 0usize..60,
    ) {
        run_case(&ops, batch, catch_up, restart_at)?;
    }
}

/// Guards the generator: the random histories must reach every event type, or the property
/// above would be checked on too little.
#[test]
fn random_histories_reach_every_event_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec((0..ACCOUNTS, op_strategy()), 1..60);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let mut writer = Writer::new();
        writer.decide(&Workload::account_id(0), &Command::OpenAccount);
        for (index, (account, op)) in ops.iter().enumerate() {
            if let Op::Advance(seconds) = op {
                writer.advance(i64::from(*seconds));
            }
            let command = to_command(&writer, index, op);
            writer.decide(&Workload::account_id(*account), &command);
        }
        seen.extend(writer.event_types.iter().copied());
    }
    let missing: Vec<_> = ledger_domain::events::EVENT_TYPES
        .iter()
        .filter(|t| !seen.contains(*t))
        .collect();
    assert!(missing.is_empty(), "never emitted: {missing:?}");
}
