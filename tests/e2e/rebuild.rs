//! `ledger project --rebuild VIEW`: the rebuild runs beside the live view and switches over
//! atomically. Killed with SIGKILL half-way, it leaves the live view exactly as it was (its
//! half-built file beside it); run again, it completes and the view holds the same rows.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ledger_domain::catalog::{Scope, Tier};
use ledger_domain::envelope::{seal, stream_name, Cause, GENESIS_HASH};
use ledger_domain::events::{AccountOpened, Event, GrantAdded};
use ledger_domain::Credits;
use ledger_projector::storage::{read_all_rows, view_path, StoredRow};
use ledger_projector::ViewName;
use ledger_store::{EventStore, ExpectedVersion, NewEvent};
use ledger_store_sqlite::SqliteStore;

use crate::cli::ledger;
use crate::support::ledger_command;

const ACCOUNTS: usize = 200;
const GRANTS_PER_ACCOUNT: usize = 99;

/// Writes `ACCOUNTS` accounts of `1 + GRANTS_PER_ACCOUNT` events each straight into the
/// store file: enough history that a rebuild takes a while.
async fn seed(data: &Path) {
    std::fs::create_dir_all(data).expect("data dir");
    let store = SqliteStore::open(&data.join("events.sqlite")).expect("open the store");
    let now = chrono::Utc::now();
    let cause = Cause {
        command_id: "seed".into(),
        actor: "billing".into(),
    };
    for account in 0..ACCOUNTS {
        let account_id = format!("r{account}");
        let mut events: Vec<Event> = vec![AccountOpened {
            account_id: account_id.clone(),
            tier: Tier::Free,
            scope: Scope::Free,
            period_start: now,
            period_end: now + chrono::Duration::days(30),
            allowance: Credits::new(500),
        }
        .into()];
        events.extend((0..GRANTS_PER_ACCOUNT).map(|grant| {
            Event::from(GrantAdded {
                grant_id: format!("g{grant}"),
                credits: Credits::new(10),
                reason: "seed".into(),
                expires_at: None,
            })
        }));
        let stream = stream_name(&account_id);
        let sealed = seal(&stream, 0, GENESIS_HASH, &cause, now, now, events);
        let batch = sealed
            .into_iter()
            .map(|(envelope, payload)| NewEvent {
                event_id: envelope.event_id,
                event_type: envelope.event.type_name().to_string(),
                payload,
                attachment: None,
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::NoStream, batch)
            .await
            .expect("append the seed");
    }
}

fn rows(data: &Path) -> (Option<u64>, Vec<StoredRow>) {
    let (checkpoint, rows) =
        read_all_rows(&view_path(data, ViewName::Balance), ViewName::Balance).expect("the view");
    (checkpoint.position, rows)
}

#[tokio::test]
async fn a_rebuild_killed_half_way_leaves_the_live_view_and_a_rerun_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    seed(&data).await;
    let data_arg = data.to_str().expect("a UTF-8 path");
    let live = view_path(&data, ViewName::Balance);
    let mut shadow = live.clone().into_os_string();
    shadow.push(".rebuild");
    let shadow = std::path::PathBuf::from(shadow);

    // Given a live balance view, built by a first rebuild (it starts from an empty view).
    let first = ledger(
        &["project", "--data", data_arg, "--rebuild", "balance"],
        dir.path(),
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(
        first.stdout.starts_with("rebuilt balance: "),
        "{}",
        first.stdout
    );
    let before = rows(&data);
    assert_eq!(before.1.len(), ACCOUNTS);
    assert!(
        !shadow.exists(),
        "a finished rebuild leaves no file beside the view"
    );

    // When a second rebuild is killed once its file beside the live one exists.
    let mut child = ledger_command()
        .args(["project", "--data", data_arg, "--rebuild", "balance"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ledger project --rebuild");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shadow.exists() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the rebuild ended before it started its file"
        );
        assert!(Instant::now() < deadline, "the rebuild never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");

    // Then the live view is as it was, and the half-built file has not replaced it.
    assert!(shadow.exists(), "killed before the switch-over");
    assert_eq!(rows(&data), before, "the live view is untouched");

    // And a rerun completes, with the same rows.
    let rerun = ledger(
        &["project", "--data", data_arg, "--rebuild", "balance"],
        dir.path(),
    );
    assert_eq!(rerun.code, Some(0), "{}", rerun.stderr);
    assert!(!shadow.exists(), "the rerun switched over");
    assert_eq!(
        rows(&data),
        before,
        "a rebuild from zero gives the same rows"
    );
}
