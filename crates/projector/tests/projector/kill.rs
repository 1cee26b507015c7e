//! The kill test: a projector process (`child::projector_child`) is killed with SIGKILL at random
//! moments while events keep arriving. After its last restart has caught up, each view file
//! must be byte-for-byte equal — every row's JSON, version and change position — to a clean
//! rebuild from zero, and equal to the domain's fold of the same events.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant as Clock, SystemTime, UNIX_EPOCH};

use ledger_projector::{ProjectorConfig, Projectors, ViewName, ViewSelection};
use ledger_store::EventStore;
use tokio::sync::watch;

use crate::child::projector_command;
use crate::support::*;

const KILLS: usize = 12;

fn spawn_projector(store: &Path, data: &Path, batch: u64) -> Child {
    let (store, data, batch) = (store.to_str(), data.to_str(), batch.to_string());
    let (Some(store), Some(data)) = (store, data) else {
        panic!("test paths are UTF-8");
    };
    projector_command(&[
        "--store", store, "--data", data, "--view", "all", "--batch", &batch,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the projector child")
}

/// Kills `child` with SIGKILL; fails the test if it had already ended by itself.
fn kill(mut child: Child, round: usize) {
    if let Ok(Some(status)) = child.try_wait() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        panic!("round {round}: the projector ended by itself ({status}): {stderr}");
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert_eq!(status.signal(), Some(9), "round {round}: killed by SIGKILL");
}

fn seed() -> u64 {
    std::env::var("KILL_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64)
        })
}

#[test]
fn a_projector_killed_at_random_moments_ends_equal_to_a_clean_rebuild() {
    let seed = seed();
    eprintln!("kill test seed: {seed} (rerun with KILL_TEST_SEED={seed})");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = temp_dir();
        let (store, store_path) = store_in(dir.path());
        let killed = dir.path().join("killed");

        // Events keep arriving the whole time, in small bursts.
        let (stop_appending, appending) = watch::channel(false);
        let appender_store = Arc::clone(&store);
        let appender = tokio::spawn(async move {
            let mut workload = Workload::new(40, seed);
            let mut appended = 0u64;
            while !*appending.borrow() {
                let append = workload.next_append();
                appender_store
                    .append(&append.stream, append.expected, append.events)
                    .await
                    .expect("append");
                appended += 1;
                if appended.is_multiple_of(25) {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
            workload
        });

        let mut random = Workload::new(1, seed.rotate_left(17));
        let mut positions = Vec::new();
        for round in 0..KILLS {
            let batch = 1 + random.next_random() % 200;
            let child = spawn_projector(&store_path, &killed, batch);
            let alive_ms = 20 + random.next_random() % 400;
            tokio::time::sleep(Duration::from_millis(alive_ms)).await;
            kill(child, round);
            let position = file_position(&killed, ViewName::Balance);
            if let (Some(before), Some(now)) = (positions.last().copied().flatten(), position) {
                assert!(now >= before, "round {round}: the checkpoint went back");
            }
            positions.push(position);
        }
        stop_appending.send_replace(true);
        let workload = appender.await.expect("appender");
        let head = store
            .head_position()
            .await
            .unwrap()
            .expect("events were appended");
        let distinct: std::collections::BTreeSet<_> = positions.iter().flatten().collect();
        assert!(
            distinct.len() >= KILLS / 2,
            "the kills should land while the projector makes progress: {positions:?}"
        );
        assert!(
            positions.iter().flatten().all(|position| *position < head),
            "every kill should land before the projector caught up: {positions:?}, head {head}"
        );

        // The last restart catches up.
        let child = spawn_projector(&store_path, &killed, 64);
        let started = Clock::now();
        while !ViewName::ALL
            .into_iter()
            .all(|view| file_position(&killed, view) == Some(head))
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "catching up took too long"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill(child, KILLS);

        // A clean rebuild from zero, in this process.
        let clean = dir.path().join("clean");
        let projectors = Projectors::start(
            Arc::clone(&store) as Arc<dyn EventStore>,
            &clean,
            ViewSelection::All,
            ProjectorConfig::default(),
        )
        .await
        .unwrap();
        let views = projectors.views().unwrap();
        caught_up(&views, &*store).await;
        assert_views_equal_fold(&views, &workload.writer);
        projectors.stop().await.unwrap();

        for view in ViewName::ALL {
            let survived = file_rows(&killed, view);
            let rebuilt = file_rows(&clean, view);
            assert_eq!(survived.len(), rebuilt.len(), "{view}: rows");
            assert!(
                survived == rebuilt,
                "{view}: the killed projector's file differs"
            );
        }
        eprintln!(
            "kill test: {KILLS} kills at checkpoints {positions:?}, {head} events, {} accounts",
            workload.writer.accounts.len()
        );
    });
}
