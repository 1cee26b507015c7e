//! The runtime's paths: resuming from the checkpoint, the side-by-side rebuild and its
//! switch-over, views that follow another process's files, and every refusal (a second
//! writer, newer formats, foreign files, a store behind the views, missing events).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledger_projector::storage::{read_all_rows, view_path};
use ledger_projector::{
    FollowOptions, ProjectorConfig, ProjectorError, Projectors, ViewName, ViewSelection, Views,
};
use ledger_store::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};

use crate::support::*;

async fn append_workload(workload: &mut Workload, store: &dyn EventStore, appends: usize) {
    for _ in 0..appends {
        let append = workload.next_append();
        store
            .append(&append.stream, append.expected, append.events)
            .await
            .expect("append");
    }
}

async fn start(store: &Arc<ledger_store_sqlite::SqliteStore>, data: &Path) -> Projectors {
    Projectors::start(
        Arc::clone(store) as Arc<dyn EventStore>,
        data,
        ViewSelection::All,
        ProjectorConfig::default(),
    )
    .await
    .expect("projectors start")
}

fn file_id(data: &Path, view: ViewName) -> String {
    read_all_rows(&view_path(data, view), view)
        .expect("view file")
        .0
        .file_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_projector_resumes_from_its_checkpoint_and_applies_only_what_is_new() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    let mut workload = Workload::new(25, 7);
    append_workload(&mut workload, &*store, 400).await;
    let first_head = store.head_position().await.unwrap().unwrap();

    let projectors = start(&store, &data).await;
    caught_up(&projectors.views().unwrap(), &*store).await;
    projectors.stop().await.unwrap();

    append_workload(&mut workload, &*store, 300).await;
    let head = store.head_position().await.unwrap().unwrap();
    let projectors = start(&store, &data).await;
    let views = projectors.views().unwrap();
    // Loaded from the files before anything new is read.
    assert!(views.position() >= Some(first_head));
    caught_up(&views, &*store).await;
    assert_views_equal_fold(&views, &workload.writer);
    for metrics in projectors.metrics() {
        assert_eq!(
            metrics.events_applied,
            head - first_head,
            "{}",
            metrics.view
        );
        assert_eq!(metrics.position, Some(head));
        assert_eq!(metrics.lag_events, 0);
        assert_eq!(metrics.lag_ms, 0);
        assert!(metrics.batches >= 1);
        assert_eq!(metrics.stale_events_skipped, 0);
    }
    projectors.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_caught_up_on_in_large_batches_and_fresh_events_in_small_ones() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    let mut workload = Workload::new(10, 9);
    workload.writer.recorded_at = Some(at(T0));
    append_workload(&mut workload, &*store, 600).await;
    let history = store.head_position().await.unwrap().unwrap();
    let config = ProjectorConfig {
        batch_events_max: 10,
        catch_up_age: Duration::from_secs(60),
        ..ProjectorConfig::default()
    };
    let projectors = Projectors::start(
        Arc::clone(&store) as Arc<dyn EventStore>,
        &data,
        ViewSelection::All,
        config,
    )
    .await
    .unwrap();
    let views = projectors.views().unwrap();
    caught_up(&views, &*store).await;
    let batches: Vec<u64> = projectors.metrics().iter().map(|m| m.batches).collect();
    assert!(
        batches.iter().all(|batches| *batches <= 3),
        "{history} old events in a few large batches, not {batches:?}"
    );

    workload.writer.recorded_at = None;
    append_workload(&mut workload, &*store, 300).await;
    caught_up(&views, &*store).await;
    let fresh = store.head_position().await.unwrap().unwrap() - history;
    for (metrics, before) in projectors.metrics().iter().zip(batches) {
        assert!(
            metrics.batches - before >= fresh / 10,
            "{fresh} fresh events in batches of at most 10: {} batches",
            metrics.batches - before
        );
    }
    assert_views_equal_fold(&views, &workload.writer);
    projectors.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_switches_over_while_serving_and_appending_without_an_empty_moment() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    let mut workload = Workload::new(30, 11);
    append_workload(&mut workload, &*store, 2_000).await;
    let projectors = Arc::new(start(&store, &data).await);
    let views = projectors.views().unwrap();
    caught_up(&views, &*store).await;
    let accounts = views.balance.len();
    let watched = Workload::account_id(0);
    assert!(views.balance.get(&watched).is_some());
    let old_files: Vec<_> = ViewName::ALL.map(|view| file_id(&data, view)).to_vec();

    // Readers check every view all along that no account ever disappears.
    let rebuilding = Arc::new(AtomicBool::new(true));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let views = views.clone();
        let rebuilding = Arc::clone(&rebuilding);
        let reads = Arc::clone(&reads);
        let watched = watched.clone();
        tokio::task::spawn_blocking(move || {
            while rebuilding.load(Ordering::Relaxed) {
                assert!(views.account(&watched).is_some(), "an account vanished");
                assert!(views.balance.len() >= accounts, "the balance view shrank");
                assert!(views.tier.len() >= accounts, "the tier view shrank");
                assert!(views.trial_usage.len() >= accounts, "the trial view shrank");
                assert!(views.usage.len() >= accounts, "the usage view shrank");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // And events keep arriving while the rebuilds run.
    let appending = Arc::clone(&rebuilding);
    let appender_store = Arc::clone(&store);
    let appender = tokio::spawn(async move {
        while appending.load(Ordering::Relaxed) {
            append_workload(&mut workload, &*appender_store, 20).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        workload
    });

    let balance = {
        let projectors = Arc::clone(&projectors);
        tokio::spawn(async move { projectors.rebuild(ViewName::Balance).await })
    };
    // A second rebuild of the same view while the first runs is refused.
    while projectors.metrics()[0].rebuild.is_none() && !balance.is_finished() {
        tokio::task::yield_now().await;
    }
    let again = projectors.rebuild(ViewName::Balance).await;
    assert!(
        matches!(
            again,
            Err(ProjectorError::RebuildRunning(ViewName::Balance))
        ) || (balance.is_finished() && again.is_ok()),
        "{again:?}"
    );
    let report = balance.await.unwrap().expect("balance rebuild");
    assert!(
        report.events_applied > 0 && report.rows >= accounts,
        "{report:?}"
    );
    let report = projectors
        .rebuild(ViewName::Tier)
        .await
        .expect("tier rebuild");
    assert!(report.rows >= accounts);
    let report = projectors
        .rebuild(ViewName::TrialUsage)
        .await
        .expect("trial rebuild");
    assert!(report.rows >= accounts);
    let report = projectors
        .rebuild(ViewName::Usage)
        .await
        .expect("usage rebuild");
    assert!(report.rows >= accounts);

    rebuilding.store(false, Ordering::Relaxed);
    reader.await.expect("no reader saw an empty view");
    assert!(reads.load(Ordering::Relaxed) > 0);
    let workload = appender.await.unwrap();
    caught_up(&views, &*store).await;
    assert_views_equal_fold(&views, &workload.writer);
    for (view, old) in ViewName::ALL.into_iter().zip(old_files) {
        assert_ne!(file_id(&data, view), old, "{view}: the file was replaced");
    }
    for metrics in projectors.metrics() {
        assert_eq!(metrics.rebuild, None);
        assert_eq!(metrics.stale_events_skipped, 0);
    }
    // The switched-over views keep following.
    let mut workload = workload;
    append_workload(&mut workload, &*store, 200).await;
    caught_up(&views, &*store).await;
    assert_views_equal_fold(&views, &workload.writer);
    Arc::into_inner(projectors).unwrap().stop().await.unwrap();

    // The files equal a clean build from zero.
    let clean = dir.path().join("clean");
    let projectors = start(&store, &clean).await;
    caught_up(&projectors.views().unwrap(), &*store).await;
    projectors.stop().await.unwrap();
    for view in ViewName::ALL {
        assert!(file_rows(&data, view) == file_rows(&clean, view), "{view}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_following_files_see_what_the_projector_writes_and_survive_its_rebuild() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    // The follower starts before any file exists.
    let (followed, follower) = Views::follow_files(
        &data,
        FollowOptions {
            poll: Duration::from_millis(5),
            store: Some(Arc::clone(&store) as Arc<dyn EventStore>),
            ..FollowOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(followed.position(), None);
    let mut workload = Workload::new(15, 3);
    append_workload(&mut workload, &*store, 300).await;
    let projectors = start(&store, &data).await;
    caught_up(&followed, &*store).await;
    assert_views_equal_fold(&followed, &workload.writer);

    append_workload(&mut workload, &*store, 300).await;
    caught_up(&followed, &*store).await;
    assert_views_equal_fold(&followed, &workload.writer);

    // A rebuild replaces the files; the follower reloads them.
    projectors
        .rebuild(ViewName::Balance)
        .await
        .expect("rebuild");
    append_workload(&mut workload, &*store, 50).await;
    caught_up(&followed, &*store).await;
    assert_views_equal_fold(&followed, &workload.writer);
    let live = projectors.views().unwrap();
    assert_eq!(followed.balance.snapshot(), live.balance.snapshot());
    let head = store.head_position().await.unwrap();
    for metrics in followed.metrics() {
        assert_eq!(metrics.position, head);
        assert_eq!(metrics.lag_events, 0);
    }
    assert!(!follower.is_finished());
    projectors.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_projector_on_the_same_views_is_refused_until_the_first_stops() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    let first = start(&store, &data).await;
    let second = Projectors::start(
        Arc::clone(&store) as Arc<dyn EventStore>,
        &data,
        ViewSelection::One(ViewName::Tier),
        ProjectorConfig::default(),
    )
    .await;
    assert!(
        matches!(
            second,
            Err(ProjectorError::Locked {
                view: ViewName::Tier,
                ..
            })
        ),
        "{second:?}"
    );
    first.stop().await.unwrap();
    let single = Projectors::start(
        Arc::clone(&store) as Arc<dyn EventStore>,
        &data,
        ViewSelection::One(ViewName::Tier),
        ProjectorConfig::default(),
    )
    .await
    .unwrap();
    assert!(single.views().is_none());
    assert!(single.handles().tier.is_some() && single.handles().balance.is_none());
    assert!(matches!(
        single.rebuild(ViewName::Balance).await,
        Err(ProjectorError::NotRunning(ViewName::Balance))
    ));
    single.stop().await.unwrap();
}

/// Projects `appends` of a workload into `data` and stops; returns the workload.
async fn projected(
    store: &Arc<ledger_store_sqlite::SqliteStore>,
    data: &Path,
    appends: usize,
) -> Workload {
    let mut workload = Workload::new(10, 5);
    append_workload(&mut workload, &**store, appends).await;
    let projectors = start(store, data).await;
    caught_up(&projectors.views().unwrap(), &**store).await;
    projectors.stop().await.unwrap();
    workload
}

fn set_in_file(path: &Path, sql: &str) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn view_files_of_a_newer_format_or_another_kind_are_refused_and_left_unchanged() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    projected(&store, &data, 50).await;
    let path = view_path(&data, ViewName::Tier);

    set_in_file(&path, "PRAGMA user_version = 99;");
    let before = std::fs::read(&path).unwrap();
    let refused = start_error(&store, &data).await;
    assert!(
        matches!(refused, ProjectorError::NewerFormat { found: 99, .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("left unchanged"), "{refused}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was left unchanged"
    );

    set_in_file(
        &path,
        "PRAGMA user_version = 1; UPDATE checkpoint SET row_format = 99;",
    );
    let refused = start_error(&store, &data).await;
    assert!(
        matches!(refused, ProjectorError::NewerFormat { found: 99, .. }),
        "{refused}"
    );

    std::fs::write(
        &path,
        b"not a database, just bytes that are long enough to look like one",
    )
    .unwrap();
    let refused = start_error(&store, &data).await;
    assert!(
        matches!(
            refused,
            ProjectorError::NotAViewFile {
                view: ViewName::Tier,
                ..
            }
        ),
        "{refused}"
    );
}

async fn start_error(store: &Arc<ledger_store_sqlite::SqliteStore>, data: &Path) -> ProjectorError {
    match Projectors::start(
        Arc::clone(store) as Arc<dyn EventStore>,
        data,
        ViewSelection::All,
        ProjectorConfig::default(),
    )
    .await
    {
        Ok(_) => panic!("the projectors started"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn rows_of_an_older_row_format_are_rebuilt_from_the_events() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    let workload = projected(&store, &data, 80).await;
    set_in_file(
        &view_path(&data, ViewName::Balance),
        "UPDATE checkpoint SET row_format = 0; UPDATE rows SET row = '{\"old\": true}';",
    );
    let projectors = start(&store, &data).await;
    let views = projectors.views().unwrap();
    caught_up(&views, &*store).await;
    assert_views_equal_fold(&views, &workload.writer);
    projectors.stop().await.unwrap();
}

#[tokio::test]
async fn views_ahead_of_their_store_are_refused() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    projected(&store, &data, 20).await;
    let other = temp_dir();
    let (empty, _) = store_in(other.path());
    let refused = start_error(&empty, &data).await;
    assert!(
        matches!(refused, ProjectorError::AheadOfStore { .. }),
        "{refused}"
    );
}

#[tokio::test]
async fn waiting_for_a_position_not_reached_times_out() {
    let dir = temp_dir();
    let (store, _) = store_in(dir.path());
    let data = dir.path().join("data");
    let mut workload = Workload::new(3, 1);
    append_workload(&mut workload, &*store, 5).await;
    let projectors = start(&store, &data).await;
    let views = projectors.views().unwrap();
    caught_up(&views, &*store).await;
    let head = store.head_position().await.unwrap().unwrap();
    let waited = views.wait_for(head + 1, Duration::from_millis(30)).await;
    assert_eq!(waited.unwrap_err().reached, Some(head));
    // A position reached later is waited for.
    let wait = {
        let views = views.clone();
        tokio::spawn(async move { views.wait_for(head + 1, Duration::from_secs(5)).await })
    };
    append_workload(&mut workload, &*store, 1).await;
    wait.await.unwrap().expect("reached");
    projectors.stop().await.unwrap();
}

/// A store that serves a fixed list of events: for histories the real stores refuse to hold.
struct FixedStore {
    events: Vec<RecordedEvent>,
}

struct FixedSubscription {
    events: VecDeque<RecordedEvent>,
}

#[async_trait]
impl Subscription for FixedSubscription {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        match self.events.pop_front() {
            Some(event) => Ok(event),
            None => std::future::pending().await,
        }
    }
}

#[async_trait]
impl EventStore for FixedStore {
    async fn append(
        &self,
        _: &str,
        _: ExpectedVersion,
        _: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        Err(StoreError::Invalid("read-only".into()))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .events
            .iter()
            .filter(|event| event.stream == stream && event.version >= from_version)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .events
            .iter()
            .filter(|event| Some(event.position) > after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        Ok(Box::new(FixedSubscription {
            events: self.read_all(after, usize::MAX).await?.into(),
        }))
    }

    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError> {
        Ok(self.events.last().map(|event| event.position))
    }
}

/// The events of one account's first commands, as stored: open, top-up, charge, charge.
fn recorded_history() -> Vec<RecordedEvent> {
    let mut writer = Writer::new();
    let mut recorded = Vec::new();
    for command in [open(), top_up("p1", 100), chat("c1"), chat("c2")] {
        let append = writer.decide("acct-1", &command).expect("decided");
        let first = append.expected.last_version() + 1;
        for (offset, event) in append.events.into_iter().enumerate() {
            let version = first + offset as u64;
            recorded.push(RecordedEvent {
                stream: append.stream.clone(),
                version,
                position: recorded.len() as u64 + 1,
                event_id: event.event_id,
                event_type: event.event_type,
                payload: event.payload,
                attachment: None,
            });
        }
    }
    recorded
}

/// Runs the projectors over `events` until they fail or have applied everything.
async fn project_fixed(events: Vec<RecordedEvent>) -> Result<Views, ProjectorError> {
    let dir = temp_dir();
    let head = events.last().map(|event| event.position);
    let store = Arc::new(FixedStore { events });
    let mut projectors = Projectors::start(
        store,
        dir.path(),
        ViewSelection::All,
        ProjectorConfig::default(),
    )
    .await?;
    let views = projectors.views().unwrap();
    tokio::select! {
        failed = projectors.wait() => Err(failed.expect_err("ended without an error")),
        reached = views.wait_for(head.unwrap_or(0), Duration::from_secs(10)) => {
            reached.expect("caught up");
            projectors.stop().await?;
            Ok(views)
        }
    }
}

#[tokio::test]
async fn a_missing_event_stops_the_projector_instead_of_building_a_wrong_view() {
    let mut events = recorded_history();
    events.remove(2);
    let failed = project_fixed(events).await.unwrap_err();
    assert!(
        matches!(
            failed,
            ProjectorError::VersionGap {
                have: 2,
                got: 4,
                ..
            }
        ),
        "{failed}"
    );
}

#[tokio::test]
async fn a_stream_that_does_not_begin_with_account_opened_is_refused() {
    let mut events = recorded_history();
    events.remove(0);
    let failed = project_fixed(events).await.unwrap_err();
    assert!(
        matches!(
            failed,
            ProjectorError::VersionGap {
                have: 0,
                got: 2,
                ..
            }
        ),
        "{failed}"
    );

    let mut events = recorded_history();
    let opened = events.remove(0);
    events[0].version = 1;
    events[0].position = opened.position;
    let failed = project_fixed(events).await.unwrap_err();
    // The envelope inside still says version 2: caught before any view sees it.
    assert!(matches!(failed, ProjectorError::Decode { .. }), "{failed}");
}

#[tokio::test]
async fn an_undecodable_event_stops_the_projector() {
    let mut events = recorded_history();
    events[1].payload = b"{\"not\": \"an envelope\"}".to_vec();
    let failed = project_fixed(events).await.unwrap_err();
    assert!(
        matches!(failed, ProjectorError::Decode { position: 2, .. }),
        "{failed}"
    );
}

#[tokio::test]
async fn events_of_other_streams_only_move_the_position() {
    let mut events = recorded_history();
    let mut foreign = events[0].clone();
    foreign.stream = "scheduler-state".into();
    foreign.payload = b"anything".to_vec();
    for (index, event) in events.iter_mut().enumerate() {
        event.position = index as u64 + 1;
    }
    foreign.position = events.len() as u64 + 1;
    events.push(foreign);
    let views = project_fixed(events).await.expect("projected");
    assert_eq!(views.position(), Some(5));
    assert_eq!(views.balance.get("acct-1").unwrap().version, 4);
}
