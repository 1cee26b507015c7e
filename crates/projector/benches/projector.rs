//! Benchmarks of the projectors, each next to a baseline measured in the same run (this
//! machine is shared, so one absolute number proves little):
//!
//! 1. Catch-up from zero: all three views built from a SQLite store of 1,000,000 events
//!    (10,000 accounts, mostly charges, skewed towards hot accounts). Median of runs, in
//!    events/s. Baseline: reading every event with `read_all` and decoding it, applying
//!    nothing.
//! 2. Live lag: 10,000 charges/s appended at a steady rate for 10 s while the embedded
//!    projectors follow; per event, the time it became visible in all three in-memory views
//!    minus the time its append was acknowledged. p50 and p99 per run, medians over runs.
//!
//! Run: `cargo bench -p ledger-projector`. Knobs: `BENCH_EVENTS` (1,000,000), `BENCH_ACCOUNTS`
//! (10,000), `BENCH_RUNS` (3), `BENCH_LIVE_RATE` (10,000/s), `BENCH_LIVE_SECS` (10),
//! `BENCH_LIVE_RUNS` (3), `BENCH_DIR` (where the stores go; default the system temp dir).
//! The generated catch-up store is cached in Cargo's target tmp dir between runs.

// Rates, percentiles and ratios are reporting, not money: floats are fine here.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as Clock};

use chrono::TimeDelta;
use ledger_domain::command::{
    CaptureHold, ChangeSubscription, Charge, PlaceHold, PurchaseTopUp, Quantity,
};
use ledger_domain::envelope::{seal, stream_name, Cause, GENESIS_HASH};
use ledger_domain::events::{Billing, Via};
use ledger_domain::{decide, Account, Catalog, Command, Instant, Tier};
use ledger_projector::decode::decode;
use ledger_projector::{spawn_embedded, ProjectorConfig, Projectors, ViewSelection, Views};
use ledger_store::{EventStore, ExpectedVersion, NewEvent};
use ledger_store_sqlite::SqliteStore;

// The ledger binary runs on jemalloc; measure the projectors the way they run there.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Bumped whenever the generated history changes, so that a cached store is not reused.
const GENERATOR_VERSION: u32 = 2;

fn env_number(name: &str, default: u64) -> BenchResult<u64> {
    match std::env::var(name) {
        Ok(text) => Ok(text
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{name} must be a whole number, not {text:?}"))?),
        Err(_) => Ok(default),
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// xorshift64*: reproducible workloads without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// An account as its writer keeps it: folded state and the hash chain's tail.
struct Writer {
    account: Account,
    prev_hash: String,
    commands: u64,
}

impl Writer {
    fn new(account_id: &str) -> Writer {
        Writer {
            account: Account::new(account_id),
            prev_hash: GENESIS_HASH.to_owned(),
            commands: 0,
        }
    }

    /// Decides and seals `command` as of `now` (recorded then too: history); `None` if
    /// rejected.
    fn seal(
        &mut self,
        catalog: &Catalog,
        command: &Command,
        now: Instant,
    ) -> Option<(String, ExpectedVersion, Vec<NewEvent>)> {
        self.try_seal(catalog, command, now, now).ok()
    }

    /// Decides `command` as of `now` and seals it as recorded at `recorded_at`, or says why
    /// it was rejected.
    fn try_seal(
        &mut self,
        catalog: &Catalog,
        command: &Command,
        now: Instant,
        recorded_at: Instant,
    ) -> Result<(String, ExpectedVersion, Vec<NewEvent>), String> {
        let decision = decide(&self.account, catalog, command, now)
            .map_err(|rejection| format!("{} was rejected: {rejection}", command.name()))?;
        if decision.events.is_empty() {
            return Err(format!("{} was a replay", command.name()));
        }
        self.commands += 1;
        let stream = stream_name(&self.account.account_id);
        let expected = ExpectedVersion::from_last_version(self.account.version);
        let cause = Cause {
            command_id: command.command_id(now),
            actor: "executor".into(),
        };
        let mut events = Vec::new();
        for (envelope, payload) in seal(
            &stream,
            self.account.version,
            &self.prev_hash,
            &cause,
            now,
            recorded_at,
            decision.events,
        ) {
            self.prev_hash = envelope.hash.clone();
            events.push(NewEvent {
                event_id: envelope.event_id,
                event_type: envelope.event.type_name().to_owned(),
                payload,
                attachment: None,
            });
            self.account.apply(envelope.event);
        }
        Ok((stream, expected, events))
    }
}

fn charge(id: u64, images: bool) -> Command {
    Command::Charge(Charge {
        charge_id: format!("charge-{id}"),
        run_id: format!("run-{}", id / 8),
        node_id: format!("node-{}", id % 8),
        model: if images {
            "flux-schnell"
        } else {
            "assistant-chat"
        }
        .into(),
        quantity: Quantity {
            images: images.then_some(2),
            seconds: None,
        },
        via: Via::App,
    })
}

fn top_up(id: &str, now: Instant) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: id.into(),
        credits: 1_000_000_000,
        expires_at: Some(now + TimeDelta::days(300)),
    })
}

/// The commands that set an account up: open, a plan for one in ten, credits.
fn setup_commands(index: usize, now: Instant) -> Vec<Command> {
    let mut commands = vec![Command::OpenAccount];
    if index.is_multiple_of(10) {
        commands.push(Command::ChangeSubscription(ChangeSubscription {
            tier: Tier::Pro,
            billing: Some(Billing::Monthly),
            period_start: now,
            period_end: now + TimeDelta::days(30),
            reference: format!("sub-{index}"),
            allowance: None,
        }));
    }
    commands.push(top_up(&format!("setup-{index}"), now));
    commands
}

/// Appends `appends` in order per stream, many streams at once: each wave holds at most
/// one append per stream and is sent concurrently, so the store commits it in a few group
/// commits.
async fn append_all(
    store: &SqliteStore,
    appends: Vec<(String, ExpectedVersion, Vec<NewEvent>)>,
) -> BenchResult<()> {
    let mut wave: Vec<(String, ExpectedVersion, Vec<NewEvent>)> = Vec::new();
    let mut in_wave = std::collections::HashSet::new();
    let mut appends = appends.into_iter().peekable();
    while appends.peek().is_some() {
        while let Some((stream, _, _)) = appends.peek() {
            if in_wave.contains(stream) || wave.len() >= 1_000 {
                break;
            }
            let Some(append) = appends.next() else { break };
            in_wave.insert(append.0.clone());
            wave.push(append);
        }
        let sends = wave.drain(..).map(|(stream, expected, events)| async move {
            store.append(&stream, expected, events).await
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
        in_wave.clear();
    }
    Ok(())
}

/// Builds the catch-up store: `accounts` accounts, then charges until `events` events, a
/// few holds and top-ups mixed in. Half the charges go to the hottest 1% of accounts, 30% to
/// the next 10%, the rest anywhere, as on a platform where a few pipelines run most.
async fn generate(path: &Path, events: u64, accounts: usize) -> BenchResult<()> {
    let catalog = Catalog::shipped();
    let mut now: Instant = "2026-03-01T00:00:00Z".parse()?;
    let mut writers: Vec<Writer> = (0..accounts)
        .map(|index| Writer::new(&format!("acct-{index:06}")))
        .collect();
    let mut appends = Vec::new();
    let mut total = 0u64;
    for (index, writer) in writers.iter_mut().enumerate() {
        for command in setup_commands(index, now) {
            if let Some(append) = writer.seal(&catalog, &command, now) {
                total += append.2.len() as u64;
                appends.push(append);
            }
        }
    }
    let mut random = Random(0x5EED);
    let hot = (accounts / 100).max(1);
    let warm = (accounts / 10).max(1);
    let mut open_holds: Vec<Vec<String>> = vec![Vec::new(); accounts];
    let mut id = 0u64;
    while total < events {
        id += 1;
        now += TimeDelta::milliseconds(1);
        let index = match random.below(100) {
            0..50 => random.below(hot),
            50..80 => hot + random.below(warm),
            _ => random.below(accounts),
        }
        .min(accounts - 1);
        let command = match random.below(100) {
            0..2 => Command::PlaceHold(PlaceHold {
                hold_id: format!("hold-{id}"),
                run_id: format!("run-{id}"),
                node_id: "node".into(),
                model: "flux-schnell".into(),
                quantity: Quantity {
                    images: Some(4),
                    seconds: None,
                },
                via: Via::App,
                ttl: None,
            }),
            2..4 if !open_holds[index].is_empty() => Command::CaptureHold(CaptureHold {
                hold_id: open_holds[index].remove(0),
                quantity: Quantity::default(),
            }),
            4 => top_up(&format!("top-up-{id}"), now),
            roll => charge(id, roll % 4 == 0),
        };
        if let Command::PlaceHold(hold) = &command {
            open_holds[index].push(hold.hold_id.clone());
        }
        let remaining = events - total;
        if let Some(append) = writers[index].seal(&catalog, &command, now) {
            if append.2.len() as u64 > remaining {
                // Keep the total exact: finish with a one-event charge on a fresh account.
                continue;
            }
            total += append.2.len() as u64;
            appends.push(append);
        }
    }
    drop(writers);
    let store = SqliteStore::open(path)?;
    append_all(&store, appends).await?;
    store.close().await?;
    Ok(())
}

/// Opens the cached catch-up store, generating it first if needed.
async fn catch_up_store(events: u64, accounts: usize) -> BenchResult<(Arc<SqliteStore>, PathBuf)> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "projector-bench-v{GENERATOR_VERSION}-{events}-{accounts}.sqlite"
    ));
    if cache.exists() {
        match SqliteStore::open(&cache) {
            Ok(store) if store.head_position().await? == Some(events) => {
                return Ok((Arc::new(store), cache))
            }
            _ => eprintln!(
                "the cached store {} is unusable; regenerating",
                cache.display()
            ),
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = cache.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
    eprintln!(
        "generating {events} events on {accounts} accounts into {} ...",
        cache.display()
    );
    let started = Clock::now();
    // Appended in memory when the machine has /dev/shm, then copied: every append of a hot
    // account waits for the previous one's commit, and on a disk each commit is an fsync.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let generated = scratch.path().join("events.sqlite");
    generate(&generated, events, accounts).await?;
    std::fs::copy(&generated, &cache)?;
    eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    Ok((Arc::new(SqliteStore::open(&cache)?), cache))
}

/// Baseline: read every event with `read_all` and decode it, applying nothing.
async fn read_and_decode(store: &SqliteStore, events: u64) -> BenchResult<f64> {
    let started = Clock::now();
    let mut after = None;
    let mut read = 0u64;
    loop {
        let page = store.read_all(after, 2_048).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        for record in &page {
            std::hint::black_box(decode(record)?);
        }
        read += page.len() as u64;
    }
    assert_eq!(read, events);
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// One catch-up from zero of `which`, in events/s.
async fn catch_up(
    store: &Arc<SqliteStore>,
    dir: &Path,
    which: ViewSelection,
    events: u64,
) -> BenchResult<f64> {
    let data = tempfile::tempdir_in(dir)?;
    let started = Clock::now();
    let projectors = Projectors::start(
        Arc::clone(store) as Arc<dyn EventStore>,
        data.path(),
        which,
        ProjectorConfig::default(),
    )
    .await?;
    let handles = projectors.handles().clone();
    for position in [
        handles.balance.map(|h| h.watch_position()),
        handles.trial_usage.map(|h| h.watch_position()),
        handles.tier.map(|h| h.watch_position()),
    ]
    .into_iter()
    .flatten()
    {
        let mut position = position;
        position
            .wait_for(|at| *at == Some(events))
            .await
            .map_err(|_| "the projector stopped")?;
    }
    let elapsed = started.elapsed();
    projectors.stop().await?;
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// One live run: `rate` charges/s for `seconds` on `accounts` accounts; returns (p50, p99,
/// achieved rate) with lags in ms.
async fn live_run(
    dir: &Path,
    rate: u64,
    seconds: u64,
    accounts: usize,
) -> BenchResult<(f64, f64, f64)> {
    let work = tempfile::tempdir_in(dir)?;
    let store = Arc::new(SqliteStore::open(&work.path().join("events.sqlite"))?);
    let catalog = Arc::new(Catalog::shipped());
    let now: Instant = "2026-03-01T00:00:00Z".parse()?;
    let mut writers = Vec::with_capacity(accounts);
    let mut setup = Vec::new();
    for index in 0..accounts {
        let mut writer = Writer::new(&format!("live-{index:05}"));
        for command in setup_commands(index, now) {
            setup.extend(writer.seal(&catalog, &command, now));
        }
        writers.push(Arc::new(tokio::sync::Mutex::new(writer)));
    }
    append_all(&store, setup).await?;
    let (views, projectors) = spawn_embedded(
        Arc::clone(&store) as Arc<dyn EventStore>,
        &work.path().join("data"),
        ProjectorConfig::default(),
    )
    .await?;
    let head = store.head_position().await?.unwrap_or(0);
    views.wait_for(head, Duration::from_secs(60)).await?;

    // When each position became visible in all three views.
    let visible: Arc<Mutex<Vec<(u64, Clock)>>> = Arc::new(Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_visible(views.clone(), Arc::clone(&visible)));

    let acknowledged: Arc<Mutex<Vec<(u64, Clock)>>> = Arc::new(Mutex::new(Vec::new()));
    let per_tick = (rate / 1_000).max(1);
    let ticks = seconds * 1_000;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity((per_tick * ticks) as usize);
    let started = Clock::now();
    let mut next_charge = 0u64;
    for _ in 0..ticks {
        interval.tick().await;
        for _ in 0..per_tick {
            next_charge += 1;
            let writer = Arc::clone(&writers[(next_charge % accounts as u64) as usize]);
            let store = Arc::clone(&store);
            let catalog = Arc::clone(&catalog);
            let acknowledged = Arc::clone(&acknowledged);
            let id = next_charge;
            tasks.push(tokio::spawn(async move {
                let mut writer = writer.lock().await;
                let at = now + TimeDelta::milliseconds(i64::try_from(id).unwrap_or(0));
                let (stream, expected, events) =
                    // Recorded by the real clock, as the store does: these are fresh events.
                    writer.try_seal(&catalog, &charge(id, id.is_multiple_of(4)), at, chrono::Utc::now())?;
                let outcome = store
                    .append(&stream, expected, events)
                    .await
                    .map_err(|error| error.to_string())?;
                let at = Clock::now();
                acknowledged
                    .lock()
                    .map_err(|_| "poisoned")?
                    .push((outcome.position, at));
                Ok::<(), String>(())
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    let achieved = next_charge as f64 / started.elapsed().as_secs_f64();
    let head = store.head_position().await?.unwrap_or(0);
    views.wait_for(head, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    watcher.abort();
    projectors.stop().await?;

    let visible = visible.lock().map_err(|_| "poisoned")?.clone();
    let acknowledged = acknowledged.lock().map_err(|_| "poisoned")?.clone();
    let mut lags: Vec<f64> = acknowledged
        .iter()
        .map(|(position, acked_at)| {
            // The first moment all views had reached the position.
            let index = visible.partition_point(|(reached, _)| reached < position);
            let seen_at = visible.get(index).map_or(*acked_at, |(_, at)| *at);
            seen_at.saturating_duration_since(*acked_at).as_secs_f64() * 1_000.0
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    Ok((percentile(&lags, 0.50), percentile(&lags, 0.99), achieved))
}

/// Records (min position of the three views, when) at every change.
async fn watch_visible(views: Views, visible: Arc<Mutex<Vec<(u64, Clock)>>>) {
    let mut balance = views.balance.watch_position();
    let mut trials = views.trial_usage.watch_position();
    let mut tier = views.tier.watch_position();
    loop {
        tokio::select! {
            _ = balance.changed() => {}
            _ = trials.changed() => {}
            _ = tier.changed() => {}
        }
        let at = Clock::now();
        let Some(position) = views.position() else {
            continue;
        };
        if let Ok(mut visible) = visible.lock() {
            if visible.last().is_none_or(|(last, _)| *last < position) {
                visible.push((position, at));
            }
        }
    }
}

fn main() -> BenchResult<()> {
    let events = env_number("BENCH_EVENTS", 1_000_000)?;
    let accounts = usize::try_from(env_number("BENCH_ACCOUNTS", 10_000)?)?;
    let runs = env_number("BENCH_RUNS", 3)?.max(1);
    let live_rate = env_number("BENCH_LIVE_RATE", 10_000)?;
    let live_seconds = env_number("BENCH_LIVE_SECS", 10)?;
    let live_runs = env_number("BENCH_LIVE_RUNS", 3)?;
    let dir = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (store, path) = catch_up_store(events, accounts).await?;
        println!(
            "catch-up from zero: {events} events, {accounts} accounts, store {}; median of {runs} runs",
            path.display()
        );
        println!();
        println!("| what | events/s | time for {events} events |");
        println!("|---|---:|---:|");
        let mut baseline = Vec::new();
        let mut all = Vec::new();
        let mut balance = Vec::new();
        let only = std::env::var("BENCH_CATCH_UP").unwrap_or_else(|_| "baseline,all,balance".into());
        // Interleaved, so that drift of the machine affects every side alike.
        for _ in 0..runs {
            if only.contains("baseline") {
                baseline.push(read_and_decode(&store, events).await?);
            }
            if only.contains("all") {
                all.push(catch_up(&store, &dir, ViewSelection::All, events).await?);
            }
            if only.contains("balance") {
                balance.push(catch_up(&store, &dir, "balance".parse()?, events).await?);
            }
        }
        for (what, samples) in [
            ("baseline: read_all + decode, nothing applied", baseline),
            ("projector, all three views", all),
            ("projector, balance view only", balance),
        ] {
            if samples.is_empty() {
                continue;
            }
            let rate = median(samples);
            println!("| {what} | {rate:.0} | {:.2} s |", events as f64 / rate);
        }
        if live_runs == 0 {
            return Ok(());
        }
        println!();
        println!(
            "live lag: {live_rate} charges/s for {live_seconds} s on 1,000 accounts, embedded \
             projectors (all three views); visible in all views minus append acknowledged; \
             medians of {live_runs} runs"
        );
        println!();
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut rates = Vec::new();
        for _ in 0..live_runs {
            let (p50, p99, achieved) = live_run(&dir, live_rate, live_seconds, 1_000).await?;
            eprintln!("  run: p50 {p50:.2} ms, p99 {p99:.2} ms, {achieved:.0} charges/s");
            p50s.push(p50);
            p99s.push(p99);
            rates.push(achieved);
        }
        println!("| achieved charges/s | lag p50 | lag p99 |");
        println!("|---:|---:|---:|");
        println!(
            "| {:.0} | {:.2} ms | {:.2} ms |",
            median(rates),
            median(p50s),
            median(p99s)
        );
        Ok(())
    })
}
