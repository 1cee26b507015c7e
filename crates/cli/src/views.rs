//! Starting the read side for a command: projectors inside this process (`serve` by
//! default), views followed from files another process writes (`--projectors external`,
//! `schedule`, `audit reconcile`), or projectors alone (`project`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledger_domain::decide::next_due_at;
use ledger_domain::state::Core;
use ledger_domain::usage::{UsageBy, UsageRange, UsageReport};
use ledger_domain::{Catalog, Instant};
use ledger_projector::{
    FollowOptions, ProjectorConfig, Projectors, RebuildReport, ViewName, ViewSelection, Views,
};
use ledger_service::views::{ReadModel, ViewStatus};
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
    Ok((
        Arc::new(ProjectedViews(views)) as Arc<dyn ReadModel>,
        vec![task],
    ))
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
    Ok(Arc::new(ProjectedViews(views)))
}

/// Rebuilds `view` side by side: starts its projector (which first brings the live file up
/// to date), builds a fresh file beside it from the first event, switches over atomically,
/// and stops. Interrupted by `shutdown` or a kill, it leaves the live file as it was.
pub async fn rebuild(
    data_dir: &Path,
    store: Arc<dyn EventStore>,
    view: ViewName,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RebuildReport> {
    let projectors = Projectors::start(
        store,
        data_dir,
        ViewSelection::One(view),
        ProjectorConfig::default(),
    )
    .await?;
    let rebuilt = tokio::select! {
        rebuilt = projectors.rebuild(view) => Some(rebuilt),
        () = shutdown => None,
    };
    projectors.stop().await?;
    match rebuilt {
        Some(rebuilt) => Ok(rebuilt?),
        None => anyhow::bail!("the rebuild of {view} was stopped before the switch-over"),
    }
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

/// The projector's in-memory views as the service's read model. A newtype here, in the
/// binary, so that neither the service nor the projector depends on the other.
#[derive(Debug, Clone)]
pub struct ProjectedViews(pub Views);

#[async_trait]
impl ReadModel for ProjectedViews {
    fn account(&self, account_id: &str) -> Option<Core> {
        self.0.account(account_id)
    }

    fn usage(
        &self,
        account_id: &str,
        range: &UsageRange,
        by: UsageBy,
        catalog: &Catalog,
    ) -> Option<UsageReport> {
        let row = self.0.usage.get(account_id)?;
        Some(row.row.report(range, by, catalog))
    }

    fn position(&self) -> Option<u64> {
        self.0.position()
    }

    async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        self.0.wait_for(position, timeout).await.is_ok()
    }

    fn due_accounts(&self, now: Instant) -> Vec<String> {
        // Runs every second over every account: read the shared rows in place rather than
        // copying three rows per account.
        self.0
            .tier
            .snapshot()
            .into_iter()
            .filter_map(|(account_id, plan)| {
                let balance = self.0.balance.get(&account_id)?;
                let trials = self.0.trial_usage.get(&account_id)?;
                next_due_at(&plan.row, &balance.row, &trials.row, now)
                    .filter(|due_at| *due_at <= now)
                    .map(|_| account_id)
            })
            .collect()
    }

    fn status(&self) -> Vec<ViewStatus> {
        self.0
            .metrics()
            .into_iter()
            .map(|metrics| ViewStatus {
                name: metrics.view.as_str(),
                position: metrics.position,
                lag_events: metrics.lag_events,
                lag_ms: metrics.lag_ms,
                events_applied: metrics.events_applied,
            })
            .collect()
    }
}
