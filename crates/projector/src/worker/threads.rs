//! The view threads: the live one, which batches until told to stop and adopts a rebuilt
//! file when one is handed over, and the shadow one a rebuild runs beside it.

use super::*;

/// What the live thread needs to switch over to a rebuilt view.
pub(crate) struct SwitchContext {
    pub store: Arc<dyn EventStore>,
    pub runtime: tokio::runtime::Handle,
    pub busy_timeout: Duration,
}

/// The live thread of one view: batches until told to stop.
pub(crate) fn run_live<P: Projection>(
    mut worker: ViewWorker<P>,
    mut inbox: Inbox,
    batching: Batching,
    switch: SwitchContext,
) -> Result<(), ProjectorError> {
    loop {
        let filled = fill_batch(&mut worker, &mut inbox, &batching, Wait::Forever)?;
        if filled.end == BatchEnd::Stop {
            // The last batch gets one try: a restart reads it again from the checkpoint.
            worker.commit()?;
        } else if !commit_until_done(&mut worker, &mut inbox)? {
            return Ok(());
        }
        if let Some((shadow, reply)) = filled.adoption {
            adopt_and_reply(&mut worker, shadow, reply, &switch)?;
        }
        if filled.end == BatchEnd::Stop {
            return Ok(());
        }
    }
}

/// First pause before a failed commit is tried again; doubles up to the maximum.
const COMMIT_RETRY_MIN: Duration = Duration::from_millis(50);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(2);

/// Commits the pending batch, trying again while the disk refuses the write for a reason
/// that can pass (see [`ProjectorError::is_transient_write`]): the views stay as last
/// committed meanwhile. False when told to stop while waiting (the batch is left
/// uncommitted, to be read again from the checkpoint).
fn commit_until_done<P: Projection>(
    worker: &mut ViewWorker<P>,
    inbox: &mut Inbox,
) -> Result<bool, ProjectorError> {
    let mut delay = COMMIT_RETRY_MIN;
    loop {
        match worker.commit() {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient_write() => {
                tracing::warn!(
                    view = %P::VIEW,
                    %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "a view commit failed; the view keeps its last commit and tries again"
                );
                if inbox.stop_requested(delay) {
                    return Ok(false);
                }
                delay = (delay * 2).min(COMMIT_RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Switches over to a rebuilt view and answers the rebuild. Only a failure that leaves the
/// live view unusable is returned (and stops the projector); any other failure goes to the
/// rebuild's caller and the live view carries on as it was.
fn adopt_and_reply<P: Projection>(
    worker: &mut ViewWorker<P>,
    shadow: Box<dyn Any + Send>,
    reply: RebuildReply,
    switch: &SwitchContext,
) -> Result<(), ProjectorError> {
    let shadow = match shadow.downcast::<Shadow<P>>() {
        Ok(shadow) => *shadow,
        Err(_) => {
            let _ = reply.send(Err(ProjectorError::Stopped(format!(
                "a rebuild of another view was sent to the {} view",
                P::VIEW
            ))));
            return Ok(());
        }
    };
    match adopt(worker, shadow, switch) {
        Ok(report) => {
            let _ = reply.send(Ok(report));
            Ok(())
        }
        Err(AdoptError::Rebuild(error)) => {
            tracing::warn!(view = %P::VIEW, %error, "the rebuild was not switched over");
            let _ = reply.send(Err(error));
            Ok(())
        }
        Err(AdoptError::Fatal(error)) => {
            let _ = reply.send(Err(ProjectorError::Stopped(format!(
                "the switch-over failed and stopped the projector: {error}"
            ))));
            Err(error)
        }
    }
}

enum AdoptError {
    /// The rebuild failed; the live view is as it was.
    Rebuild(ProjectorError),
    /// The live view is unusable.
    Fatal(ProjectorError),
}

fn adopt<P: Projection>(
    live: &mut ViewWorker<P>,
    shadow: Shadow<P>,
    switch: &SwitchContext,
) -> Result<RebuildReport, AdoptError> {
    let Shadow {
        worker: mut rebuilt,
        started,
    } = shadow;
    // The rebuild stopped at the head it saw; whatever the live view applied since, read it
    // again for the rebuilt one, so that both stand at the same position when switched.
    let target = live.committed().position;
    while rebuilt.position() < target {
        let page = switch
            .runtime
            .block_on(switch.store.read_all(rebuilt.position(), 1024))
            .map_err(|error| AdoptError::Rebuild(error.into()))?;
        if page.is_empty() {
            break;
        }
        for record in page {
            if Some(record.position) > target {
                break;
            }
            let decoded = decode(&record).map_err(AdoptError::Rebuild)?;
            rebuilt.apply(&decoded).map_err(AdoptError::Rebuild)?;
        }
        rebuilt.commit().map_err(AdoptError::Rebuild)?;
    }
    rebuilt.commit().map_err(AdoptError::Rebuild)?;
    let ViewWorker {
        file: rebuilt_file,
        rows,
        committed,
        ..
    } = rebuilt;
    let events_applied = committed.events_applied;
    match live
        .file
        .replace_with(rebuilt_file, P::ROW_FORMAT, switch.busy_timeout)
    {
        Ok(SwitchOutcome::Switched(checkpoint)) => {
            if checkpoint != committed {
                return Err(AdoptError::Fatal(ProjectorError::SwitchOver {
                    view: P::VIEW,
                    path: live.file.path().to_owned(),
                    reason: format!(
                        "the switched file's checkpoint {checkpoint:?} is not the rebuilt \
                         {committed:?}"
                    ),
                }));
            }
        }
        Ok(SwitchOutcome::KeptOld(error)) => return Err(AdoptError::Rebuild(error)),
        Err(error) => return Err(AdoptError::Fatal(error)),
    }
    live.rows = rows;
    live.committed = committed;
    live.pending = Pending::default();
    if let Some(handle) = &live.publish {
        handle.replace_all(live.rows.clone(), live.committed.position);
        handle
            .stats()
            .set_last_recorded_at(live.committed.last_recorded_at_us);
    }
    Ok(RebuildReport {
        view: P::VIEW,
        events_applied,
        position: live.committed.position,
        rows: live.rows.len(),
        elapsed: started.elapsed(),
    })
}

/// A rebuild's thread: folds from position zero into a fresh file, and once it has caught up
/// — reached both the head the store had when the rebuild began and the live view's
/// position — hands itself to the live thread (`live`) to be switched over.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_shadow<P: Projection>(
    mut worker: ViewWorker<P>,
    mut inbox: Inbox,
    batching: Batching,
    head_at_start: Option<GlobalPosition>,
    live_handle: ViewHandle<P::Row>,
    live: Sender<Input>,
    reply: RebuildReply,
) {
    let started = Clock::now();
    let stopped =
        || ProjectorError::Stopped(format!("the rebuild of the {} view was stopped", P::VIEW));
    let caught_up = |worker: &ViewWorker<P>| {
        let position = worker.position();
        position >= head_at_start && position >= live_handle.position()
    };
    let result: Result<(), ProjectorError> = (|| loop {
        if caught_up(&worker) {
            return Ok(());
        }
        // The first wait is timed, so that a rebuild with nothing (more) to read notices it
        // caught up.
        let filled = fill_batch(&mut worker, &mut inbox, &batching, Wait::For(batching.idle))?;
        worker.commit()?;
        live_handle
            .stats()
            .rebuild_progress(worker.position(), worker.committed().events_applied);
        if filled.end == BatchEnd::Stop {
            return Err(stopped());
        }
    })();
    match result {
        Ok(()) => {
            let shadow = Shadow { worker, started };
            if let Err(std::sync::mpsc::SendError(Input::Adopt(_, reply))) =
                live.send(Input::Adopt(Box::new(shadow), reply))
            {
                let _ = reply.send(Err(ProjectorError::Stopped(format!(
                    "the {} view stopped before the rebuild could switch over",
                    P::VIEW
                ))));
            }
        }
        Err(error) => {
            let _ = reply.send(Err(error));
        }
    }
}
