//! The answers do not depend on how commands arrive. Two service instances (two `Ledger`s
//! with their own caches) on one store answer exactly as one instance does, whichever
//! instance each command goes to: a refusal, a replay or a no-op writes nothing, so no
//! expected-version check would catch a cache that the other instance left behind, and the
//! command handler must look at the stream before answering. And commands decided together
//! as one batch on one account answer exactly as the same commands one after another.

use std::sync::{Arc, Mutex};

use chrono::Duration;
use ledger_domain::catalog::Tier;
use ledger_domain::command::*;
use ledger_domain::events::{Billing, Via};
use ledger_domain::{Catalog, Command, Instant};
use ledger_service::clock::Clock;
use ledger_service::ledger::{CommandError, Ledger, Outcome};
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;
use proptest::prelude::*;

const ACCOUNT: &str = "acct";

/// A clock the test moves by hand, the same for every instance.
#[derive(Debug, Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(Mutex::new(
            "2026-01-10T12:00:00Z".parse().expect("an instant"),
        )))
    }

    fn advance_ms(&self, ms: i64) {
        let mut now = self.0.lock().expect("clock");
        *now += Duration::milliseconds(ms);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock().expect("clock")
    }
}

/// What a caller sees of an answer, minus nothing: reply, replay flag, position, the
/// summary state and its instant, or the rejection's code and message.
fn observed(result: Result<Outcome, CommandError>) -> String {
    match result {
        Ok(outcome) => format!(
            "ok reply={:?} replayed={} position={:?} at={} core={:?}",
            outcome.reply, outcome.replayed, outcome.position, outcome.at, outcome.core
        ),
        Err(CommandError::Rejected(rejection)) => {
            format!("rejected {} {}", rejection.code(), rejection.message())
        }
        Err(other) => panic!("unexpected store error: {other}"),
    }
}

/// `instances` ledgers over one fresh store, sharing one test clock.
fn ledgers(dir: &std::path::Path, instances: usize, clock: &TestClock) -> Vec<Ledger> {
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.join("events.sqlite")).expect("open the store"));
    let catalog = Arc::new(Catalog::shipped());
    (0..instances)
        .map(|_| Ledger::new(store.clone(), catalog.clone(), Arc::new(clock.clone())))
        .collect()
}

/// Runs `steps` (which instance, pause before it in ms, command) on two instances and on
/// one, and returns both lists of answers.
fn run_both(steps: &[(usize, i64, Command)]) -> (Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut answers = Vec::new();
        for instances in [1, 2] {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let clock = TestClock::new();
            let ledgers = ledgers(dir.path(), instances, &clock);
            let mut seen = Vec::new();
            for (instance, pause_ms, command) in steps {
                clock.advance_ms(*pause_ms);
                let ledger = &ledgers[instance % instances];
                let actor = "test";
                seen.push(observed(ledger.execute(ACCOUNT, command, actor).await));
            }
            answers.push(seen);
        }
        let two = answers.pop().expect("two instances ran");
        let one = answers.pop().expect("one instance ran");
        (one, two)
    })
}

fn assert_same(steps: &[(usize, i64, Command)]) {
    let (one, two) = run_both(steps);
    for (index, ((single, pair), (instance, _, command))) in
        one.iter().zip(&two).zip(steps).enumerate()
    {
        assert_eq!(
            single, pair,
            "step {index}: {command:?} on instance {instance} answered differently"
        );
    }
}

fn at(text: &str) -> Instant {
    text.parse().expect("an instant")
}

fn subscribe(tier: Tier, billing: Option<Billing>, reference: &str) -> Command {
    Command::ChangeSubscription(ChangeSubscription {
        tier,
        billing,
        period_start: at("2026-01-10T12:00:00Z"),
        period_end: at("2026-02-10T12:00:00Z"),
        reference: reference.into(),
        allowance: None,
    })
}

fn renew(invoice_id: &str, month: u32) -> Command {
    Command::RenewAllowance(RenewAllowance {
        invoice_id: invoice_id.into(),
        period_start: at(&format!("2026-{:02}-10T12:00:00Z", month + 1)),
        period_end: at(&format!("2026-{:02}-10T12:00:00Z", month + 2)),
    })
}

fn top_up(purchase_id: &str, credits: u64) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: purchase_id.into(),
        credits,
        expires_at: None,
    })
}

fn grant(grant_id: &str, credits: u64) -> Command {
    Command::AddGrant(AddGrant {
        grant_id: grant_id.into(),
        credits,
        reason: "goodwill".into(),
        expires_at: None,
    })
}

fn run_of(model: &str, images: Option<u32>, seconds: Option<u32>) -> (String, Quantity) {
    (model.to_string(), Quantity { images, seconds })
}

fn charge(charge_id: &str, (model, quantity): (String, Quantity)) -> Command {
    Command::Charge(Charge {
        charge_id: charge_id.into(),
        run_id: "run".into(),
        node_id: format!("node-{charge_id}"),
        model,
        quantity,
        via: Via::App,
    })
}

fn hold(hold_id: &str, (model, quantity): (String, Quantity), ttl: &str) -> Command {
    Command::PlaceHold(PlaceHold {
        hold_id: hold_id.into(),
        run_id: "run".into(),
        node_id: format!("node-{hold_id}"),
        model,
        quantity,
        via: Via::App,
        ttl: Some(ttl.parse().expect("a ttl")),
    })
}

fn capture(hold_id: &str) -> Command {
    Command::CaptureHold(CaptureHold {
        hold_id: hold_id.into(),
        quantity: Quantity::default(),
    })
}

fn refund(charge_id: &str) -> Command {
    Command::RefundCharge {
        charge_id: charge_id.into(),
        reason: "the run failed".into(),
    }
}

fn verification() -> Command {
    Command::SubmitBusinessVerification(SubmitBusinessVerification {
        company_name: "Acme".into(),
        country: "DE".into(),
        registration_number: "HRB 1".into(),
    })
}

/// Every command kind, each written through one instance and then used or refused through
/// the other: the stories of the issue (hold on A, capture on B; top-up on A, charge on B;
/// upgrade on A, pro model on B; charge on A, refund on B) and the rest.
fn every_kind_across_instances(first: usize) -> Vec<(usize, i64, Command)> {
    let a = first;
    let b = 1 - first;
    let flux = || run_of("flux-schnell", Some(100), None);
    vec![
        (a, 0, Command::OpenAccount),
        (b, 1, Command::OpenAccount),
        (a, 1, charge("big-1", flux())),
        (a, 1, charge("big-2", flux())),
        (b, 1, charge("big-3", flux())),
        (a, 1, top_up("p1", 300)),
        (b, 1, charge("big-3", flux())),
        (b, 1, top_up("p1", 300)),
        (
            a,
            1,
            hold("h1", run_of("flux-schnell", Some(10), None), "1h"),
        ),
        (b, 1, capture("h1")),
        (a, 1, capture("h1")),
        (a, 1, hold("h2", run_of("assistant-chat", None, None), "1h")),
        (
            b,
            1,
            Command::ReleaseHold {
                hold_id: "h2".into(),
            },
        ),
        (
            a,
            1,
            Command::ReleaseHold {
                hold_id: "h2".into(),
            },
        ),
        (a, 1, charge("c1", run_of("assistant-chat", None, None))),
        (b, 1, refund("c1")),
        (a, 1, refund("c1")),
        (a, 1, grant("g1", 50)),
        (b, 1, grant("g1", 50)),
        (a, 1, charge("pro-1", run_of("kling-2", None, Some(2)))),
        (b, 1, charge("pro-2", run_of("kling-2", None, Some(2)))),
        (a, 1, subscribe(Tier::Pro, Some(Billing::Monthly), "sub-1")),
        (b, 1, charge("pro-3", run_of("flux-pro", Some(1), None))),
        (b, 1, subscribe(Tier::Pro, Some(Billing::Monthly), "sub-1")),
        (a, 1, renew("inv-1", 1)),
        (b, 1, renew("inv-1", 1)),
        (b, 1, verification()),
        (a, 1, Command::ApproveBusinessVerification),
        (
            b,
            1,
            subscribe(Tier::Business, Some(Billing::Monthly), "sub-2"),
        ),
        (
            a,
            1,
            charge("seed-1", run_of("seedance-2.0-i2v", None, Some(1))),
        ),
        (
            b,
            1,
            charge("seed-2", run_of("seedance-2.0-i2v", None, Some(1))),
        ),
        (a, 1, hold("h3", run_of("assistant-chat", None, None), "1s")),
        (b, 2_000, Command::Tick),
        (a, 1, capture("h3")),
    ]
}

#[test]
fn every_command_kind_answers_the_same_across_two_instances_a_then_b() {
    assert_same(&every_kind_across_instances(0));
}

#[test]
fn every_command_kind_answers_the_same_across_two_instances_b_then_a() {
    assert_same(&every_kind_across_instances(1));
}

fn any_command() -> impl Strategy<Value = Command> {
    let id = |prefix: &'static str| (0..4u8).prop_map(move |n| format!("{prefix}{n}"));
    let model = prop_oneof![
        Just(run_of("assistant-chat", None, None)),
        (1..40u32).prop_map(|n| run_of("flux-schnell", Some(n), None)),
        Just(run_of("flux-pro", Some(1), None)),
        (1..4u32).prop_map(|n| run_of("kling-2", None, Some(n))),
        Just(run_of("seedance-2.0-t2v", None, Some(1))),
    ];
    prop_oneof![
        Just(Command::OpenAccount),
        (
            prop_oneof![
                Just((Tier::Free, None)),
                Just((Tier::Pro, Some(Billing::Monthly))),
                Just((Tier::Pro, Some(Billing::Annual))),
                Just((Tier::Business, Some(Billing::Monthly))),
            ],
            id("sub-")
        )
            .prop_map(|((tier, billing), reference)| subscribe(tier, billing, &reference)),
        (id("inv-"), 0..3u32).prop_map(|(invoice, month)| renew(&invoice, month)),
        (id("p"), 1..300u64).prop_map(|(id, credits)| top_up(&id, credits)),
        (id("g"), 1..100u64).prop_map(|(id, credits)| grant(&id, credits)),
        (id("c"), model.clone()).prop_map(|(id, run)| charge(&id, run)),
        (id("h"), model, prop_oneof![Just("1s"), Just("1h")])
            .prop_map(|(id, run, ttl)| hold(&id, run, ttl)),
        id("h").prop_map(|id| capture(&id)),
        id("h").prop_map(|hold_id| Command::ReleaseHold { hold_id }),
        id("c").prop_map(|id| refund(&id)),
        Just(verification()),
        Just(Command::ApproveBusinessVerification),
        Just(Command::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random command sequences sent to a random instance answer exactly as one instance
    /// answers the same sequence at the same instants.
    #[test]
    fn two_instances_answer_as_one(
        steps in prop::collection::vec((0..2usize, 0..1_500i64, any_command()), 1..40)
    ) {
        let mut steps = steps;
        steps.insert(0, (0, 0, Command::OpenAccount));
        let (one, two) = run_both(&steps);
        prop_assert_eq!(one, two);
    }
}

/// Runs `prefix` one by one, then `batch` queued together (decided as one batch), and on
/// another store the same commands all one by one at the same instants; returns the
/// answers to `batch` both ways.
fn batched_and_sequential(prefix: &[Command], batch: &[Command]) -> (Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut answers = Vec::new();
        for batched in [false, true] {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let clock = TestClock::new();
            let ledger = ledgers(dir.path(), 1, &clock).remove(0);
            for command in prefix {
                clock.advance_ms(700);
                observed(ledger.execute(ACCOUNT, command, "test").await);
            }
            clock.advance_ms(700);
            let seen: Vec<String> = if batched {
                let commands = batch
                    .iter()
                    .map(|command| (command.clone(), "test".to_string()))
                    .collect();
                ledger
                    .execute_all(ACCOUNT, commands)
                    .await
                    .into_iter()
                    .map(observed)
                    .collect()
            } else {
                let mut seen = Vec::new();
                for command in batch {
                    seen.push(observed(ledger.execute(ACCOUNT, command, "test").await));
                }
                seen
            };
            answers.push(seen);
        }
        let batched = answers.pop().expect("the batched run");
        let sequential = answers.pop().expect("the sequential run");
        (sequential, batched)
    })
}

#[test]
fn a_batch_with_a_repeat_a_refusal_and_a_spend_answers_as_one_by_one() {
    let flux = || run_of("flux-schnell", Some(100), None);
    let (sequential, batched) = batched_and_sequential(
        &[Command::OpenAccount],
        &[
            charge("a", flux()),
            charge("a", flux()),
            charge("b", flux()),
            charge("c", flux()),
            top_up("p1", 300),
            charge("c", flux()),
            refund("a"),
            charge("d", run_of("flux-pro", Some(1), None)),
            top_up("p1", 300),
        ],
    );
    assert_eq!(sequential, batched);
    assert!(batched[1].contains("replayed=true"), "{}", batched[1]);
    assert!(
        batched[3].starts_with("rejected INSUFFICIENT_CREDITS"),
        "{}",
        batched[3]
    );
    assert!(batched[5].contains("replayed=false"), "{}", batched[5]);
}

#[test]
fn verification_decisions_in_one_batch_answer_as_one_by_one() {
    // Two submissions and a rejection decided together share their instant: their events
    // must still be distinct, or one append would refuse them all.
    let other = Command::SubmitBusinessVerification(SubmitBusinessVerification {
        company_name: "Acme Two".into(),
        country: "DE".into(),
        registration_number: "HRB 2".into(),
    });
    let (sequential, batched) = batched_and_sequential(
        &[Command::OpenAccount],
        &[
            verification(),
            Command::RejectBusinessVerification {
                reason: "unreadable scan".into(),
            },
            other,
            charge("c1", run_of("assistant-chat", None, None)),
        ],
    );
    assert_eq!(sequential, batched);
    assert!(
        batched.iter().all(|answer| answer.starts_with("ok ")),
        "{batched:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random batches on one account (after a random history) answer exactly as the same
    /// commands executed one after another: a 402 is decided against the state the commands
    /// before it in the batch left, repeats inside the batch are replays, positions match.
    #[test]
    fn a_batch_answers_as_its_commands_one_after_another(
        prefix in prop::collection::vec(any_command(), 0..15),
        batch in prop::collection::vec(any_command(), 1..30),
    ) {
        let mut history = vec![Command::OpenAccount];
        history.extend(prefix);
        let (sequential, batched) = batched_and_sequential(&history, &batch);
        prop_assert_eq!(sequential, batched);
    }
}
