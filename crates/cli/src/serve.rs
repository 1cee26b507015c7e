//! `ledger serve`, `ledger project` and `ledger schedule`: wiring the store, the catalog,
//! the tokens, the projectors, the scheduler and the HTTP server, with graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::store as store_target;
use anyhow::{anyhow, Context};
use ledger_domain::Catalog;
use ledger_service::api::{router, AppState};
use ledger_service::clock::SystemClock;
use ledger_service::ledger::Ledger;
use ledger_service::metrics::Metrics;
use ledger_service::stripe::Secrets;
use ledger_service::tokens::Tokens;
use ledger_service::views::ReadModel;
use ledger_store::EventStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::info;

use crate::{alerts, views};
use ledger_projector::{ViewName, ViewSelection};
use ledger_service::alerts::guard::Guard;

use crate::{ProjectorMode, StoreArgs};

/// The catalog from `--catalog`, or the one shipped with the ledger.
pub fn load_catalog(path: Option<&Path>) -> anyhow::Result<Catalog> {
    match path {
        None => Ok(Catalog::shipped()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read catalog {}", path.display()))?;
            Catalog::from_json(&text).with_context(|| format!("invalid catalog {}", path.display()))
        }
    }
}

/// Opens the store named by the flags; `create` makes the data directory if needed.
pub async fn open_store(args: &StoreArgs, create: bool) -> anyhow::Result<Arc<dyn EventStore>> {
    let target = store_target::parse_target(args.store.as_deref(), &args.data)?;
    if let store_target::StoreTarget::Sqlite(path) = &target {
        if !create && !path.exists() {
            return Err(anyhow!(
                "no ledger data at {} (start `ledger serve` first, or pass --data)",
                path.display()
            ));
        }
    }
    if create {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("cannot create data directory {}", args.data.display()))?;
    }
    Ok(store_target::open(&target).await?)
}

/// Read-only views for tools (reconcile): the files the projectors wrote.
pub async fn read_views(
    args: &StoreArgs,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<Arc<dyn ReadModel>> {
    views::follow(&args.data, store).await
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn terminated() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

fn shutdown_signal() -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        let _ = sender.send(true);
    });
    receiver
}

pub(crate) async fn until_true(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// Asks our own `/healthz` until it answers 200, so "listening" is only logged when true.
async fn wait_healthy(addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let request =
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).await.is_ok() {
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).await.is_ok() && head.ends_with(b"200") {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

pub async fn serve(
    store_args: StoreArgs,
    listen: String,
    catalog: Option<PathBuf>,
    mode: ProjectorMode,
    scheduler: bool,
) -> anyhow::Result<ExitCode> {
    init_tracing();
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:8080"))?;
    let catalog = Arc::new(load_catalog(catalog.as_deref())?);
    let limits = crate::http::Limits::from_env()?;
    // Bind before touching the data directory: a busy port should change nothing.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let store = open_store(&store_args, true).await?;
    let tokens = match std::env::var("LEDGER_TOKENS") {
        Ok(spec) if !spec.trim().is_empty() => Tokens::parse(&spec)?,
        _ => {
            let (tokens, path, created) = Tokens::load_or_generate(&store_args.data)?;
            let verb = if created { "generated" } else { "using" };
            println!("{verb} API tokens in {}", path.display());
            tokens
        }
    };
    let shutdown = shutdown_signal();
    let ledger = Ledger::new(store.clone(), catalog, Arc::new(SystemClock));
    let (read_model, background) = match mode {
        ProjectorMode::Embedded => {
            views::embedded(
                &store_args.data,
                store.clone(),
                until_true(shutdown.clone()),
            )
            .await?
        }
        ProjectorMode::External => (
            views::follow(&store_args.data, store.clone()).await?,
            Vec::new(),
        ),
    };
    let mut tasks = background;
    let mut outbox = None;
    if mode == ProjectorMode::Embedded && scheduler {
        let scheduler = ledger_service::scheduler::run(
            ledger.clone(),
            read_model.clone(),
            until_true(shutdown.clone()),
        );
        tasks.push(tokio::spawn(scheduler));
        // Alerts run where the scheduler runs: one node per cluster, so a receiver is not
        // sent each notification once per node.
        outbox = Some(alerts::start(
            &store_args.data,
            store.clone(),
            &shutdown,
            &mut tasks,
        )?);
    }
    let stripe = std::env::var("LEDGER_STRIPE_WEBHOOK_SECRETS")
        .ok()
        .and_then(|spec| Secrets::parse(&spec));
    if stripe.is_none() {
        info!("no LEDGER_STRIPE_WEBHOOK_SECRETS: POST /v1/billing/stripe answers 404");
    }
    let state = AppState::with_alerts(
        ledger,
        read_model,
        Arc::new(tokens),
        Metrics::new(),
        stripe,
        outbox.map(|outbox| outbox as Arc<dyn ledger_service::alerts::Outbox>),
        Guard::from_env(),
    );
    let bound = listener.local_addr()?;
    let app = router(state);
    let stop = until_true(shutdown.clone());
    // Graceful: on SIGTERM stop accepting, let requests in flight finish, then return.
    let server = tokio::spawn(crate::http::serve(listener, app, limits, stop));
    if wait_healthy(bound).await {
        info!(%bound, "listening on {bound}");
        println!("listening on {bound}");
    }
    let served = server.await.context("server task failed")?;
    served.context("server failed")?;
    for task in tasks {
        let _ = task.await;
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn project(store_args: StoreArgs, view: ViewSelection) -> anyhow::Result<ExitCode> {
    init_tracing();
    let store = open_store(&store_args, true).await?;
    let shutdown = shutdown_signal();
    views::run_projectors(&store_args.data, store, view, until_true(shutdown)).await?;
    Ok(ExitCode::SUCCESS)
}

/// `ledger project --rebuild VIEW`: rebuilds one view beside the live file and switches over,
/// then exits. SIGTERM stops it cleanly; the live file is untouched until the switch.
pub async fn rebuild(store_args: StoreArgs, view: ViewName) -> anyhow::Result<ExitCode> {
    init_tracing();
    let store = open_store(&store_args, false).await?;
    let shutdown = shutdown_signal();
    let report = views::rebuild(&store_args.data, store, view, until_true(shutdown)).await?;
    println!(
        "rebuilt {}: {} events, {} rows, at position {}",
        report.view,
        report.events_applied,
        report.rows,
        report
            .position
            .map_or_else(|| "none".to_string(), |position| position.to_string())
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn schedule(store_args: StoreArgs, catalog: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_tracing();
    let catalog = Arc::new(load_catalog(catalog.as_deref())?);
    let store = open_store(&store_args, true).await?;
    let read_model = views::follow(&store_args.data, store.clone()).await?;
    let ledger = Ledger::new(store, catalog, Arc::new(SystemClock));
    let shutdown = shutdown_signal();
    info!("scheduler running");
    ledger_service::scheduler::run(ledger, read_model, until_true(shutdown)).await;
    Ok(ExitCode::SUCCESS)
}
