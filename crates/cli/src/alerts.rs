//! Wiring of alerts out (SPEC section 14): the alerts projector into `DATA/alerts.sqlite`, and
//! the deliverer draining it when `LEDGER_WEBHOOK_SECRET` is set. Without a secret the outbox
//! still fills (nothing is lost) and delivery waits for a restart with one.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use ledger_alerts::SqliteOutbox;
use ledger_service::alerts::deliver::{self, Settings};
use ledger_service::alerts::guard::Guard;
use ledger_store::EventStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::serve::until_true;

/// Starts the alerts projector and deliverer as tasks that end with `shutdown`; returns the
/// outbox the API reads.
pub fn start(
    data_dir: &Path,
    store: Arc<dyn EventStore>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Arc<SqliteOutbox>> {
    let settings = Settings::from_env().map_err(|message| anyhow!(message))?;
    let path = data_dir.join(ledger_alerts::FILE_NAME);
    let outbox = Arc::new(
        SqliteOutbox::open(&path)
            .with_context(|| format!("cannot open the alerts outbox {}", path.display()))?,
    );
    let projected = outbox.clone();
    let stop = until_true(shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(failure) = ledger_alerts::run(store, projected, stop).await {
            error!(error = %failure, "alerts projector stopped");
        }
    }));
    match settings {
        Some(settings) => {
            let drained: Arc<dyn ledger_service::alerts::Outbox> = outbox.clone();
            let stop = until_true(shutdown.clone());
            tasks.push(tokio::spawn(deliver::run(
                drained,
                settings,
                Guard::from_env(),
                stop,
            )));
        }
        None => warn!(
            "LEDGER_WEBHOOK_SECRET is not set: alerts are kept in the outbox but not delivered"
        ),
    }
    Ok(outbox)
}
