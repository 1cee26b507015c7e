//! `ledger`: the one binary. `serve` runs the HTTP API with its projectors and scheduler,
//! `project` and `schedule` run those as separate processes, `explain` and `audit` serve
//! support and finance from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ledger_projector::{ViewName, ViewSelection};

mod alerts;
mod audit;
mod explain_table;
mod http;
mod serve;
mod store;
mod views;

// jemalloc: the domain allocates small strings on every command, and the system allocator's
// free-list handling cost a third of the throughput in the domain benchmark. mimalloc was
// as fast, but a node that had served the ten-minute soak held 32% more memory than a node
// started afresh on the same history; with jemalloc's background purging, 3.5-12% (issue 15).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Threads the async runtime may start for blocking work, at most.
const BLOCKING_THREADS_MAX: usize = 32;

#[derive(Debug, Parser)]
#[command(name = "ledger", version, about = "The Knouds credit ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

/// Where the data lives and which store holds the events.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Data directory: the embedded event store, the views and the generated tokens.
    #[arg(long, default_value = "./ledger-data", env = "LEDGER_DATA")]
    pub data: PathBuf,
    /// Event store URL: postgres://user@host:5432/db (several nodes share one database),
    /// esdb://host:2113[,host:2113...], kurrentdb://..., or sqlite://PATH.
    /// Default: the embedded SQLite file in the data directory.
    #[arg(long, env = "LEDGER_STORE")]
    pub store: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProjectorMode {
    /// Projectors and the scheduler run inside `serve`.
    Embedded,
    /// Separate `ledger project` / `ledger schedule` processes write the views; `serve` reads
    /// their files.
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditAction {
    /// Every event of every account in global order.
    Export,
    /// Hash chains, version gaps, decodability: of the store, or of an export file with
    /// `--file` (no store needed).
    Verify,
    /// Replays every stream and compares with the views.
    Reconcile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the HTTP API.
    ///
    /// Stripe: set LEDGER_STRIPE_WEBHOOK_SECRETS to the endpoint's signing secret (whsec_...;
    /// several, comma-separated, while one is rotated) and point a Stripe webhook endpoint at
    /// https://YOUR-HOST/v1/billing/stripe with these events enabled:
    /// customer.subscription.created, customer.subscription.updated,
    /// customer.subscription.deleted, invoice.paid, checkout.session.completed,
    /// checkout.session.async_payment_succeeded and charge.refunded. Without secrets the
    /// route answers 404.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "LEDGER_LISTEN")]
        listen: String,
        /// Catalog JSON file (default: the catalog shipped with the ledger).
        #[arg(long, env = "LEDGER_CATALOG")]
        catalog: Option<PathBuf>,
        /// Run projectors and the scheduler inside this process, or read views written by
        /// separate processes.
        #[arg(long, value_enum, default_value = "embedded")]
        projectors: ProjectorMode,
        /// Run no scheduler in this process: in a cluster one `ledger schedule` (or one node)
        /// turns time into events for everybody. Several schedulers are safe, only wasteful.
        #[arg(long)]
        no_scheduler: bool,
    },
    /// Run projectors as a separate process.
    Project {
        #[command(flatten)]
        store: StoreArgs,
        /// balance, trial-usage, tier or all.
        #[arg(long, default_value = "all")]
        view: ViewSelection,
        /// Rebuild one view (balance, trial-usage or tier) from the first event beside the
        /// live file, switch over atomically, and exit. The live file keeps serving, and
        /// stays as it was if the rebuild is interrupted; run it again to finish.
        #[arg(long, value_name = "VIEW", conflicts_with = "view")]
        rebuild: Option<ViewName>,
    },
    /// Run the scheduler (refreshes, expiries, hold timeouts) as a separate process.
    Schedule {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, env = "LEDGER_CATALOG")]
        catalog: Option<PathBuf>,
    },
    /// Explain an account's balance: every event, the buckets, running totals.
    Explain {
        account: String,
        /// As of this instant (RFC 3339; default now; not later than now).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, env = "LEDGER_CATALOG")]
        catalog: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export, verify or reconcile the event history.
    Audit {
        #[arg(value_enum)]
        action: AuditAction,
        #[command(flatten)]
        store: StoreArgs,
        /// Only events recorded at or after this instant (export).
        #[arg(long)]
        since: Option<String>,
        /// Only events recorded before this instant (export).
        #[arg(long)]
        until: Option<String>,
        /// The export's format (default jsonl); with `verify --file`, the file's format
        /// (default: detected from its content).
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
        /// Verify this export file (jsonl or csv) instead of the store; no data directory
        /// is opened.
        #[arg(long, value_name = "EXPORT")]
        file: Option<PathBuf>,
    },
}

/// Turns transparent huge pages off for this process, before the heap grows.
///
/// Where the kernel backs the heap with 2 MiB pages (THP set to `always`, or an allocator
/// that advises `MADV_HUGEPAGE`, as mimalloc did here), a whole 2 MiB page stays resident
/// where a few kB are in use: in the short soak, a node started afresh held 47.6 MB of
/// anonymous memory with them and 15.8 MB without. The ledger's heap is many small objects,
/// so fewer TLB misses buy it nothing measurable: charges over HTTP ran as fast without them
/// (issue 15's note, 2026-11-28).
fn huge_pages_off() {
    #[cfg(target_os = "linux")]
    if let Err(err) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("ledger: warning: cannot turn transparent huge pages off ({err}); the heap may use more memory");
    }
}

fn main() -> ExitCode {
    huge_pages_off();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = err.print();
                return ExitCode::from(2);
            }
            // One clear line: clap's first line names the problem; usage is one --help away.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "ledger: {} (see ledger --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work (store reads, view loads) is bounded by its own pools; the cap keeps a
        // burst from growing the process by hundreds of threads instead of queueing.
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ledger: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(err) => {
            // One clear line: the chain of causes, joined.
            eprintln!("ledger: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Serve {
            store,
            listen,
            catalog,
            projectors,
            no_scheduler,
        } => serve::serve(store, listen, catalog, projectors, !no_scheduler).await,
        Commands::Project {
            store,
            rebuild: Some(view),
            ..
        } => serve::rebuild(store, view).await,
        Commands::Project { store, view, .. } => serve::project(store, view).await,
        Commands::Schedule { store, catalog } => serve::schedule(store, catalog).await,
        Commands::Explain {
            account,
            at,
            store,
            catalog,
            json,
        } => audit::explain(account, at, store, catalog, json).await,
        Commands::Audit {
            action,
            store,
            since,
            until,
            format,
            file,
        } => match file {
            Some(file) => audit::verify_file(action, &file, format, since, until),
            None => audit::audit(action, store, since, until, format).await,
        },
    }
}
