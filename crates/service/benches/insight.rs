//! Benchmark: the insight reads of SPEC section 13 on an account with 1,000,000 events (issue
//! 12's targets), each next to its baseline measured in the same run.
//!
//! - `history`: 1,000 points over the whole stream, read from a SQLite store page by page and
//!   folded once (target: under 500 ms); also the fold alone over events in memory.
//! - `usage`: one month by model and by day from the usage view's row (target: under 20 ms).
//! - `models`: every catalog model's badge from the views' core, against one admission check
//!   of one node on the same core (target: at least 0.8x its rate).
//!
//! Run with `cargo bench -p ledger-service --bench insight`. `LEDGER_BENCH_EVENTS` changes the
//! stream's length (default 1,000,000) and `LEDGER_BENCH_RUNS` the runs per median (default 5).

// Rates and ratios of measurements are floats; no credit amount is.
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use chrono::{TimeDelta, Utc};
use ledger_domain::admission::{admit, AdmissionNode, NodeType};
use ledger_domain::catalog::Tier;
use ledger_domain::command::{ChangeSubscription, Charge, PurchaseTopUp, Quantity};
use ledger_domain::envelope::{seal, stream_name, Cause, Envelope, GENESIS_HASH};
use ledger_domain::events::{Billing, Via};
use ledger_domain::explain::{history, HistoryRange};
use ledger_domain::insight::model_badges;
use ledger_domain::usage::{Stored, Usage, UsageBy, UsageRange};
use ledger_domain::{decide, Account, Catalog, Command, DurationS, Instant};
use ledger_service::insight::account_history;
use ledger_store::{EventStore, ExpectedVersion, NewEvent};
use ledger_store_sqlite::SqliteStore;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod support;

use support::{env_number, median, BenchResult};

const ACCOUNT: &str = "hot";
/// Events per append while the stream is written.
const APPEND_EVENTS: usize = 10_000;
/// The stream covers this many days, ending now.
const SPAN_DAYS: i64 = 60;

fn main() -> BenchResult<()> {
    let events: usize = env_number("LEDGER_BENCH_EVENTS", 1_000_000)?;
    let runs: usize = env_number("LEDGER_BENCH_RUNS", 5)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let catalog = Catalog::shipped();
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir.path().join("e.sqlite"))?);
    let started = Clock::now();
    let (account, envelopes, usage) = runtime.block_on(write_stream(&store, &catalog, events))?;
    println!(
        "account {ACCOUNT}: {} events over {SPAN_DAYS} days, written in {:.1} s",
        envelopes.len(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| read | median | target |");
    println!("|---|---:|---:|");

    let now = Utc::now();
    let from = envelopes[0].occurred_at;
    let step_s = ((now - from).num_seconds() / 999).max(1);
    let range = HistoryRange::new(from, now, DurationS::from_secs(step_s as u64), now)?;
    let mut points = 0;
    let from_store = median_ms(runs, || {
        let drawn = runtime.block_on(account_history(store.as_ref(), ACCOUNT, &range));
        points = drawn
            .map(|drawn| drawn.map_or(0, |drawn| drawn.len()))
            .unwrap_or(0);
    });
    println!(
        "| history, {points} points, read from SQLite and folded | {from_store:.1} ms | < 500 ms |"
    );
    let in_memory = median_ms(runs, || {
        points = history(&envelopes, &range).len();
    });
    println!("| history, {points} points, fold alone (events in memory) | {in_memory:.1} ms | |");

    let month_end = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let month = UsageRange::new(month_end - TimeDelta::days(30), month_end)?;
    for by in [UsageBy::Model, UsageBy::Day] {
        let usage_ms = median_ms(runs * 200, || {
            std::hint::black_box(usage.report(&month, by, &catalog));
        });
        println!("| usage, 30 days by {by:?} | {usage_ms:.3} ms | < 20 ms |");
    }

    let core = account.core.clone().ok_or("the account is open")?;
    let node = [AdmissionNode {
        node_id: "n1".into(),
        node_type: NodeType::Assistant,
        model: Some("assistant-chat".into()),
        quantity: Quantity::default(),
    }];
    let at = Utc::now();
    // Each answer starts from the core the views hand out (a copy), as both handlers do.
    let mut models_rates = Vec::with_capacity(runs);
    let mut admission_rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        models_rates.push(rate(|| {
            let view = core.clone();
            std::hint::black_box(model_badges(&view, &catalog, at));
        }));
        admission_rates.push(rate(|| {
            let view = core.clone();
            let _ = std::hint::black_box(admit(&view, &catalog, Via::App, &node, at));
        }));
    }
    let models = median(&mut models_rates);
    let admission = median(&mut admission_rates);
    println!(
        "| models ({} badges) vs admission (one node), answers/s | {models:.0} vs {admission:.0} = {:.2}x | >= 0.8x |",
        catalog.models().len(),
        models / admission.max(1.0)
    );
    Ok(())
}

/// Writes the hot account's stream: pro, topped up as it runs low, charges of three models
/// (one in fifty refunded), evenly over `SPAN_DAYS` up to now. Returns the account, its
/// envelopes and its usage row, folded as the projector folds them.
async fn write_stream(
    store: &Arc<dyn EventStore>,
    catalog: &Catalog,
    events: usize,
) -> BenchResult<(Account, Vec<Envelope>, Usage)> {
    let end = Utc::now() - TimeDelta::seconds(5);
    let start = end - TimeDelta::days(SPAN_DAYS);
    let tick = TimeDelta::microseconds(
        TimeDelta::days(SPAN_DAYS).num_microseconds().unwrap_or(0) / events.max(1) as i64,
    );
    let stream = stream_name(ACCOUNT);
    let mut account = Account::new(ACCOUNT);
    let mut usage = Usage::default();
    let mut envelopes: Vec<Envelope> = Vec::with_capacity(events + 16);
    let mut pending: Vec<NewEvent> = Vec::with_capacity(APPEND_EVENTS);
    let mut appended_version = 0;
    let mut now = start;
    let mut index = 0usize;
    while envelopes.len() < events {
        let command = next_command(&account, index, now);
        index += 1;
        now += tick;
        let Ok(decision) = decide(&account, catalog, &command, now) else {
            continue;
        };
        let prev = envelopes
            .last()
            .map_or(GENESIS_HASH.to_string(), |last| last.hash.clone());
        let cause = Cause {
            command_id: format!("cmd-{index}"),
            actor: "bench".into(),
        };
        for (envelope, payload) in seal(
            &stream,
            account.version,
            &prev,
            &cause,
            now,
            now,
            decision.events,
        ) {
            account.evolve(&envelope.event);
            usage.apply(&envelope.event, Stored::of(&envelope));
            pending.push(NewEvent {
                event_id: envelope.event_id,
                event_type: envelope.event.type_name().to_owned(),
                payload,
                attachment: None,
            });
            envelopes.push(envelope);
        }
        if pending.len() >= APPEND_EVENTS {
            let batch = std::mem::take(&mut pending);
            let count = batch.len() as u64;
            store
                .append(
                    &stream,
                    ExpectedVersion::from_last_version(appended_version),
                    batch,
                )
                .await?;
            appended_version += count;
        }
    }
    if !pending.is_empty() {
        store
            .append(
                &stream,
                ExpectedVersion::from_last_version(appended_version),
                pending,
            )
            .await?;
    }
    Ok((account, envelopes, usage))
}

fn next_command(account: &Account, index: usize, now: Instant) -> Command {
    let Some(core) = account.core.as_ref() else {
        return Command::OpenAccount;
    };
    if core.plan.tier == Tier::Free {
        return Command::ChangeSubscription(ChangeSubscription {
            tier: Tier::Pro,
            billing: Some(Billing::Annual),
            period_start: now,
            period_end: now + TimeDelta::days(365),
            reference: "sub".into(),
            allowance: None,
        });
    }
    if core.available(now).get() < 1_000 {
        return Command::PurchaseTopUp(PurchaseTopUp {
            purchase_id: format!("p{index}"),
            credits: 200_000,
            expires_at: None,
        });
    }
    if index.is_multiple_of(50) {
        return Command::RefundCharge {
            charge_id: format!("c{}", index - 1),
            reason: "run failed".into(),
        };
    }
    let (model, quantity) = match index % 3 {
        0 => (
            "flux-schnell",
            Quantity {
                images: Some(2),
                seconds: None,
            },
        ),
        1 => (
            "kling-2",
            Quantity {
                images: None,
                seconds: Some(3),
            },
        ),
        _ => ("assistant-chat", Quantity::default()),
    };
    Command::Charge(Charge {
        charge_id: format!("c{index}"),
        run_id: "run".into(),
        node_id: "node".into(),
        model: model.into(),
        quantity,
        via: Via::App,
    })
}

/// The median wall time of `runs` calls, in milliseconds.
fn median_ms(runs: usize, mut call: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Clock::now();
            call();
            started.elapsed().as_secs_f64() * 1_000.0
        })
        .collect();
    median(&mut times)
}

/// Calls per second over half a second.
fn rate(mut call: impl FnMut()) -> f64 {
    let window = Duration::from_millis(500);
    let started = Clock::now();
    let mut calls = 0u64;
    while started.elapsed() < window {
        for _ in 0..64 {
            call();
        }
        calls += 64;
    }
    calls as f64 / started.elapsed().as_secs_f64()
}
