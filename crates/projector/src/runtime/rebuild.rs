//! The side-by-side rebuild: a fresh file built from position zero while the live one keeps
//! serving, handed to the live thread for an atomic switch-over.

use super::*;

pub(super) async fn rebuild<P: Projection>(
    control: &Control,
    running: &Running,
    handle: ViewHandle<P::Row>,
) -> Result<RebuildReport, ProjectorError> {
    if !handle.stats().start_rebuild() {
        return Err(ProjectorError::RebuildRunning(P::VIEW));
    }
    // Ends the rebuild's mark even if the caller drops this future halfway.
    struct Ending<R: Clone>(ViewHandle<R>);
    impl<R: Clone> Drop for Ending<R> {
        fn drop(&mut self) {
            self.0.stats().end_rebuild();
        }
    }
    let ending = Ending(handle.clone());
    let result = rebuild_started::<P>(control, running, &handle).await;
    drop(ending);
    match &result {
        Ok(report) => tracing::info!(
            view = %P::VIEW,
            events = report.events_applied,
            position = ?report.position,
            elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            "view rebuilt and switched over"
        ),
        Err(error) => tracing::warn!(view = %P::VIEW, %error, "the rebuild failed"),
    }
    result
}

async fn rebuild_started<P: Projection>(
    control: &Control,
    running: &Running,
    handle: &ViewHandle<P::Row>,
) -> Result<RebuildReport, ProjectorError> {
    let head_at_start = control.store.head_position().await?;
    let path = shadow_path(&view_path(&control.data_dir, P::VIEW));
    let worker = tokio::task::spawn_blocking(move || -> Result<ViewWorker<P>, ProjectorError> {
        let (file, checkpoint) = ViewFile::create_fresh(&path, P::VIEW, P::ROW_FORMAT)?;
        ViewWorker::<P>::load(file, checkpoint, None)
    })
    .await
    .map_err(|error| ProjectorError::Stopped(format!("starting the rebuild failed: {error}")))??;

    let (input, inputs) = mpsc::channel();
    let capacity = Arc::new(Semaphore::new(control.config.channel_chunks()));
    // The rebuild's reader stops with the projectors, or when the rebuild's thread ends.
    let (reader_stop, reader_stop_receiver) = watch::channel(false);
    let mut projector_stop = control.stop.clone();
    let reader = tokio::spawn(feed(Feed {
        store: Arc::clone(&control.store),
        after: None,
        targets: vec![FeedTarget::new(input, Arc::clone(&capacity))],
        head: Arc::clone(handle.head()),
        stop: reader_stop_receiver,
        retry_delay_max: control.config.retry_delay_max,
    }));
    let (reply, answer) = oneshot::channel();
    let batching = control.config.batching(handle.head());
    let live = running.input.clone();
    let live_handle = handle.clone();
    std::thread::Builder::new()
        .name(format!("rebuild-{}", P::VIEW))
        .spawn(move || {
            run_shadow::<P>(
                worker,
                Inbox::new(inputs, Capacity(capacity)),
                batching,
                head_at_start,
                live_handle,
                live,
                reply,
            )
        })
        .map_err(|error| {
            ProjectorError::Stopped(format!("cannot start the rebuild thread: {error}"))
        })?;
    let started = Clock::now();
    let result = tokio::select! {
        answer = answer => answer.unwrap_or_else(|_| Err(ProjectorError::Stopped(
            "the rebuild thread ended without an answer".into(),
        ))),
        _ = projector_stop.wait_for(|stop| *stop) => Err(ProjectorError::Stopped(
            "the projectors stopped during the rebuild".into(),
        )),
    };
    reader_stop.send_replace(true);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "the rebuild's reader failed"),
        Err(error) => tracing::warn!(%error, "the rebuild's reader task failed"),
    }
    tracing::debug!(view = %P::VIEW, elapsed_ms = ?started.elapsed().as_millis(), "rebuild ended");
    result
}
