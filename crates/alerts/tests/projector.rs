//! The alerts projector over a real SQLite store: only accounts that configured alerts are
//! watched, and an account that configures them late gets exactly the notifications a watch
//! folded from its opening would have derived.

use std::sync::Arc;
use std::time::Duration;

use ledger_alerts::SqliteOutbox;
use ledger_domain::alerts::{notification_id, AlertWatch, ConfigureAlerts};
use ledger_domain::command::{Charge, Quantity};
use ledger_domain::envelope::{stream_name, SlimEnvelope};
use ledger_domain::events::Via;
use ledger_domain::{Catalog, Command, Instant};
use ledger_service::alerts::Outbox;
use ledger_service::clock::SystemClock;
use ledger_service::ledger::Ledger;
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;

/// A one-credit chat charge, each node of its own run.
fn charge(id: usize) -> Command {
    let node_id = format!("n{id}");
    Command::Charge(Charge {
        model: "assistant-chat".into(),
        via: Via::App,
        quantity: Quantity::default(),
        charge_id: format!("c{id}"),
        run_id: format!("run-{node_id}"),
        node_id,
    })
}

fn configure(low_balance: Vec<u64>) -> Command {
    Command::ConfigureAlerts(ConfigureAlerts {
        low_balance,
        url: Some("https://example.com/hook".into()),
    })
}

/// The notification ids a watch started at the stream's first event derives.
async fn ids_from_a_full_fold(store: &dyn EventStore, account_id: &str) -> Vec<String> {
    let events = store
        .read_stream(&stream_name(account_id), 1, 10_000)
        .await
        .expect("read the stream");
    let mut watch: Option<AlertWatch> = None;
    let mut ids = Vec::new();
    for record in events {
        let slim = SlimEnvelope::parse(&record.payload).expect("an envelope");
        let event = slim.event().expect("an event");
        let occurred_at: Instant = slim.occurred_at.parse().expect("a time");
        match &mut watch {
            None => watch = AlertWatch::create(&event),
            Some(watch) => {
                for notification in watch.apply(&event, record.version, occurred_at) {
                    let id = notification_id(account_id, record.version, &notification.key);
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids
}

fn outbox_ids(path: &std::path::Path, account_id: &str) -> Vec<String> {
    let connection = rusqlite::Connection::open(path).expect("open the outbox");
    let mut statement = connection
        .prepare("SELECT id FROM outbox WHERE account_id = ?1 ORDER BY seq")
        .expect("prepare");
    let rows = statement
        .query_map([account_id], |row| row.get::<_, String>(0))
        .expect("query");
    rows.map(|row| row.expect("a row")).collect()
}

/// A SQLite store in `dir` and the command handler on it.
fn ledger_in(dir: &std::path::Path) -> (Arc<dyn EventStore>, Ledger) {
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.join("events.sqlite")).expect("a store"));
    let ledger = Ledger::new(
        store.clone(),
        Arc::new(Catalog::shipped()),
        Arc::new(SystemClock),
    );
    (store, ledger)
}

/// The alerts projector following `store` into the outbox file in `dir`.
struct Running {
    outbox: Arc<SqliteOutbox>,
    path: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    projector: tokio::task::JoinHandle<Result<(), ledger_alerts::AlertsError>>,
}

impl Running {
    fn start(store: &Arc<dyn EventStore>, dir: &std::path::Path) -> Running {
        let path = dir.join(ledger_alerts::FILE_NAME);
        let outbox = Arc::new(SqliteOutbox::open(&path).expect("an outbox"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let projector = tokio::spawn(ledger_alerts::run(store.clone(), outbox.clone(), async {
            let _ = stopped.await;
        }));
        Running {
            outbox,
            path,
            stop,
            projector,
        }
    }

    /// Waits until readers see the projector at the store's head.
    async fn reach_head(&self, store: &Arc<dyn EventStore>) -> u64 {
        let head = store.head_position().await.expect("head").expect("events");
        assert!(
            self.outbox.wait_for(head, Duration::from_secs(30)).await,
            "the projector reaches the head"
        );
        head
    }

    async fn stop(self) {
        self.stop.send(()).expect("the projector runs");
        self.projector.await.expect("joined").expect("no error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_configured_account_notifies_as_if_watched_from_its_opening_and_others_are_not_watched(
) {
    let dir = tempfile::tempdir().expect("a directory");
    let (store, ledger) = ledger_in(dir.path());
    for account_id in ["late", "quiet"] {
        ledger
            .execute(account_id, &Command::OpenAccount, "billing")
            .await
            .expect("open");
    }
    for id in 0..5 {
        for account_id in ["late", "quiet"] {
            ledger
                .execute(account_id, &charge(id), "executor")
                .await
                .expect("charge");
        }
    }
    // Thresholds far above the free allowance are crossed as soon as they are configured.
    ledger
        .execute("late", &configure(vec![1_000_000]), "support")
        .await
        .expect("configure");
    ledger
        .execute("late", &configure(vec![1_000_000, 2_000_000]), "support")
        .await
        .expect("configure again");
    for id in 5..8 {
        ledger
            .execute("late", &charge(id), "executor")
            .await
            .expect("charge");
    }

    let running = Running::start(&store, dir.path());
    running.reach_head(&store).await;
    let (outbox, path) = (running.outbox.clone(), running.path.clone());
    running.stop().await;

    let expected = ids_from_a_full_fold(store.as_ref(), "late").await;
    assert_eq!(
        expected.len(),
        2,
        "one balance.low per threshold: {expected:?}"
    );
    assert_eq!(outbox_ids(&path, "late"), expected);
    assert!(outbox_ids(&path, "quiet").is_empty());
    let watches = outbox.load_watches().expect("watches");
    assert_eq!(watches.keys().collect::<Vec<_>>(), vec!["late"]);
    let late_version = store
        .read_stream(&stream_name("late"), 1, 100)
        .await
        .expect("read")
        .len() as u64;
    assert_eq!(watches["late"].0, late_version);
}

/// The checkpoint as stored in the outbox file.
fn stored_checkpoint(path: &std::path::Path) -> Option<u64> {
    let connection = rusqlite::Connection::open(path).expect("open the outbox");
    connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'checkpoint'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .ok()
        .and_then(|value| u64::try_from(value).ok())
}

/// Events that derive nothing (an account without alerts) move the position that readers
/// wait for at once, without a commit per pause, and the stored checkpoint follows once the
/// store has been quiet for a moment, so a restart does not fold them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_derive_nothing_move_the_position_and_the_stored_checkpoint_follows() {
    let dir = tempfile::tempdir().expect("a directory");
    let (store, ledger) = ledger_in(dir.path());
    let running = Running::start(&store, dir.path());
    ledger
        .execute("quiet", &Command::OpenAccount, "billing")
        .await
        .expect("open");
    for id in 0..20 {
        ledger
            .execute("quiet", &charge(id), "executor")
            .await
            .expect("charge");
    }
    let head = running.reach_head(&store).await;
    let path = running.path.clone();
    let mut stored = stored_checkpoint(&path);
    for _ in 0..100 {
        if stored == Some(head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = stored_checkpoint(&path);
    }
    assert_eq!(
        stored,
        Some(head),
        "the stored checkpoint follows while the store is quiet"
    );
    assert!(outbox_ids(&path, "quiet").is_empty());
    running.stop().await;
}
