//! The projector as a child process, for the kill test: the test binary runs itself again
//! with `--exact child::projector_child --ignored` and the projector's arguments in
//! [`CHILD_ARGS`] (one a line: `--store FILE --data DIR [--view V] [--batch N]`). It runs
//! until killed, or stops cleanly on SIGTERM or Ctrl-C. Living in the tests keeps a harness
//! binary (and its SQLite store) out of the library crate.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use ledger_projector::{run, ProjectorConfig, ViewSelection};
use ledger_store_sqlite::SqliteStore;

/// The environment variable that carries the child's arguments; unset, the child test does
/// nothing, so a plain `cargo test -- --ignored` passes it.
pub const CHILD_ARGS: &str = "LEDGER_PROJECTOR_CHILD_ARGS";

/// A command that runs this test binary as a projector with `args`.
pub fn projector_command(args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "child::projector_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ARGS, args.join("\n"));
    command
}

struct Args {
    store: PathBuf,
    data: PathBuf,
    view: ViewSelection,
    config: ProjectorConfig,
}

fn parse_args() -> Result<Args, String> {
    let mut store = None;
    let mut data = None;
    let mut view = ViewSelection::All;
    let mut config = ProjectorConfig::default();
    let joined = std::env::var(CHILD_ARGS).unwrap_or_default();
    let mut args = joined.lines().map(str::to_owned);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => store = Some(PathBuf::from(value()?)),
            "--data" => data = Some(PathBuf::from(value()?)),
            "--view" => view = value()?.parse().map_err(|error| format!("{error}"))?,
            "--batch" => {
                let events: usize = value()?
                    .parse()
                    .map_err(|_| "--batch needs a whole number".to_owned())?;
                config.batch_events_max = events;
                config.catch_up_batch_events_max = events;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        store: store.ok_or("--store FILE is required")?,
        data: data.ok_or("--data DIR is required")?,
        view,
        config,
    })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn project(args: Args) -> Result<(), String> {
    // Read-only: a projector never appends, and the writer may be another process.
    let store = SqliteStore::open_read_only(&args.store).map_err(|error| error.to_string())?;
    run(
        Arc::new(store),
        &args.data,
        args.view,
        args.config,
        shutdown_signal(),
    )
    .await
    .map_err(|error| error.to_string())
}

#[test]
#[ignore = "runs only as the kill test's child process"]
fn projector_child() {
    if std::env::var_os(CHILD_ARGS).is_none() {
        return;
    }
    let args = parse_args().unwrap_or_else(|message| panic!("projector child: {message}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the projector child's runtime");
    if let Err(message) = runtime.block_on(project(args)) {
        panic!("projector child: {message}");
    }
}
