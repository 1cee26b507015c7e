//! Views kept current from files that a projector in another process writes
//! (`ledger serve --projectors external` beside `ledger project`).
//!
//! Every poll opens each view file read-only, reads its checkpoint and the rows changed since
//! the position seen last (`changed_at_position > seen`), all in one snapshot, and closes it
//! again: a connection held open would keep a rebuild's switch-over from taking the file out
//! of WAL mode. A changed `file_id` means the file was rebuilt, and every row is reloaded.
//!
//! Followed views report position and lag; `events_applied` and `batches` stay 0 here, since
//! the process that applies the events reports those.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ledger_store::EventStore;
use tokio::task::JoinHandle;

use crate::error::ProjectorError;
use crate::handle::{new_row_map, SharedRow, Versioned, ViewHandle, Views};
use crate::metrics::HeadPosition;
use crate::projection::{BalanceView, Projection, TierView, TrialUsageView, UsageView};
use crate::storage::{read_view_file, view_path, FileRead, StoredRow};

/// How [`Views::follow_files`] follows.
#[derive(Clone)]
pub struct FollowOptions {
    /// How often the files are looked at.
    pub poll: Duration,
    /// Asked for its head position only, to report lag; never read for events.
    pub store: Option<Arc<dyn EventStore>>,
    /// How often the head position is asked for.
    pub head_refresh: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll: Duration::from_millis(20),
            store: None,
            head_refresh: Duration::from_millis(200),
        }
    }
}

impl std::fmt::Debug for FollowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowOptions")
            .field("poll", &self.poll)
            .field("store", &self.store.is_some())
            .field("head_refresh", &self.head_refresh)
            .finish()
    }
}

/// The polling task behind followed views; it stops when this value is dropped.
#[derive(Debug)]
pub struct Follower {
    task: JoinHandle<()>,
}

impl Follower {
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a follower last saw of one file: its id and position.
type Seen = Option<(String, Option<u64>)>;

struct Followed<R> {
    handle: ViewHandle<R>,
    path: PathBuf,
    seen: Seen,
    /// The last failure logged, so that one lasting failure is logged once, not every poll.
    failing: Option<String>,
}

impl Views {
    /// Views that follow the files of a projector running in another process. Loads what
    /// the files hold now before returning; a view whose file does not exist yet starts
    /// empty and fills once its projector creates it.
    pub async fn follow_files(
        data_dir: &Path,
        options: FollowOptions,
    ) -> Result<(Views, Follower), ProjectorError> {
        let head = Arc::new(HeadPosition::default());
        let views = Views::empty(Arc::clone(&head));
        let mut balance = Followed {
            handle: views.balance.clone(),
            path: view_path(data_dir, BalanceView::VIEW),
            seen: None,
            failing: None,
        };
        let mut trial_usage = Followed {
            handle: views.trial_usage.clone(),
            path: view_path(data_dir, TrialUsageView::VIEW),
            seen: None,
            failing: None,
        };
        let mut tier = Followed {
            handle: views.tier.clone(),
            path: view_path(data_dir, TierView::VIEW),
            seen: None,
            failing: None,
        };
        let mut usage = Followed {
            handle: views.usage.clone(),
            path: view_path(data_dir, UsageView::VIEW),
            seen: None,
            failing: None,
        };
        balance = poll::<BalanceView>(balance).await?;
        trial_usage = poll::<TrialUsageView>(trial_usage).await?;
        tier = poll::<TierView>(tier).await?;
        usage = poll::<UsageView>(usage).await?;
        if let Some(store) = &options.store {
            if let Some(position) = store.head_position().await? {
                head.observe(position);
            }
        }
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(options.poll);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut head_asked = tokio::time::Instant::now();
            loop {
                interval.tick().await;
                balance = poll_logged::<BalanceView>(balance).await;
                trial_usage = poll_logged::<TrialUsageView>(trial_usage).await;
                tier = poll_logged::<TierView>(tier).await;
                usage = poll_logged::<UsageView>(usage).await;
                if let Some(store) = &options.store {
                    if head_asked.elapsed() >= options.head_refresh {
                        head_asked = tokio::time::Instant::now();
                        match store.head_position().await {
                            Ok(Some(position)) => head.observe(position),
                            Ok(None) => {}
                            Err(error) => {
                                tracing::debug!(%error, "cannot read the store's head position")
                            }
                        }
                    }
                }
            }
        });
        Ok((views, Follower { task }))
    }
}

/// One poll that keeps going on failure: a file may be in the middle of a switch-over, or
/// its projector not started yet; the next poll tries again.
async fn poll_logged<P: Projection>(followed: Followed<P::Row>) -> Followed<P::Row> {
    let seen = followed.seen.clone();
    let handle = followed.handle.clone();
    let path = followed.path.clone();
    let failing = followed.failing.clone();
    match poll::<P>(followed).await {
        Ok(mut followed) => {
            if followed.failing.take().is_some() {
                tracing::info!(view = %P::VIEW, "the view file is readable again");
            }
            followed
        }
        Err(error) => {
            let message = error.to_string();
            if failing.as_deref() != Some(message.as_str()) {
                tracing::warn!(view = %P::VIEW, %error, "cannot read the view file; retrying");
            }
            Followed {
                handle,
                path,
                seen,
                failing: Some(message),
            }
        }
    }
}

async fn poll<P: Projection>(
    mut followed: Followed<P::Row>,
) -> Result<Followed<P::Row>, ProjectorError> {
    let path = followed.path.clone();
    let seen = followed.seen.clone();
    let read = tokio::task::spawn_blocking(move || {
        let seen = seen
            .as_ref()
            .map(|(file_id, position)| (file_id.as_str(), *position));
        read_view_file(&path, P::VIEW, seen)
    })
    .await
    .map_err(|error| ProjectorError::Stopped(format!("reading a view file failed: {error}")))??;
    match read {
        FileRead::Missing | FileRead::Unchanged => {}
        FileRead::Changed { checkpoint, rows } => {
            let mut changed = Vec::with_capacity(rows.len());
            for stored in rows {
                changed.push(decoded::<P>(stored, &followed.path)?);
            }
            followed.handle.publish(changed, checkpoint.position);
            followed
                .handle
                .stats()
                .set_last_recorded_at(checkpoint.last_recorded_at_us);
            followed.seen = Some((checkpoint.file_id, checkpoint.position));
        }
        FileRead::Replaced { checkpoint, rows } => {
            let mut all = new_row_map();
            for stored in rows {
                let (account_id, row) = decoded::<P>(stored, &followed.path)?;
                all.insert(account_id, row);
            }
            followed.handle.replace_all(all, checkpoint.position);
            followed
                .handle
                .stats()
                .set_last_recorded_at(checkpoint.last_recorded_at_us);
            followed.seen = Some((checkpoint.file_id, checkpoint.position));
        }
    }
    Ok(followed)
}

fn decoded<P: Projection>(
    stored: StoredRow,
    path: &Path,
) -> Result<SharedRow<P::Row>, ProjectorError> {
    let row = P::decode(stored.row.as_bytes()).map_err(|error| ProjectorError::Row {
        view: P::VIEW,
        account_id: stored.account_id.clone(),
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    Ok((
        Arc::from(stored.account_id),
        Arc::new(Versioned {
            version: stored.version,
            changed_at_position: stored.changed_at_position,
            row,
        }),
    ))
}
