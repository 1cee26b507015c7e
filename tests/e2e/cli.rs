//! The command line against real data: `ledger explain` and `ledger audit
//! export|verify|reconcile` on the data directory of a stopped server agree with what the
//! server answered, and bad flags, unreadable catalogs and bad listen addresses stop
//! `ledger serve` with one line on stderr and a non-zero exit; a running server has
//! transparent huge pages off.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// What a finished command printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ledger ARGS` to completion (killed after 30 s).
pub fn ledger(args: &[&str], scratch: &Path) -> Ran {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let out = scratch.join(format!("cli-{run}.out"));
    let err = scratch.join(format!("cli-{run}.err"));
    let mut child = ledger_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn ledger");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ledger {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Asserts a failed run that said why in exactly one line.
#[track_caller]
pub fn assert_one_line_failure(ran: &Ran, mentions: &str, what: &str) {
    assert!(
        ran.code.is_some_and(|code| code != 0),
        "{what}: exit {:?}, stderr:\n{}",
        ran.code,
        ran.stderr
    );
    let lines: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: one line on stderr, got:\n{}",
        ran.stderr
    );
    assert!(
        lines[0].contains(mentions),
        "{what}: the line should mention {mentions:?}: {}",
        lines[0]
    );
}

#[tokio::test]
async fn explain_and_audit_read_the_data_of_a_stopped_server() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "k1").await;
    open(api, "k2").await;
    top_up(api, "k1", "lot", 1_000).await;
    charge(
        api,
        "k1",
        charge_body("c1", "flux-schnell", Some(("images", 10))),
    )
    .await
    .expect(201);
    charge(
        api,
        "k2",
        charge_body("c2", "flux-pro", Some(("images", 1))),
    )
    .await
    .expect(201);
    let last = charge(api, "k2", charge_body("c3", "assistant-chat", None))
        .await
        .expect(201);
    summary(api, "k2", position(&last)).await;
    let explained = api
        .get(Role::Support, "/v1/accounts/k1/explain")
        .await
        .expect(200);
    let exported = api.get(Role::Finance, "/v1/audit/events").await.text;
    let stopped = server.stop().await;
    assert!(
        stopped.status.success(),
        "serve exits 0 on SIGTERM: {:?}",
        stopped.status
    );
    let data = stopped.data();
    let data = data.to_str().unwrap();
    let scratch = stopped.dir.path();

    let json_run = ledger(&["explain", "k1", "--data", data, "--json"], scratch);
    assert_eq!(json_run.code, Some(0), "{}", json_run.stderr);
    let offline: Value =
        serde_json::from_str(&json_run.stdout).expect("explain --json prints JSON");
    assert_eq!(offline["timeline"], explained["timeline"]);
    assert_eq!(offline["balance"], explained["balance"]);
    assert_eq!(offline["balance"]["total"], 1_480);

    let text_run = ledger(&["explain", "k1", "--data", data], scratch);
    assert_eq!(text_run.code, Some(0), "{}", text_run.stderr);
    assert!(text_run.stdout.contains("k1"), "{}", text_run.stdout);
    assert!(
        text_run.stdout.contains("credits_charged") || text_run.stdout.contains("charge"),
        "{}",
        text_run.stdout
    );
    let at_run = ledger(
        &[
            "explain",
            "k1",
            "--data",
            data,
            "--json",
            "--at",
            explained["timeline"][0]["occurred_at"].as_str().unwrap(),
        ],
        scratch,
    );
    assert_eq!(at_run.code, Some(0), "{}", at_run.stderr);
    let at_open: Value = serde_json::from_str(&at_run.stdout).unwrap();
    assert_eq!(
        (
            at_open["version"].as_u64(),
            at_open["balance"]["total"].as_u64()
        ),
        (Some(1), Some(500))
    );

    let missing = ledger(&["explain", "nobody", "--data", data], scratch);
    assert_one_line_failure(&missing, "nobody", "explain of a missing account");

    let verify = ledger(&["audit", "verify", "--data", data], scratch);
    assert_eq!(verify.code, Some(0), "{}{}", verify.stdout, verify.stderr);
    let events = exported.lines().count();
    assert!(
        verify
            .stdout
            .contains(&format!("verified {events} events in 2 streams")),
        "{}",
        verify.stdout
    );

    let export = ledger(&["audit", "export", "--data", data], scratch);
    assert_eq!(export.code, Some(0), "{}", export.stderr);
    assert_eq!(
        export.stdout, exported,
        "the CLI export equals the HTTP export"
    );
    let csv = ledger(
        &["audit", "export", "--data", data, "--format", "csv"],
        scratch,
    );
    assert_eq!(csv.code, Some(0), "{}", csv.stderr);
    assert!(
        csv.stdout
            .starts_with("position,event_id,stream,version,type"),
        "{}",
        csv.stdout
    );

    let reconcile = ledger(&["audit", "reconcile", "--data", data], scratch);
    assert_eq!(
        reconcile.code,
        Some(0),
        "{}{}",
        reconcile.stdout,
        reconcile.stderr
    );
    assert!(
        reconcile.stdout.contains("reconciled 2 accounts"),
        "{}",
        reconcile.stdout
    );

    let nowhere = scratch.join("no-such-dir");
    let absent = ledger(
        &["audit", "verify", "--data", nowhere.to_str().unwrap()],
        scratch,
    );
    assert_one_line_failure(&absent, "no-such-dir", "audit verify without data");
    assert!(
        !nowhere.exists(),
        "reading tools never create a data directory"
    );
}

#[tokio::test]
async fn explain_refuses_an_at_later_than_now_with_one_line_and_a_non_zero_exit() {
    let server = Server::start().await;
    open(&server.api, "fa").await;
    let stopped = server.stop().await;
    let data = stopped.data();
    let data = data.to_str().unwrap();
    let scratch = stopped.dir.path();
    let future = from_now(3_600);
    let refused = ledger(
        &["explain", "fa", "--data", data, "--json", "--at", &future],
        scratch,
    );
    assert_one_line_failure(&refused, "later than now", "explain --at in the future");
    assert!(refused.stdout.is_empty(), "no answer: {}", refused.stdout);
    assert!(
        refused.stderr.contains("--at"),
        "names the flag: {}",
        refused.stderr
    );
    let past = from_now(0);
    let answered = ledger(
        &["explain", "fa", "--data", data, "--json", "--at", &past],
        scratch,
    );
    assert_eq!(answered.code, Some(0), "{}", answered.stderr);
}

#[test]
fn unknown_flags_subcommands_and_flag_values_exit_non_zero_with_one_line() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let bogus = ledger(&["serve", "--data", data, "--bogus-flag"], dir);
    assert_one_line_failure(&bogus, "--bogus-flag", "an unknown flag");
    let no_command = ledger(&["frobnicate"], dir);
    assert_one_line_failure(&no_command, "frobnicate", "an unknown subcommand");
    let bad_value = ledger(&["serve", "--data", data, "--projectors", "sideways"], dir);
    assert_one_line_failure(&bad_value, "sideways", "a bad flag value");
}

#[test]
fn unreadable_or_invalid_catalogs_stop_serve_with_one_line() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let serve = |catalog: &Path| {
        ledger(
            &[
                "serve",
                "--data",
                data,
                "--listen",
                "127.0.0.1:0",
                "--catalog",
                catalog.to_str().unwrap(),
            ],
            dir,
        )
    };
    let missing = dir.join("missing-catalog.json");
    assert_one_line_failure(
        &serve(&missing),
        "missing-catalog.json",
        "an unreadable catalog",
    );
    let invalid = dir.join("invalid-catalog.json");
    std::fs::write(
        &invalid,
        catalog_with(|c| set_model_field(c, "flux-schnell", "free_trial", json!({"runs": 3}))),
    )
    .unwrap();
    assert_one_line_failure(
        &serve(&invalid),
        "free_trial",
        "a catalog with a trial on a free model",
    );
    let not_json = dir.join("not-json.json");
    std::fs::write(&not_json, "{ plans: ").unwrap();
    assert_one_line_failure(
        &serve(&not_json),
        "not-json.json",
        "a catalog that is not JSON",
    );
}

#[test]
fn bad_listen_addresses_stop_serve_with_one_line() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let bad_listen = ledger(
        &["serve", "--data", data, "--listen", "not-an-address"],
        dir,
    );
    assert_one_line_failure(&bad_listen, "not-an-address", "a bad --listen");
    let bad_port = ledger(
        &["serve", "--data", data, "--listen", "127.0.0.1:99999"],
        dir,
    );
    assert_one_line_failure(&bad_port, "99999", "a port out of range");
}

#[test]
fn a_listen_address_in_use_stops_serve_with_a_non_zero_exit_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.join("data");
    let ran = ledger(
        &["serve", "--data", data.to_str().unwrap(), "--listen", &addr],
        dir,
    );
    assert!(
        ran.code.is_some_and(|code| code != 0),
        "exit {:?}",
        ran.code
    );
    let last = ran.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&addr) && last.starts_with("ledger:"),
        "stderr:\n{}",
        ran.stderr
    );
    let errors: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|line| line.starts_with("ledger:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", ran.stderr);
}

/// The binary turns transparent huge pages off for itself (`huge_pages_off` in main.rs): with
/// them, the heap can be backed by 2 MiB pages, and a node started afresh in the soak (on
/// mimalloc, which asks for them) held three times the anonymous memory it holds without.
/// The kernel reports the process's setting in `/proc/PID/status`.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn regression_huge_pages_made_reserved_memory_resident() {
    let server = Server::start().await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    let setting = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(setting, Some("0"), "status:\n{status}");
}

/// The binary's allocator gives freed pages back to the kernel from background threads
/// (jemalloc's `background_thread`, on by default through the `background_threads` feature):
/// without them, a node that served the ten-minute soak held 32% more memory than a node
/// started afresh on the same history (mimalloc), and the soak's memory check failed. jemalloc
/// names those threads, and the kernel lists every thread's name under `/proc/PID/task`.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn regression_freed_pages_stayed_resident_on_the_serving_node() {
    let server = Server::start().await;
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .expect("the server's threads")
        .map(|task| {
            let comm = task.expect("a thread").path().join("comm");
            std::fs::read_to_string(comm)
                .expect("a thread's name")
                .trim()
                .to_string()
        })
        .collect();
    assert!(
        names.iter().any(|name| name == "jemalloc_bg_thd"),
        "no allocator background thread among {names:?}"
    );
}
