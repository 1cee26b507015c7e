//! Benchmarks of the pure core: `decide` + `evolve` on one hot account, the same with a copy
//! of the core kept per answer (as the command handler does) on an account with thousands of
//! lots, and replaying one account's stream from decoded events and from stored JSON. Each figure is the median of
//! several runs, next to a baseline measured in the same run on the same data, because this
//! machine is shared and one absolute number proves little.
//!
//! Run: `cargo bench -p ledger-domain --bench domain` (`BENCH_EVENTS=N` to resize).

// Rates and ratios are reporting, not money: floats are fine here.
#![allow(clippy::float_arithmetic)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant as Clock;

// The ledger binary runs on jemalloc; measure the core the way it runs there.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use chrono::TimeDelta;
use ledger_domain::command::{ChangeSubscription, Charge, PurchaseTopUp, Quantity};
use ledger_domain::envelope::{decode_payload_event, seal, Cause, GENESIS_HASH};
use ledger_domain::events::{Billing, Via};
use ledger_domain::{decide, Account, Catalog, Command, Event, Instant, Tier};

const RUNS: usize = 7;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Runs `work` RUNS times over `n` items and returns the median rate in items per second.
/// `prepare` builds each run's input outside the clock; what `work` returns is dropped
/// outside it too, since tearing down the result is not part of the work measured.
fn rate<I, O>(
    n: usize,
    mut prepare: impl FnMut() -> I,
    mut work: impl FnMut(I) -> (usize, O),
) -> f64 {
    let samples = (0..RUNS)
        .map(|_| {
            let input = prepare();
            let started = Clock::now();
            let (done, output) = black_box(work(input));
            let elapsed = started.elapsed();
            drop(output);
            assert_eq!(done, n);
            n as f64 / elapsed.as_secs_f64()
        })
        .collect();
    median(samples)
}

fn hot_account(catalog: &Catalog, now: Instant) -> Account {
    hot_account_with_history(catalog, now).0
}

/// A pro account with a trillion credits of top-up, and the events that made it.
fn hot_account_with_history(catalog: &Catalog, now: Instant) -> (Account, Vec<Event>) {
    let mut history = Vec::new();
    let mut account = Account::new("hot");
    let setup = [
        Command::OpenAccount,
        Command::ChangeSubscription(ChangeSubscription {
            tier: Tier::Pro,
            billing: Some(Billing::Monthly),
            period_start: now,
            period_end: now + TimeDelta::days(30),
            reference: "sub".into(),
            allowance: None,
        }),
        Command::PurchaseTopUp(PurchaseTopUp {
            purchase_id: "big".into(),
            credits: 1_000_000_000_000,
            expires_at: Some(now + TimeDelta::days(60)),
        }),
    ];
    for command in &setup {
        for event in decide(&account, catalog, command, now).unwrap().events {
            account.evolve(&event);
            history.push(event);
        }
    }
    (account, history)
}

/// Lots on the account of the copy benchmark: a customer who bought top-ups for years.
const LOTS: usize = 2_000;
/// Charges of the copy benchmark (fewer: each copied every lot before buckets were shared).
const COPY_CHARGES: usize = 20_000;

/// The hot account with `LOTS` more top-ups.
fn account_with_lots(catalog: &Catalog, now: Instant) -> Account {
    let mut account = hot_account(catalog, now);
    for lot in 0..LOTS {
        let command = Command::PurchaseTopUp(PurchaseTopUp {
            purchase_id: format!("lot-{lot}"),
            credits: 100,
            expires_at: Some(now + TimeDelta::days(365)),
        });
        for event in decide(&account, catalog, &command, now).unwrap().events {
            account.apply(event);
        }
    }
    account
}

/// decide + evolve over `commands`; with `keep_copies`, each decision's core is copied into
/// an `Arc` and kept until the next, as the command handler keeps its newest answer.
fn decide_all(
    mut account: Account,
    catalog: &Catalog,
    commands: &[Command],
    now: Instant,
    keep_copies: bool,
) -> (usize, (Account, Option<Arc<ledger_domain::state::Core>>)) {
    let mut kept = None;
    for command in commands {
        for event in decide(&account, catalog, command, now).unwrap().events {
            account.apply(event);
        }
        if keep_copies {
            kept = account.core.clone().map(Arc::new);
        }
    }
    (commands.len(), (account, kept))
}

fn charges(n: usize) -> Vec<Command> {
    (0..n)
        .map(|i| {
            Command::Charge(Charge {
                charge_id: format!("charge-{i}"),
                run_id: format!("run-{}", i / 8),
                node_id: format!("node-{}", i % 8),
                model: if i % 4 == 0 {
                    "flux-schnell"
                } else {
                    "assistant-chat"
                }
                .into(),
                quantity: Quantity {
                    images: (i % 4 == 0).then_some(2),
                    seconds: None,
                },
                via: Via::Api,
            })
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let catalog = Catalog::shipped();
    let now: Instant = "2026-03-01T00:00:00Z".parse().unwrap();
    let commands = charges(n);

    // decide + evolve, one hot account.
    let mut history: Vec<Event> = Vec::new();
    let decisions = rate(
        n,
        || hot_account(&catalog, now),
        |mut account| {
            let mut count = 0;
            for command in &commands {
                let decision = decide(&account, &catalog, command, now).unwrap();
                for event in decision.events {
                    account.apply(event);
                }
                count += 1;
            }
            (count, account)
        },
    );
    {
        let (mut account, setup) = hot_account_with_history(&catalog, now);
        history.extend(setup);
        for command in &commands {
            for event in decide(&account, &catalog, command, now).unwrap().events {
                history.push(event.clone());
                account.apply(event);
            }
        }
    }
    // Baseline: the simplest ledger imaginable, a map of charge ids and one balance.
    let baseline_decisions = rate(
        n,
        || (),
        |()| {
            let mut seen: HashMap<String, u64> = HashMap::new();
            let mut balance: u64 = 1_000_000_000_000;
            for command in &commands {
                if let Command::Charge(charge) = command {
                    let cost = if charge.quantity.images.is_some() {
                        4
                    } else {
                        1
                    };
                    if !seen.contains_key(&charge.charge_id) && balance >= cost {
                        balance -= cost;
                        seen.insert(charge.charge_id.clone(), cost);
                    }
                }
            }
            (seen.len(), seen)
        },
    );

    // A copy of the core per answer, on an account with many lots; the baseline is the same
    // decisions without the copies.
    let copy_commands = charges(COPY_CHARGES);
    let with_copies = rate(
        COPY_CHARGES,
        || account_with_lots(&catalog, now),
        |account| decide_all(account, &catalog, &copy_commands, now, true),
    );
    let without_copies = rate(
        COPY_CHARGES,
        || account_with_lots(&catalog, now),
        |account| decide_all(account, &catalog, &copy_commands, now, false),
    );

    // Replay from decoded events: the account's whole stream, opening included.
    let stream = history;
    let stream_len = stream.len();
    let replay = rate(
        stream_len,
        || stream.clone(),
        |events| {
            let account = Account::replay_owned("hot", events);
            (account.version as usize, account)
        },
    );

    // Replay from stored JSON: the envelopes exactly as the store holds them.
    let cause = Cause {
        command_id: "bench".into(),
        actor: "executor".into(),
    };
    let payloads: Vec<Vec<u8>> = seal(
        "account-hot",
        0,
        GENESIS_HASH,
        &cause,
        now,
        now,
        stream.clone(),
    )
    .into_iter()
    .map(|(_, payload)| payload)
    .collect();
    let payload_bytes: usize = payloads.iter().map(Vec::len).sum();
    let replay_json = rate(
        stream_len,
        || (),
        |()| {
            let mut account = Account::new("hot");
            for payload in &payloads {
                let (_, event) = decode_payload_event(payload).unwrap();
                account.apply(event);
            }
            (account.version as usize, account)
        },
    );
    // Baseline: parsing the same payloads into untyped JSON values, doing nothing with them.
    let baseline_json = rate(
        stream_len,
        || (),
        |()| {
            let values: Vec<serde_json::Value> = payloads
                .iter()
                .map(|payload| serde_json::from_slice(payload).unwrap())
                .collect();
            (values.len(), values)
        },
    );

    println!("ledger-domain benchmark: {n} charges, {stream_len} events, {} bytes of JSON, median of {RUNS} runs", payload_bytes);
    println!("| measure | median | target | baseline (same run) | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| decide + evolve, hot account | {:.0} decisions/s | 1,000,000 | {:.0}/s map-and-balance | {:.2} |",
        decisions,
        baseline_decisions,
        decisions / baseline_decisions
    );
    println!(
        "| decide + evolve + a copy of the core per charge, {LOTS} lots | {:.0} decisions/s | | {:.0}/s without the copies | {:.2} |",
        with_copies,
        without_copies,
        with_copies / without_copies
    );
    println!(
        "| replay, decoded events | {:.0} events/s | 2,000,000 | | |",
        replay
    );
    println!(
        "| replay, stored JSON | {:.0} events/s | 300,000 | {:.0}/s serde_json::Value parse | {:.2} |",
        replay_json,
        baseline_json,
        replay_json / baseline_json
    );
}
