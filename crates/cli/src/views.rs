//! Starting the read side for a command: projectors inside this process (`serve` by
//! default), views followed from files another process writes (`--projectors external`,
//! `schedule`, `audit reconcile`), or projectors alone (`project`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use ledger_projector::{FollowOptions, ProjectorConfig, ViewSelection, Views};
use ledger_service::views::ReadModel;
use ledger_store::EventStore;
use tokio::task::JoinHandle;
use tracing::error;

/// Projectors running in this process, and a task that stops them on `shutdown`.
pub async fn embedded(
    data_dir: &Path,
    store: Arc<dyn EventStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Arc<dyn ReadModel>, Vec<JoinHandle<()>>)> {
    let (views, mut projectors) =
        ledger_projector::spawn_embedded(store, data_dir, ProjectorConfig::default()).await?;
    let task = tokio::spawn(async move {
        tokio::select! {
            result = projectors.wait() => {
                if let Err(err) = result {
                    error!(error = %err, "projectors stopped");
                }
            }
            () = shutdown => {
                if let Err(err) = projectors.stop().await {
                    error!(error = %err, "projectors did not stop cleanly");
                }
            }
        }
    });
    Ok((Arc::new(views) as Arc<dyn ReadModel>, vec![task]))
}

/// Views read from the files a separate `ledger project` process writes.
pub async fn follow(
    data_dir: &Path,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<Arc<dyn ReadModel>> {
    let options = FollowOptions {
        store: Some(store),
        ..FollowOptions::default()
    };
    let (views, follower): (Views, _) = Views::follow_files(data_dir, options).await?;
    // The follower polls for as long as the process lives.
    std::mem::forget(follower);
    Ok(Arc::new(views))
}

/// Runs the selected projectors until `shutdown`.
pub async fn run_projectors(
    data_dir: &Path,
    store: Arc<dyn EventStore>,
    which: ViewSelection,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    ledger_projector::run(store, data_dir, which, ProjectorConfig::default(), shutdown).await?;
    Ok(())
}
