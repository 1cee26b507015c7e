//! Benchmark: durable charges per second through the command handler (decide, seal, one
//! append per batch, fsync), without HTTP, against the naive design measured in the same
//! run: one SQLite transaction per charge (`UPDATE balance ... WHERE balance >= cost` plus an
//! `INSERT`, WAL, `synchronous=FULL`).
//!
//! And against the peer a team would otherwise pick: `cqrs-es` with `sqlite-es`
//! (`benches/peer-cqrs-es`, its own workspace and lock file so that CI never builds sqlx),
//! same tasks, accounts and durability. The bench builds the peer with cargo the first time
//! (a few minutes); `LEDGER_BENCH_PEER=off` leaves it out, `LEDGER_BENCH_PEER=PATH` uses a
//! binary built already.
//!
//! Scenarios (issue 18): 256 tasks charging 10,000 accounts, 64 tasks on one hot account,
//! and one task. Each charge costs 1 credit (`assistant-chat`); accounts are pro with a
//! large top-up, so nothing is refused.
//!
//! Run with `cargo bench -p ledger-service --bench charges`. `LEDGER_BENCH_RUNS` and
//! `LEDGER_BENCH_MILLIS` change the number and length of the runs (default 3 x 3000 ms);
//! `LEDGER_BENCH_ONLY="one account"` runs only the scenarios whose name contains the text (for
//! profiling one of them).
//! Runs alternate ledger, naive, peer, so that a noisy moment hits all three alike.

// Rates and ratios of measurements are floats; no credit amount is.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ledger_domain::catalog::Tier;
use ledger_domain::command::{ChangeSubscription, Charge, PurchaseTopUp, Quantity};
use ledger_domain::events::{Billing, Via};
use ledger_domain::{Catalog, Command};
use ledger_service::clock::SystemClock;
use ledger_service::ledger::Ledger;
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;
use rusqlite::{params, Connection};

// As in the `ledger` binary: the domain allocates small strings on every command.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod support;

use support::{cpu_seconds, env_number, median, BenchResult};

/// Tasks preparing accounts at once.
const PREPARE_TASKS: usize = 128;

/// (name, tasks, accounts)
const SCENARIOS: [(&str, usize, usize); 3] = [
    ("256 tasks, 10,000 accounts", 256, 10_000),
    ("64 tasks, one account", 64, 1),
    ("one task", 1, 1),
];

fn main() -> BenchResult<()> {
    let runs: usize = env_number("LEDGER_BENCH_RUNS", 3)?;
    let run_time = Duration::from_millis(env_number("LEDGER_BENCH_MILLIS", 3000)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "durable 1-credit charges/s, median of {runs} runs of {} ms; WAL, synchronous=FULL",
        run_time.as_millis()
    );
    println!();
    let peer = peer_binary()?;
    println!(
        "| scenario | ledger (charges/s) | ledger CPU µs/charge | naive: tx per charge | ledger ÷ naive | cqrs-es peer | ledger ÷ peer | peer conflicts |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let only = std::env::var("LEDGER_BENCH_ONLY").unwrap_or_default();
    for (name, tasks, accounts) in SCENARIOS {
        if !name.contains(only.as_str()) {
            continue;
        }
        let mut ledger_rates = Vec::with_capacity(runs);
        let mut ledger_cpu = Vec::with_capacity(runs);
        let mut naive_rates = Vec::with_capacity(runs);
        let mut peer_rates = Vec::with_capacity(runs);
        let mut peer_conflicts = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (rate, cpu_us) = runtime.block_on(ledger_run(tasks, accounts, run_time))?;
            ledger_rates.push(rate);
            ledger_cpu.push(cpu_us);
            naive_rates.push(naive_run(tasks, accounts, run_time)?);
            if let Some(peer) = &peer {
                let (rate, conflicts) = peer_run(peer, tasks, accounts, run_time)?;
                peer_rates.push(rate);
                peer_conflicts.push(conflicts as f64);
            }
        }
        let ledger = median(&mut ledger_rates);
        let naive = median(&mut naive_rates);
        let peer_columns = if peer_rates.is_empty() {
            "not run | | ".to_string()
        } else {
            let peer = median(&mut peer_rates);
            format!(
                "{peer:.0} | {:.1} | {:.0}",
                ledger / peer.max(1.0),
                median(&mut peer_conflicts)
            )
        };
        println!(
            "| {name} | {ledger:.0} | {:.1} | {naive:.0} | {:.1} | {peer_columns} |",
            median(&mut ledger_cpu),
            ledger / naive.max(1.0)
        );
    }
    Ok(())
}

/// The peer's binary: built here unless `LEDGER_BENCH_PEER` names one or says `off`.
fn peer_binary() -> BenchResult<Option<PathBuf>> {
    match std::env::var("LEDGER_BENCH_PEER").as_deref() {
        Ok("off") => return Ok(None),
        Ok(path) => return Ok(Some(PathBuf::from(path))),
        Err(_) => {}
    }
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/peer-cqrs-es/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the cqrs-es peer (benches/peer-cqrs-es; LEDGER_BENCH_PEER=off skips it)");
    let status = Process::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .status()?;
    if !status.success() {
        return Err(format!("building the peer failed: {status}").into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.with_file_name("target"));
    Ok(Some(target.join("release/peer-cqrs-es")))
}

/// One run of the peer in its own process: (charges/s, version conflicts retried).
fn peer_run(
    peer: &Path,
    tasks: usize,
    accounts: usize,
    run_time: Duration,
) -> BenchResult<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    let output = Process::new(peer)
        .arg(tasks.to_string())
        .arg(accounts.to_string())
        .arg(run_time.as_millis().to_string())
        .arg(dir.path())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("the peer printed no {name}: {text:?}"))
    };
    Ok((
        field("charges_per_s")?.parse()?,
        field("conflicts")?.parse()?,
    ))
}

fn account_id(n: usize) -> String {
    format!("bench-{n}")
}

/// Charges through the command handler for `run_time`, `tasks` at once over `accounts`: the
/// rate, and the process's CPU time (all threads, the store's writer too) per charge in µs.
/// The CPU figure moves far less with a busy machine than the rate does, so it is what tells
/// two builds apart.
async fn ledger_run(tasks: usize, accounts: usize, run_time: Duration) -> BenchResult<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir.path().join("e.sqlite"))?);
    let ledger = Ledger::new(store, Arc::new(Catalog::shipped()), Arc::new(SystemClock));
    // Accounts are prepared concurrently, so their commits are grouped too.
    let now = chrono::Utc::now();
    let mut preparing = Vec::new();
    for first in 0..PREPARE_TASKS.min(accounts) {
        let ledger = ledger.clone();
        preparing.push(tokio::spawn(async move {
            for n in (first..accounts).step_by(PREPARE_TASKS) {
                let id = account_id(n);
                for command in [
                    Command::OpenAccount,
                    Command::ChangeSubscription(ChangeSubscription {
                        tier: Tier::Pro,
                        billing: Some(Billing::Monthly),
                        period_start: now,
                        period_end: now + chrono::TimeDelta::days(30),
                        reference: format!("sub-{id}"),
                        allowance: None,
                    }),
                    Command::PurchaseTopUp(PurchaseTopUp {
                        purchase_id: format!("lot-{id}"),
                        credits: 1_000_000_000,
                        expires_at: None,
                    }),
                ] {
                    ledger
                        .execute(&id, &command, "billing")
                        .await
                        .map_err(|err| err.to_string())?;
                }
            }
            Ok::<(), String>(())
        }));
    }
    for task in preparing {
        task.await??;
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let ledger = ledger.clone();
        let done = done.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let account = account_id((task + n * tasks) % accounts);
                let charge = Command::Charge(Charge {
                    charge_id: format!("t{task}-{n}"),
                    run_id: "bench".into(),
                    node_id: "node".into(),
                    model: "assistant-chat".into(),
                    quantity: Quantity::default(),
                    via: Via::App,
                });
                // Owned, as the HTTP handlers pass theirs: no copy of the command's strings.
                if ledger
                    .execute_owned(&account, charge, "executor")
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    let (done_before, cpu_before) = (done.load(Ordering::Relaxed), cpu_seconds());
    tokio::time::sleep(run_time).await;
    let charged = done.load(Ordering::Relaxed);
    let cpu = cpu_seconds() - cpu_before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await?;
    }
    let measured = charged.saturating_sub(done_before).max(1) as f64;
    Ok((charged as f64 / elapsed.as_secs_f64(), cpu * 1e6 / measured))
}

/// The naive design: `tasks` threads share one connection and run one transaction per
/// charge.
fn naive_run(tasks: usize, accounts: usize, run_time: Duration) -> BenchResult<f64> {
    let dir = tempfile::tempdir()?;
    let connection = Connection::open(dir.path().join("naive.sqlite"))?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE charges (id TEXT PRIMARY KEY, account TEXT NOT NULL, cost INTEGER NOT NULL);",
    )?;
    for n in 0..accounts {
        connection.execute(
            "INSERT INTO balances VALUES (?1, 1000000000)",
            params![account_id(n)],
        )?;
    }
    let connection = Arc::new(Mutex::new(connection));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..tasks)
        .map(|task| {
            let connection = connection.clone();
            let stop = stop.clone();
            let done = done.clone();
            std::thread::spawn(move || -> rusqlite::Result<()> {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let account = account_id((task + n * tasks) % accounts);
                    let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    let tx = connection.transaction()?;
                    let changed = tx.execute(
                        "UPDATE balances SET balance = balance - 1 WHERE account = ?1 AND balance >= 1",
                        params![account],
                    )?;
                    if changed == 1 {
                        tx.execute(
                            "INSERT INTO charges VALUES (?1, ?2, 1)",
                            params![format!("t{task}-{n}"), account],
                        )?;
                    }
                    tx.commit()?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(run_time);
    let charged = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread
            .join()
            .map_err(|_| "a naive charging thread panicked")??;
    }
    Ok(charged as f64 / elapsed.as_secs_f64())
}
