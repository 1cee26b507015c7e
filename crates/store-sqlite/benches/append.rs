//! Benchmark: durable appends per second through the group-committing writer, against a
//! baseline of one SQLite transaction per append measured in the same run.
//!
//! Both sides use the store's schema, WAL and `synchronous=FULL`, and append one ~300-byte
//! event per append, each writer on its own stream. The baseline is the straightforward
//! design: writers share one `Mutex<Connection>` and run `BEGIN; INSERT; COMMIT` per event
//! (each writer creates its stream's row once, before the clock starts).
//!
//! Run with `cargo bench -p ledger-store-sqlite --bench append`. `LEDGER_BENCH_RUNS` and
//! `LEDGER_BENCH_MILLIS` change the number and length of the runs (default 5 x 2000 ms), and
//! `LEDGER_BENCH_WRITERS` the concurrency levels (default `1,16,256`).

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ledger_store::{EventStore, ExpectedVersion, NewEvent};
use ledger_store_sqlite::SqliteStore;
use rusqlite::{params, Connection};
use uuid::Uuid;

/// Concurrency levels measured, unless `LEDGER_BENCH_WRITERS` lists others (e.g. `256` or `1,64`).
const WRITERS: [usize; 3] = [1, 16, 256];

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    let runs: usize = env_number("LEDGER_BENCH_RUNS", 5)?;
    let run_time = Duration::from_millis(env_number("LEDGER_BENCH_MILLIS", 2000)?);
    let writer_counts = match std::env::var("LEDGER_BENCH_WRITERS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("LEDGER_BENCH_WRITERS must list numbers, not {list:?}"))?,
        Err(_) => WRITERS.to_vec(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    println!(
        "durable appends/s, median of {runs} runs of {} ms each; one {}-byte event per append, \
         one stream per writer; WAL, synchronous=FULL",
        run_time.as_millis(),
        payload(0).len()
    );
    println!();
    println!(
        "| writers | group commit (appends/s) | baseline: tx per append (appends/s) | ratio |"
    );
    println!(
        "|--------:|-------------------------:|------------------------------------:|------:|"
    );
    for writers in writer_counts {
        let mut grouped = Vec::with_capacity(runs);
        let mut cpu = Vec::with_capacity(runs);
        let mut baseline = Vec::with_capacity(runs);
        // Interleaved, so that drift of the machine affects both sides alike.
        for _ in 0..runs {
            let (rate, cpu_per_append) = runtime.block_on(group_commit_run(writers, run_time))?;
            grouped.push(rate);
            cpu.push(cpu_per_append);
            baseline.push(baseline_run(writers, run_time)?);
        }
        let grouped_median = median(&mut grouped);
        let baseline_median = median(&mut baseline);
        let ratio = ratio_hundredths(grouped_median, baseline_median);
        println!(
            "| {writers:>7} | {:>24} | {:>35} | {:>4}.{:02}x |",
            thousands(grouped_median),
            thousands(baseline_median),
            ratio / 100,
            ratio % 100
        );
        let cpu_median = median(&mut cpu);
        eprintln!(
            "  writers {writers}: group commit runs {grouped:?}, baseline runs {baseline:?}; \
             CPU per group-committed append (median): {}.{} µs",
            cpu_median / 10,
            cpu_median % 10
        );
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

/// CPU time (user + system) of this process in clock ticks, from /proc (0 without it).
fn cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name; utime and stime are the 12th and
            // 13th of those.
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Appends/s through `SqliteStore` with `writers` concurrent tasks, and the process's CPU
/// time per append in tenths of a microsecond (less sensitive to a busy machine than the
/// rate is).
async fn group_commit_run(writers: usize, run_time: Duration) -> BenchResult<(u64, u64)> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"))?);
    let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            let stream = format!("account-bench-{writer}");
            let payload = payload(writer);
            let mut version = 0;
            let mut appended = 0u64;
            start.wait().await;
            let deadline = Instant::now() + run_time;
            while Instant::now() < deadline {
                let event = NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: "credits_charged".to_owned(),
                    payload: payload.clone(),
                    attachment: None,
                };
                let outcome = store
                    .append(
                        &stream,
                        ExpectedVersion::from_last_version(version),
                        vec![event],
                    )
                    .await?;
                version = outcome.last_version;
                appended += 1;
            }
            Ok::<u64, ledger_store::StoreError>(appended)
        });
    }
    start.wait().await;
    let began = Instant::now();
    let cpu_before = cpu_ticks();
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    let elapsed = began.elapsed();
    let cpu_after = cpu_ticks();
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().await?,
        Err(_) => return Err("a writer task kept the store".into()),
    }
    // Clock ticks are 10 ms; tenths of a microsecond per append.
    let cpu = cpu_after.saturating_sub(cpu_before) * 100_000 / total.max(1);
    Ok((per_second(total, elapsed), cpu))
}

/// Appends/s with one transaction per append over a shared connection.
fn baseline_run(writers: usize, run_time: Duration) -> BenchResult<u64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("baseline.db");
    create_schema(&path)?;
    let connection = Connection::open(&path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    let connection = Arc::new(Mutex::new(connection));
    let start = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let connection = Arc::clone(&connection);
            let start = Arc::clone(&start);
            std::thread::spawn(move || -> Result<u64, rusqlite::Error> {
                let stream = format!("account-bench-{writer}");
                let payload = payload(writer);
                // The stream's row, created before the clock starts, as a service that
                // caches stream ids would have it.
                let stream_id: i64 = {
                    let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    connection.execute("INSERT INTO streams (name) VALUES (?1)", [&stream])?;
                    connection.last_insert_rowid()
                };
                let mut version = 0i64;
                let mut appended = 0u64;
                start.wait();
                let deadline = Instant::now() + run_time;
                while Instant::now() < deadline {
                    let event_id = Uuid::new_v4();
                    version += 1;
                    let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    connection.execute_batch("BEGIN")?;
                    connection
                        .prepare_cached(
                            "INSERT INTO events (stream_id, version, event_id, event_type, payload)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![
                            stream_id,
                            version,
                            &event_id.as_bytes()[..],
                            "credits_charged",
                            payload
                        ])?;
                    connection.execute_batch("COMMIT")?;
                    appended += 1;
                }
                Ok(appended)
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut total = 0;
    for thread in threads {
        total += thread.join().map_err(|_| "a baseline writer panicked")??;
    }
    Ok(per_second(total, began.elapsed()))
}

/// Creates the store's schema by opening (and closing) a store on `path`.
fn create_schema(path: &Path) -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(async { SqliteStore::open(path)?.close().await })?;
    Ok(())
}

fn per_second(count: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1);
    u64::try_from(u128::from(count) * 1_000_000 / micros).unwrap_or(u64::MAX)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn ratio_hundredths(value: u64, base: u64) -> u64 {
    value.saturating_mul(100) / base.max(1)
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
