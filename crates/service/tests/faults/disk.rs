//! Real disk faults under the SQLite store: its data directory (events and views, as `serve
//! --data` lays them out) made read-only, and a small file system filled up. Each needs a
//! capability (CAP_LINUX_IMMUTABLE, CAP_SYS_ADMIN to mount); where it is missing the wrapper
//! injects the same error and the test prints which one ran.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ledger_service::tokens::Role;
use ledger_store::faults::{Fault, Op, Times};
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;
use tempfile::TempDir;

use crate::support::{
    assert_unavailable, charge_load, open_accounts, run_command, settle_and_check, Server,
};

/// A mount made for one test, lazily unmounted when dropped (the store may still hold its
/// files open).
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(target: &Path, size: &str) -> Result<Mount, String> {
        run_command(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &path_text(target),
            ],
        )?;
        Ok(Mount {
            path: target.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = run_command("umount", &["-l", &path_text(&self.path)]);
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temporary path").to_string()
}

async fn server_in(data: &Path) -> Server {
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&data.join("events.sqlite")).expect("open the store"));
    Server::start(store, &data.join("views")).await
}

/// Says which kind of fault ran, loudly: a fallback must be seen in the log.
fn note_fallback(what: &str, why: &str) {
    eprintln!(
        "\n*** {what}: mounting is not permitted here ({why}); the fault wrapper injects the \
         same error instead ***\n"
    );
}

/// The data directory made read-only for root too: `chattr +i` on it and on every file the
/// stores write (a read-only remount is refused while the store holds its files open for
/// writing, and root ignores permission bits). Shared-memory index files (`-shm`) are left
/// alone: they are mapped, not written, and an immutable mapping would kill the process
/// rather than fail a call. Undone when dropped.
struct Immutable {
    paths: Vec<PathBuf>,
}

impl Immutable {
    fn set(dir: &Path) -> Result<Immutable, String> {
        let mut paths = vec![dir.to_path_buf()];
        let mut todo = vec![dir.to_path_buf()];
        while let Some(next) = todo.pop() {
            for entry in std::fs::read_dir(&next).map_err(|error| error.to_string())? {
                let path = entry.map_err(|error| error.to_string())?.path();
                if path.is_dir() {
                    todo.push(path.clone());
                } else if path.to_string_lossy().ends_with("-shm") {
                    continue;
                }
                paths.push(path);
            }
        }
        let immutable = Immutable { paths };
        immutable.chattr("+i")?;
        Ok(immutable)
    }

    fn chattr(&self, flag: &str) -> Result<(), String> {
        let mut args = vec![flag];
        args.extend(
            self.paths
                .iter()
                .map(|path| path.to_str().unwrap_or_default()),
        );
        run_command("chattr", &args)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = self.chattr("-i");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_answers_503_and_recovers_when_writable_again() {
    let dir = TempDir::new().expect("a temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let server = server_in(&data).await;
    let accounts = open_accounts(&server, "ro", 2).await;
    let before = charge_load(&server, &accounts, 2, 5, "before").await;
    assert!(before.unavailable.is_empty(), "503 before the fault");
    server.wait_views_caught_up().await;
    let immutable = match Immutable::set(&data) {
        Ok(immutable) => {
            println!("read-only: the data directory and its files made immutable (chattr +i)");
            Some(immutable)
        }
        Err(why) => {
            eprintln!(
                "\n*** read-only data directory: chattr +i is not possible here ({why}); the \
                 fault wrapper injects the same error instead ***\n"
            );
            server
                .faults
                .arm(Op::Append, Fault::Fail, Times::UntilCleared);
            None
        }
    };
    let during = charge_load(&server, &accounts, 2, 5, "readonly").await;
    assert!(
        during.acknowledged.is_empty(),
        "a charge was acknowledged on a read-only disk"
    );
    let (status, summary) = server.summary(&accounts[0], None).await;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "reads answer from the views: {summary}"
    );
    let (status, body) = server.charge(&accounts[0], "readonly-again").await;
    assert_unavailable(status, &body);
    match immutable {
        Some(immutable) => drop(immutable),
        None => server.faults.clear(),
    }
    let mut load = before;
    load.requests += during.requests + 1;
    load.unavailable.extend(during.unavailable);
    load.unavailable
        .push((accounts[0].clone(), "readonly-again".into()));
    let requests = settle_and_check(&server, &accounts, load).await;
    println!("read-only: {requests} requests");
    server.stop().await;
}

/// Fills the file system holding `dir` with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        if file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_err()
        {
            break;
        }
    }
    // And the last few blocks, byte by small piece.
    while file
        .write_all(&chunk[..512])
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_recovers_when_space_is_freed() {
    let dir = TempDir::new().expect("a temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let mount = Mount::tmpfs(&data, "8m");
    let server = server_in(&data).await;
    let accounts = open_accounts(&server, "full", 2).await;
    let mut load = charge_load(&server, &accounts, 2, 5, "before").await;
    assert!(load.unavailable.is_empty(), "503 before the fault");
    let filler = match &mount {
        Ok(_) => {
            println!("full disk: a real 8 MiB tmpfs, filled up");
            Some(fill(&data))
        }
        Err(why) => {
            note_fallback("full disk", why);
            server
                .faults
                .arm(Op::Append, Fault::DiskFull, Times::UntilCleared);
            None
        }
    };
    // Until the disk refuses: the WAL may still have room for a few appends.
    let mut refused = 0;
    for round in 0..200 {
        let during = charge_load(&server, &accounts, 2, 10, &format!("full{round}")).await;
        refused += during.unavailable.len();
        load = load.merge(during);
        if refused >= 10 {
            break;
        }
    }
    assert!(refused >= 10, "the full disk never refused an append");
    let (status, summary) = server.summary(&accounts[0], None).await;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "reads answer from the views: {summary}"
    );
    match filler {
        Some(filler) => std::fs::remove_file(filler).expect("free the space"),
        None => server.faults.clear(),
    }
    let requests = settle_and_check(&server, &accounts, load).await;
    println!("full disk: {refused} appends refused, {requests} requests");
    server.stop().await;
}

/// Regression: a view commit that failed on a full disk stopped the projector for good (its
/// thread returned the SQLite error), so the views never moved again until a restart. Now
/// the view thread keeps its batch and tries the commit again, and the views catch up by
/// themselves once space is freed. The events are on another disk here: only the views'
/// disk fills, so every command succeeds and only the views wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_full_view_disk_stopped_the_projector_for_good() {
    let dir = TempDir::new().expect("a temporary directory");
    let views = dir.path().join("views");
    std::fs::create_dir_all(&views).expect("mkdir");
    let _mount = match Mount::tmpfs(&views, "4m") {
        Ok(mount) => mount,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "mounting a tmpfs is not permitted ({why}); CI must allow it"
            );
            eprintln!("\n*** SKIPPING: mounting a tmpfs is not permitted here ({why}) ***\n");
            return;
        }
    };
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).expect("open the store"));
    let mut server = Server::start(store, &views).await;
    let accounts = open_accounts(&server, "v", 2).await;
    server.wait_views_caught_up().await;
    let filler = fill(&views);
    let load = charge_load(&server, &accounts, 2, 50, "viewsfull").await;
    assert!(
        load.unavailable.is_empty(),
        "commands do not need the views' disk"
    );
    // The views could not commit: they are behind, and the projector is still running.
    assert!(
        server
            .projectors_ended(Duration::from_secs(1))
            .await
            .is_none(),
        "the projector stopped on a full disk"
    );
    std::fs::remove_file(filler).expect("free the space");
    let requests = settle_and_check(&server, &accounts, load).await;
    println!("views' disk full: {requests} requests");
    server.stop().await;
}

/// A row of the SQLite file overwritten with garbage behind the ledger's back (a damaged
/// disk, a bad restore): a node starting on it reports it everywhere it is read, and keeps
/// serving the accounts it does not touch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_in_the_sqlite_file_is_reported_and_never_skipped() {
    let dir = TempDir::new().expect("a temporary directory");
    let first = server_in(dir.path()).await;
    let accounts = open_accounts(&first, "g", 2).await;
    let stream = ledger_domain::envelope::stream_name(&accounts[0]);
    // The first account's top-up (version 2) becomes garbage.
    let position: i64 = rusqlite::Connection::open(dir.path().join("events.sqlite"))
        .and_then(|connection| {
            connection.query_row(
                "UPDATE events SET payload = x'00ff6e6f7420616e20656e76656c6f7065'
                 WHERE version = 2
                   AND stream_id = (SELECT id FROM streams WHERE name = ?1)
                 RETURNING position",
                [&stream],
                |row| row.get(0),
            )
        })
        .expect("damage a row");
    first.stop().await;

    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&dir.path().join("events.sqlite")).expect("open the damaged store"),
    );
    let mut server = Server::start(store, &dir.path().join("views-after")).await;
    server
        .assert_projector_stopped_at(&stream, u64::try_from(position).expect("a position"))
        .await;
    let (status, body) = server.charge(&accounts[0], "on-garbage").await;
    assert_unavailable(status, &body);
    let (status, body) = server
        .get(
            &format!("/v1/accounts/{}/events", accounts[0]),
            Role::Support,
        )
        .await;
    assert_unavailable(status, &body);
    let (status, body) = server.get("/v1/audit/events", Role::Finance).await;
    assert_unavailable(status, &body);
    // The other account's commands do not read the damaged row.
    let (status, body) = server.charge(&accounts[1], "elsewhere").await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    server.stop().await;
}
