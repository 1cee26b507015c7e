//! Benchmark: what closing the position gap costs, and what group commit buys back.
//!
//! Four ways to append one ~300-byte event per append, each appender on its own stream, at
//! 1, 16 and 64 concurrent appenders, measured in the same run (interleaved, medians of
//! several runs):
//!
//! - **store, 1 node**: `PostgresStore` (group commit, position lock) with every appender
//!   on one store.
//! - **store, 4 nodes**: the appenders spread over four stores on one schema, so four group
//!   commits contend for the position lock, as several `ledger serve` nodes would.
//! - **tx/append, lock**: one connection per appender, one autocommit statement per append
//!   that takes its position from the locked counter row (`WITH p AS (UPDATE ledger_position
//!   SET last = last + 1 RETURNING last) INSERT ...`): the lock with no group commit.
//! - **tx/append, no lock**: the same insert with the position from a sequence. Readers of
//!   this can skip late commits: the unsafe baseline the lock is measured against.
//!
//! Needs a PostgreSQL server: `LEDGER_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Works in a schema of its own, dropped after
//! each run. Run with `cargo bench -p ledger-store-postgres --bench append`;
//! `LEDGER_BENCH_RUNS`, `LEDGER_BENCH_MILLIS` and `LEDGER_BENCH_WRITERS` change the number
//! and length of the runs (default 5 x 1500 ms) and the concurrency levels (`1,16,64`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_store::{EventStore, ExpectedVersion, NewEvent};
use ledger_store_postgres::PostgresStore;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const WRITERS: [usize; 3] = [1, 16, 64];
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The four designs measured, in column order.
#[derive(Debug, Clone, Copy)]
enum Design {
    Store { nodes: usize },
    PerAppend { lock: bool },
}

const DESIGNS: [Design; 4] = [
    Design::Store { nodes: 1 },
    Design::Store { nodes: 4 },
    Design::PerAppend { lock: true },
    Design::PerAppend { lock: false },
];

fn main() -> BenchResult<()> {
    let runs: usize = env_number("LEDGER_BENCH_RUNS", 5)?;
    let run_time = Duration::from_millis(env_number("LEDGER_BENCH_MILLIS", 1500)?);
    let writer_counts = match std::env::var("LEDGER_BENCH_WRITERS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("LEDGER_BENCH_WRITERS must list numbers, not {list:?}"))?,
        Err(_) => WRITERS.to_vec(),
    };
    let url = std::env::var("LEDGER_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    println!(
        "durable appends/s, median of {runs} runs of {} ms; one {}-byte event per append, one \
         stream per appender; synchronous_commit on",
        run_time.as_millis(),
        payload(0).len()
    );
    println!();
    println!("| appenders | store, 1 node | store, 4 nodes | tx/append, lock | tx/append, no lock (unsafe) | lock cost (tx/append) |");
    println!("|----------:|--------------:|---------------:|----------------:|----------------------------:|----------------------:|");
    for writers in writer_counts {
        let mut rates: Vec<Vec<u64>> = vec![Vec::with_capacity(runs); DESIGNS.len()];
        for _ in 0..runs {
            // Interleaved, so that drift of the machine affects every design alike.
            for (design, rates) in DESIGNS.iter().zip(&mut rates) {
                rates.push(runtime.block_on(run(&url, *design, writers, run_time))?);
            }
        }
        let medians: Vec<u64> = rates.iter_mut().map(|r| median(r)).collect();
        let locked = medians[2];
        let unlocked = medians[3];
        // Positive: the lock makes per-append transactions slower by this much.
        let cost = 100 - i128::from(locked) * 100 / i128::from(unlocked.max(1));
        println!(
            "| {writers:>9} | {:>13} | {:>14} | {:>15} | {:>27} | {:>20}% |",
            thousands(medians[0]),
            thousands(medians[1]),
            thousands(locked),
            thousands(unlocked),
            cost
        );
        eprintln!("  appenders {writers}: runs {rates:?}");
    }
    Ok(())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> BenchResult<T> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{name} must be a number, not {text:?}").into()),
        Err(_) => Ok(default),
    }
}

/// A ~300-byte JSON envelope, like the ledger's.
fn payload(writer: usize) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"type":"credits_charged","schema_version":1,"account":"acct-{:06}","#,
            r#""occurred_at":"2026-01-01T00:00:00Z","command_id":"0f8fad5b-d9cb-469f-a165-70867728950e","#,
            r#""actor":"service","prev_hash":"9f86d081884c7d659a2feaa0c55ad015","#,
            r#""data":{{"model":"frontier-large","credits":1250,"buckets":[{{"bucket":"allowance","credits":1250}}]}}}}"#
        ),
        writer
    )
    .into_bytes()
}

async fn connect(url: &str) -> BenchResult<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Appends/s of `design` with `writers` appenders, in a fresh schema.
async fn run(url: &str, design: Design, writers: usize, run_time: Duration) -> BenchResult<u64> {
    let schema = format!("ledger_bench_{}", Uuid::new_v4().simple());
    let admin = connect(url).await?;
    let result = match design {
        Design::Store { nodes } => store_run(url, &schema, nodes, writers, run_time).await,
        Design::PerAppend { lock } => per_append_run(url, &schema, lock, writers, run_time).await,
    };
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    result
}

/// Starts `writers` appenders at once, each running `append(writer, version)` (versions 1,
/// 2, ...) until the run time is over; returns appends per second.
async fn measure<F, A>(writers: usize, run_time: Duration, append: A) -> BenchResult<u64>
where
    A: Fn(usize, u64) -> F + Send + Sync + 'static,
    F: Future<Output = BenchResult<()>> + Send,
{
    let append = Arc::new(append);
    let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let append = Arc::clone(&append);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            let deadline = Instant::now() + run_time;
            let mut done = 0u64;
            while Instant::now() < deadline {
                append(writer, done + 1).await?;
                done += 1;
            }
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(done)
        });
    }
    start.wait().await;
    let began = Instant::now();
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(per_second(total, began.elapsed()))
}

async fn store_run(
    url: &str,
    schema: &str,
    nodes: usize,
    writers: usize,
    run_time: Duration,
) -> BenchResult<u64> {
    let mut stores = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        stores.push(Arc::new(
            PostgresStore::connect_in_schema(url, schema).await?,
        ));
    }
    let stores = Arc::new(stores);
    let appenders = Arc::clone(&stores);
    let rate = measure(writers, run_time, move |writer, version| {
        let store = Arc::clone(&appenders[writer % appenders.len()]);
        async move {
            let event = NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "credits_charged".to_owned(),
                payload: payload(writer),
                attachment: None,
            };
            store
                .append(
                    &format!("account-bench-{writer}"),
                    ExpectedVersion::from_last_version(version - 1),
                    vec![event],
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    drop(stores);
    Ok(rate)
}

async fn per_append_run(
    url: &str,
    schema: &str,
    lock: bool,
    writers: usize,
    run_time: Duration,
) -> BenchResult<u64> {
    // The store's own tables, plus a sequence for the unlocked variant.
    PostgresStore::connect_in_schema(url, schema)
        .await?
        .close()
        .await?;
    let s = format!("\"{schema}\"");
    connect(url)
        .await?
        .batch_execute(&format!("CREATE SEQUENCE {s}.bench_positions"))
        .await?;
    let insert = if lock {
        format!(
            "WITH p AS (UPDATE {s}.ledger_position SET last = last + 1 RETURNING last)
             INSERT INTO {s}.ledger_events (position, stream, version, event_id, event_type, payload)
             SELECT p.last, $1, $2, $3, $4, $5 FROM p"
        )
    } else {
        format!(
            "INSERT INTO {s}.ledger_events (position, stream, version, event_id, event_type, payload)
             VALUES (nextval('{s}.bench_positions'), $1, $2, $3, $4, $5)"
        )
    };
    let mut clients = Vec::with_capacity(writers);
    for _ in 0..writers {
        let client = connect(url).await?;
        let statement = client.prepare(&insert).await?;
        clients.push((client, statement));
    }
    let clients = Arc::new(clients);
    measure(writers, run_time, move |writer, version| {
        let clients = Arc::clone(&clients);
        async move {
            let (client, statement) = &clients[writer];
            let stream = format!("account-bench-{writer}");
            client
                .execute(
                    statement,
                    &[
                        &stream,
                        &(version as i64),
                        &Uuid::new_v4(),
                        &"credits_charged",
                        &payload(writer),
                    ],
                )
                .await?;
            Ok(())
        }
    })
    .await
}

fn per_second(count: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1);
    u64::try_from(u128::from(count) * 1_000_000 / micros).unwrap_or(u64::MAX)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}
