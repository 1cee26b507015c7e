//! A standalone projector over a SQLite event store file: `ledger project` without the rest
//! of the CLI. The kill test runs it as a child process and SIGKILLs it at random moments.
//!
//! Usage: `ledger-projector --store FILE --data DIR [--view balance|trial-usage|tier|all]
//! [--batch N]` (`--batch`: most events per batch, live or catching up). Stops cleanly on
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ledger_projector::{run, ProjectorConfig, ViewSelection};
use ledger_store_sqlite::SqliteStore;

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
    let mut args = std::env::args().skip(1);
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("ledger-projector: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledger-projector: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(project(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ledger-projector: {message}");
            ExitCode::FAILURE
        }
    }
}
