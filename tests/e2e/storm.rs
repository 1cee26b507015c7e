//! A retry storm: executors replaying charges that are already done, all at once. A replay is
//! answered from what the command handler holds (no store read), so 20,000 of them leave the
//! server's threads and open files where they were, and every one answers the first body.

use std::sync::Arc;

use serde_json::Value;

use crate::support::*;

const CHARGES: usize = 200;
const REPLAYS: usize = 20_000;
const CLIENTS: usize = 64;

/// Threads and open file descriptors of a process, from `/proc`.
fn threads_and_files(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|rest| rest.trim().parse().ok())
        .expect("a Threads line");
    let files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count() as u64;
    (threads, files)
}

/// Each client replays its share of the charges `rounds` times and checks every answer.
async fn replay(clients: &[Api], first: &Arc<Vec<(Value, Value)>>, rounds: usize) {
    let mut tasks = Vec::new();
    for (index, api) in clients.iter().enumerate() {
        let api = api.clone();
        let first = first.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                let (body, answer) = &first[(index + round * CLIENTS) % first.len()];
                let again = charge(&api, "storm", body.clone()).await.expect(200);
                assert_eq!(&again, answer, "a replay answers the first body");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a replaying client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_replays_leave_threads_and_open_files_where_they_were() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "storm").await;
    let mut first = Vec::with_capacity(CHARGES);
    for n in 0..CHARGES {
        let body = charge_body(&format!("c{n}"), "assistant-chat", None);
        let answer = charge(api, "storm", body.clone()).await.expect(201);
        first.push((body, answer));
    }
    let first = Arc::new(first);
    // The clients' connections stay open throughout, so they count in both samples.
    let clients: Vec<Api> = (0..CLIENTS).map(|_| api.fresh()).collect();
    replay(&clients, &first, 4).await;
    let (threads_before, files_before) = threads_and_files(server.pid());
    replay(&clients, &first, REPLAYS / CLIENTS).await;
    let (threads_after, files_after) = threads_and_files(server.pid());
    assert!(
        threads_after <= threads_before + 2,
        "threads grew from {threads_before} to {threads_after}"
    );
    assert!(
        files_after <= files_before + 8,
        "open files grew from {files_before} to {files_after}"
    );
    // /metrics reports the same resources, so an operator sees them too.
    let metrics = api.get(Role::Support, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text;
    for name in [
        "ledger_process_threads ",
        "ledger_process_open_files ",
        "ledger_process_resident_memory_bytes ",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "{name}in /metrics"
        );
    }
    let events = all_events(api, "storm").await;
    assert_eq!(of_type(&events, "credits_charged").len(), CHARGES);
}
