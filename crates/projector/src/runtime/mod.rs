//! Starting, supervising, rebuilding and stopping projectors.
//!
//! A [`Projectors`] runs the selected views against one store and one data directory: one
//! reader task (the subscription, from the lowest checkpoint of the views) feeding one thread
//! per view, a task refreshing the store's head position for the lag metrics, and a
//! supervisor that stops everything if any part fails. The same code runs inside
//! `ledger serve` ([`spawn_embedded`]) and as a separate process ([`run`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use ledger_domain::state::{Balance, PlanState, Trials};
use ledger_domain::usage::Usage;
use ledger_store::{EventStore, GlobalPosition};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::error::ProjectorError;
use crate::feeder::{feed, Feed, FeedTarget, CHUNK_EVENTS_MAX};
use crate::handle::{ViewHandle, Views};
use crate::metrics::{HeadPosition, ViewMetrics};
use crate::projection::{
    BalanceView, Projection, TierView, TrialUsageView, UsageView, ViewName, ViewSelection,
};
use crate::storage::{remove_database, shadow_path, view_path, views_dir, ViewFile, WriterLock};
use crate::worker::{
    run_live, run_shadow, Batching, Capacity, Inbox, Input, RebuildReport, SwitchContext,
    ViewWorker,
};

mod rebuild;

use rebuild::rebuild;

/// Tuning of a projector. The defaults suit both catching up and following live appends.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most events applied in one batch (one transaction) while following the head.
    pub batch_events_max: usize,
    /// A batch closes once no event has arrived for this long.
    pub batch_idle: Duration,
    /// A batch closes at the latest this long after its first event; bounds the lag under a
    /// steady stream, where the feed is never idle.
    pub batch_delay_max: Duration,
    /// Events recorded longer ago than this are history: they are caught up on in large
    /// batches (each row changed in a batch is written once, so large batches write far less
    /// per event), and freshness does not suffer, since such events are stale already. Keep
    /// it well above the clock difference between the hosts appending and projecting.
    pub catch_up_age: Duration,
    /// Most events in one batch while catching up.
    pub catch_up_batch_events_max: usize,
    /// Longest batch while catching up; the views are published at least this often.
    pub catch_up_batch_delay_max: Duration,
    /// Events buffered between the reader and each view thread.
    pub channel_events_max: usize,
    /// How often the store's head position is asked for, for the lag metrics.
    pub head_refresh: Duration,
    /// Longest pause between attempts to reach an unavailable store.
    pub retry_delay_max: Duration,
    /// How long a rebuild's switch-over waits for readers of other processes to let go of
    /// the view file.
    pub switch_busy_timeout: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_events_max: 2_000,
            batch_idle: Duration::from_millis(2),
            batch_delay_max: Duration::from_millis(10),
            catch_up_age: Duration::from_millis(500),
            catch_up_batch_events_max: 200_000,
            catch_up_batch_delay_max: Duration::from_millis(1_000),
            channel_events_max: 16_384,
            head_refresh: Duration::from_millis(200),
            retry_delay_max: Duration::from_secs(5),
            switch_busy_timeout: Duration::from_secs(10),
        }
    }
}

impl ProjectorConfig {
    fn batching(&self, head: &Arc<HeadPosition>) -> Batching {
        Batching {
            head: Arc::clone(head),
            events_max: self.batch_events_max.max(1),
            idle: self.batch_idle,
            delay_max: self.batch_delay_max,
            catch_up_events_max: self
                .catch_up_batch_events_max
                .max(self.batch_events_max)
                .max(1),
            catch_up_delay_max: self.catch_up_batch_delay_max.max(self.batch_delay_max),
            catch_up_age: self.catch_up_age,
        }
    }

    /// Chunks of events a view's channel holds.
    fn channel_chunks(&self) -> usize {
        (self.channel_events_max / CHUNK_EVENTS_MAX).max(2)
    }
}

/// The handles of the views a projector runs.
#[derive(Debug, Clone, Default)]
pub struct ViewHandles {
    pub balance: Option<ViewHandle<Balance>>,
    pub trial_usage: Option<ViewHandle<Trials>>,
    pub tier: Option<ViewHandle<PlanState>>,
    pub usage: Option<ViewHandle<Usage>>,
}

impl ViewHandles {
    /// All three as [`Views`], if this projector runs all three.
    pub fn views(&self) -> Option<Views> {
        Some(Views {
            balance: self.balance.clone()?,
            trial_usage: self.trial_usage.clone()?,
            tier: self.tier.clone()?,
            usage: self.usage.clone()?,
        })
    }

    pub fn metrics(&self) -> Vec<ViewMetrics> {
        let mut metrics = Vec::with_capacity(ViewName::ALL.len());
        if let Some(handle) = &self.balance {
            metrics.push(handle.metrics());
        }
        if let Some(handle) = &self.trial_usage {
            metrics.push(handle.metrics());
        }
        if let Some(handle) = &self.tier {
            metrics.push(handle.metrics());
        }
        if let Some(handle) = &self.usage {
            metrics.push(handle.metrics());
        }
        metrics
    }
}

/// A running view: where its live thread takes input.
struct Running {
    input: Sender<Input>,
}

/// What [`Projectors::rebuild`] needs.
struct Control {
    store: Arc<dyn EventStore>,
    data_dir: PathBuf,
    config: ProjectorConfig,
    handles: ViewHandles,
    running: BTreeMap<ViewName, Running>,
    stop: watch::Receiver<bool>,
}

/// Running projectors. Dropping this value stops them (without waiting); prefer
/// [`Projectors::stop`], which commits what is pending and waits.
#[derive(Debug)]
pub struct Projectors {
    control: Arc<ControlDebug>,
    stop: watch::Sender<bool>,
    supervisor: Option<JoinHandle<Result<(), ProjectorError>>>,
}

/// `Control` behind a `Debug` impl that shows only what is useful.
struct ControlDebug(Control);

impl std::fmt::Debug for ControlDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projectors")
            .field("data_dir", &self.0.data_dir)
            .field("views", &self.0.running.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for Projectors {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Runs a loaded view's live thread.
type StartView = Box<
    dyn FnOnce(
            mpsc::Receiver<Input>,
            Capacity,
            Batching,
            SwitchContext,
        ) -> Result<(), ProjectorError>
        + Send,
>;

/// Answers once a view's thread has ended, with its result.
type ThreadDone = oneshot::Receiver<Result<(), ProjectorError>>;

/// One view, loaded and ready to run.
struct Loaded {
    view: ViewName,
    position: Option<GlobalPosition>,
    path: PathBuf,
    start: StartView,
    _lock: WriterLock,
}

/// Opens (or creates) a view's file, takes its writer lock and loads its rows.
fn load_view<P: Projection>(
    data_dir: &Path,
    handle: ViewHandle<P::Row>,
) -> Result<Loaded, ProjectorError> {
    let lock = WriterLock::acquire(data_dir, P::VIEW)?;
    let path = view_path(data_dir, P::VIEW);
    // A rebuild killed before its switch-over leaves its file behind; it is of no use.
    remove_database(&shadow_path(&path))?;
    let (file, checkpoint) = ViewFile::open(&path, P::VIEW, P::ROW_FORMAT)?;
    let position = checkpoint.position;
    let worker = ViewWorker::<P>::load(file, checkpoint, Some(handle))?;
    tracing::info!(view = %P::VIEW, position = ?position, rows = worker.rows(), "view loaded");
    Ok(Loaded {
        view: P::VIEW,
        position,
        path,
        start: Box::new(move |inputs, capacity, batching, switch| {
            run_live(worker, Inbox::new(inputs, capacity), batching, switch)
        }),
        _lock: lock,
    })
}

impl Projectors {
    /// Loads the selected views from `data_dir/views/` (creating missing files), then starts
    /// projecting from their checkpoints. Returns once the views are loaded and serving.
    pub async fn start(
        store: Arc<dyn EventStore>,
        data_dir: &Path,
        which: ViewSelection,
        config: ProjectorConfig,
    ) -> Result<Projectors, ProjectorError> {
        let head = Arc::new(HeadPosition::default());
        let views = Views::empty(Arc::clone(&head));
        let handles = ViewHandles {
            balance: which
                .contains(ViewName::Balance)
                .then(|| views.balance.clone()),
            trial_usage: which
                .contains(ViewName::TrialUsage)
                .then(|| views.trial_usage.clone()),
            tier: which.contains(ViewName::Tier).then(|| views.tier.clone()),
            usage: which.contains(ViewName::Usage).then(|| views.usage.clone()),
        };
        let directory = views_dir(data_dir);
        std::fs::create_dir_all(&directory)
            .map_err(|error| ProjectorError::io(&directory, error))?;

        let loading_dir = data_dir.to_owned();
        let loading = handles.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Vec<Loaded>, ProjectorError> {
            let mut loaded = Vec::new();
            if let Some(handle) = loading.balance {
                loaded.push(load_view::<BalanceView>(&loading_dir, handle)?);
            }
            if let Some(handle) = loading.trial_usage {
                loaded.push(load_view::<TrialUsageView>(&loading_dir, handle)?);
            }
            if let Some(handle) = loading.tier {
                loaded.push(load_view::<TierView>(&loading_dir, handle)?);
            }
            if let Some(handle) = loading.usage {
                loaded.push(load_view::<UsageView>(&loading_dir, handle)?);
            }
            Ok(loaded)
        })
        .await
        .map_err(|error| ProjectorError::Stopped(format!("loading the views failed: {error}")))??;

        let store_head = store.head_position().await?;
        if let Some(head_position) = store_head {
            head.observe(head_position);
        }
        for view in &loaded {
            if let Some(position) = view.position {
                if store_head.is_none_or(|head| position > head) {
                    return Err(ProjectorError::AheadOfStore {
                        view: view.view,
                        position,
                        head: store_head
                            .map_or_else(|| "empty".to_owned(), |head| head.to_string()),
                        path: view.path.clone(),
                    });
                }
            }
        }
        // One subscription for all views, from the one furthest behind; the others skip
        // what they already have.
        let after = loaded.iter().map(|view| view.position).min().flatten();

        let (stop, stop_receiver) = watch::channel(false);
        let runtime = tokio::runtime::Handle::current();
        let mut targets = Vec::new();
        let mut running = BTreeMap::new();
        let mut threads = Vec::new();
        for view in loaded {
            let (input, inputs) = mpsc::channel();
            let capacity = Arc::new(Semaphore::new(config.channel_chunks()));
            targets.push(FeedTarget::new(input.clone(), Arc::clone(&capacity)));
            running.insert(view.view, Running { input });
            let switch = SwitchContext {
                store: Arc::clone(&store),
                runtime: runtime.clone(),
                busy_timeout: config.switch_busy_timeout,
            };
            let batching = config.batching(&head);
            let (done, finished) = oneshot::channel();
            let Loaded {
                view: name,
                start,
                _lock: lock,
                ..
            } = view;
            std::thread::Builder::new()
                .name(format!("projector-{name}"))
                .spawn(move || {
                    let result = start(inputs, Capacity(capacity), batching, switch);
                    // The lock outlives the last write.
                    drop(lock);
                    let _ = done.send(result);
                })
                .map_err(|error| {
                    ProjectorError::Stopped(format!(
                        "cannot start the {name} view's thread: {error}"
                    ))
                })?;
            threads.push((name, finished));
        }

        let reader = tokio::spawn(feed(Feed {
            store: Arc::clone(&store),
            after,
            targets,
            head: Arc::clone(&head),
            stop: stop_receiver.clone(),
            retry_delay_max: config.retry_delay_max,
        }));
        let refresher = tokio::spawn(refresh_head(
            Arc::clone(&store),
            Arc::clone(&head),
            config.head_refresh,
            stop_receiver.clone(),
        ));
        let inputs: Vec<Sender<Input>> = running.values().map(|view| view.input.clone()).collect();
        let supervisor = tokio::spawn(supervise(reader, refresher, threads, inputs, stop.clone()));
        Ok(Projectors {
            control: Arc::new(ControlDebug(Control {
                store,
                data_dir: data_dir.to_owned(),
                config,
                handles,
                running,
                stop: stop_receiver,
            })),
            stop,
            supervisor: Some(supervisor),
        })
    }

    /// The handles of the views this projector runs.
    pub fn handles(&self) -> &ViewHandles {
        &self.control.0.handles
    }

    /// All four views, if this projector runs all four.
    pub fn views(&self) -> Option<Views> {
        self.control.0.handles.views()
    }

    /// Metrics of the views this projector runs.
    pub fn metrics(&self) -> Vec<ViewMetrics> {
        self.control.0.handles.metrics()
    }

    /// Rebuilds `view` from position zero side by side: a fresh file is built while the
    /// current one keeps serving, and once it has caught up the in-memory view and the file
    /// are switched over to it (the file by an atomic rename), with no moment where queries
    /// see an empty view. Returns when the switch-over is done.
    pub async fn rebuild(&self, view: ViewName) -> Result<RebuildReport, ProjectorError> {
        let control = &self.control.0;
        let running = control
            .running
            .get(&view)
            .ok_or(ProjectorError::NotRunning(view))?;
        match view {
            ViewName::Balance => {
                let handle = control
                    .handles
                    .balance
                    .clone()
                    .ok_or(ProjectorError::NotRunning(view))?;
                rebuild::<BalanceView>(control, running, handle).await
            }
            ViewName::TrialUsage => {
                let handle = control
                    .handles
                    .trial_usage
                    .clone()
                    .ok_or(ProjectorError::NotRunning(view))?;
                rebuild::<TrialUsageView>(control, running, handle).await
            }
            ViewName::Tier => {
                let handle = control
                    .handles
                    .tier
                    .clone()
                    .ok_or(ProjectorError::NotRunning(view))?;
                rebuild::<TierView>(control, running, handle).await
            }
            ViewName::Usage => {
                let handle = control
                    .handles
                    .usage
                    .clone()
                    .ok_or(ProjectorError::NotRunning(view))?;
                rebuild::<UsageView>(control, running, handle).await
            }
        }
    }

    /// Whether the projectors have ended (by [`Projectors::stop`] or a failure).
    pub fn is_finished(&self) -> bool {
        self.supervisor
            .as_ref()
            .is_none_or(|supervisor| supervisor.is_finished())
    }

    /// Waits until the projectors end by themselves, which they only do on a failure.
    pub async fn wait(&mut self) -> Result<(), ProjectorError> {
        match self.supervisor.as_mut() {
            Some(supervisor) => {
                let result = supervisor.await;
                self.supervisor = None;
                joined(result)
            }
            None => Err(ProjectorError::Stopped(
                "the projectors already ended".into(),
            )),
        }
    }

    /// Stops reading, commits what each view has pending, and waits for the threads to end.
    pub async fn stop(mut self) -> Result<(), ProjectorError> {
        self.stop.send_replace(true);
        match self.supervisor.take() {
            Some(supervisor) => joined(supervisor.await),
            None => Ok(()),
        }
    }
}

fn joined(
    result: Result<Result<(), ProjectorError>, tokio::task::JoinError>,
) -> Result<(), ProjectorError> {
    result.map_err(|error| {
        ProjectorError::Stopped(format!("the projector supervisor failed: {error}"))
    })?
}

/// Waits for any part to end or for the stop signal; then stops the rest in order (reader
/// first, so that each view commits everything it was given) and reports the first failure.
async fn supervise(
    mut reader: JoinHandle<Result<(), ProjectorError>>,
    refresher: JoinHandle<()>,
    threads: Vec<(ViewName, ThreadDone)>,
    inputs: Vec<Sender<Input>>,
    stop: watch::Sender<bool>,
) -> Result<(), ProjectorError> {
    let mut stop_receiver = stop.subscribe();
    let mut threads: Vec<_> = threads
        .into_iter()
        .map(|(view, finished)| (view, Some(finished)))
        .collect();
    let mut first_error: Option<ProjectorError> = None;
    let mut reader_done = false;
    {
        let any_thread = futures_select_threads(&mut threads);
        tokio::pin!(any_thread);
        tokio::select! {
            _ = stop_receiver.wait_for(|stop| *stop) => {}
            result = &mut reader => {
                reader_done = true;
                if let Err(error) = flatten_join(result, "reader") {
                    first_error = Some(error);
                }
            }
            (view, result) = &mut any_thread => {
                if let Err(error) = result {
                    tracing::error!(%view, %error, "a view projector failed");
                    first_error = Some(error);
                }
            }
        }
    }
    stop.send_replace(true);
    if !reader_done {
        if let Err(error) = flatten_join(reader.await, "reader") {
            first_error.get_or_insert(error);
        }
    }
    refresher.abort();
    for input in &inputs {
        // A view thread that already ended has dropped its receiver; nothing to tell it.
        let _ = input.send(Input::Stop);
    }
    for (view, finished) in &mut threads {
        let Some(finished) = finished.take() else {
            continue;
        };
        match finished.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%view, %error, "a view projector failed");
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert(ProjectorError::Stopped(format!(
                    "the {view} view's thread ended without a result (it panicked)"
                )));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Resolves when the first view thread ends, taking its receiver out of `threads`.
async fn futures_select_threads(
    threads: &mut [(ViewName, Option<ThreadDone>)],
) -> (ViewName, Result<(), ProjectorError>) {
    std::future::poll_fn(|context| {
        for (view, finished) in threads.iter_mut() {
            let Some(receiver) = finished.as_mut() else {
                continue;
            };
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(receiver).poll(context) {
                *finished = None;
                let result = result.unwrap_or_else(|_| {
                    Err(ProjectorError::Stopped(format!(
                        "the {view} view's thread ended without a result (it panicked)"
                    )))
                });
                return std::task::Poll::Ready((*view, result));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn flatten_join(
    result: Result<Result<(), ProjectorError>, tokio::task::JoinError>,
    part: &str,
) -> Result<(), ProjectorError> {
    result
        .map_err(|error| ProjectorError::Stopped(format!("the projector {part} failed: {error}")))?
}

/// Keeps the head position fresh for the lag metrics, also while no event arrives.
async fn refresh_head(
    store: Arc<dyn EventStore>,
    head: Arc<HeadPosition>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match store.head_position().await {
            Ok(Some(position)) => head.observe(position),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "cannot read the store's head position"),
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs the selected views until `shutdown` resolves (then stops them cleanly) or one of
/// them fails. This is `ledger project`.
pub async fn run(
    store: Arc<dyn EventStore>,
    data_dir: &Path,
    which: ViewSelection,
    config: ProjectorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    let mut projectors = Projectors::start(store, data_dir, which, config).await?;
    tokio::select! {
        result = projectors.wait() => result,
        () = shutdown => projectors.stop().await,
    }
}

/// Starts all three views inside the calling process (`ledger serve` by default) and returns
/// them for the admission check, with the running projectors.
pub async fn spawn_embedded(
    store: Arc<dyn EventStore>,
    data_dir: &Path,
    config: ProjectorConfig,
) -> Result<(Views, Projectors), ProjectorError> {
    let projectors = Projectors::start(store, data_dir, ViewSelection::All, config).await?;
    let views = projectors
        .views()
        .ok_or_else(|| ProjectorError::Stopped("not every view was started".into()))?;
    Ok((views, projectors))
}
