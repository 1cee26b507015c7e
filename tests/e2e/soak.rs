//! The soak of issue 15: mixed load on two `ledger serve` nodes sharing one store (a
//! PostgreSQL database, or the embedded SQLite file) while a killer SIGKILLs, in turn, the second node (`--projectors external`), the
//! `ledger project` process writing that node's views, and the `ledger schedule` process
//! expiring the holds nobody resolves; each comes back on the same data directory (and port).
//! Every request has its own key and is sent again, to either node, until it is answered.
//! At the end nothing acknowledged is lost or doubled, every invariant of the bank fold holds,
//! the views equal a replay, and the first node's memory is flat (see `check_memory`).
//!
//! CI runs it for `CI_SECONDS`; `LEDGER_SOAK_LONG=1` runs `LONG_SECONDS`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bank::{read_at, seed, Fold, Rng};
use crate::cluster::{ledger, TestDatabase};
use crate::support::*;

const CI_SECONDS: u64 = 25;
const LONG_SECONDS: u64 = 600;
const ACCOUNTS: usize = 8;
const CLIENTS: usize = 8;
/// Seconds between two kills; the victims take turns.
const KILL_EVERY: Duration = Duration::from_secs(4);
/// Holds nobody resolves expire this soon, so the scheduler has work throughout.
const SHORT_TTL: &str = "2s";
/// Seconds a fresh node is watched after loading; its size is the least seen.
const FRESH_SETTLE_S: u64 = 12;
/// How long one request may go unanswered through kills and restarts.
const ANSWER_WITHIN: Duration = Duration::from_secs(90);
/// Lots bought or granted expire this many seconds after (ten-minute run, 25-second run),
/// so the scheduler expires them throughout and the live state stops growing before warm-up
/// ends: a lot that never expires is state the rules keep for ever, and with a third of the
/// mix buying lots, memory that grew with it would measure the mix, not the node.
const LOT_LIFETIME_S: (u64, u64) = (60, 5);

/// Whether this is the ten-minute run (`LEDGER_SOAK_LONG=1`).
fn long_run() -> bool {
    std::env::var_os("LEDGER_SOAK_LONG").is_some_and(|value| value == "1")
}

fn lot_lifetime() -> Duration {
    Duration::from_secs(if long_run() {
        LOT_LIFETIME_S.0
    } else {
        LOT_LIFETIME_S.1
    })
}

/// When a lot bought now expires.
fn lot_expires_at() -> String {
    let lifetime = chrono::TimeDelta::from_std(lot_lifetime()).expect("a short lifetime");
    (chrono::Utc::now() + lifetime).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A loopback port nobody listens on now, for a process that must come back on it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// The processes of the soak, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `serve` with embedded projectors and no scheduler: never killed, its memory sampled.
    Steady,
    /// `serve --projectors external`: killed and restarted on its port.
    Node,
    /// `project --view all` writing the node's views.
    Projector,
    /// `schedule` on the node's views.
    Scheduler,
}

/// One child process and how to start it again.
#[derive(Debug)]
struct Proc {
    role: Kind,
    child: Child,
    args: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn start(role: Kind, args: Vec<String>, log: PathBuf) -> Proc {
        let mut command = ledger_command();
        command.args(&args).env("LEDGER_TOKENS", tokens_env());
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open a log");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("spawn ledger");
        Proc {
            role,
            child,
            args,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then the same command again.
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Proc::start(self.role, self.args.clone(), self.log.clone());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_args(store: &str, data: &Path, port: u16, external: bool) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--store".into(),
        store.into(),
        "--data".into(),
        data.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    if external {
        args.extend(["--projectors".into(), "external".into()]);
    } else {
        args.push("--no-scheduler".into());
    }
    args
}

/// Resident memory of a process in kB, from `/proc`.
fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS")
}

/// One `kB` line of `/proc/PID/status`.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc status")
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("a {field} line"))
}

/// Where a process's resident memory is: heap and stacks (anonymous), mapped files (the
/// binary's code, SQLite's shared WAL index), shared memory. Printed beside the RSS so a
/// difference between two nodes can be told apart from code pages one of them touched.
fn rss_parts(pid: u32) -> String {
    ["RssAnon", "RssFile", "RssShmem"]
        .map(|field| format!("{field} {} kB", proc_status_kb(pid, field)))
        .join(", ")
}

/// Waits until `/healthz` answers on `base`.
async fn healthy(http: &reqwest::Client, base: &str, proc_: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(reply) = http.get(format!("{base}/healthz")).send().await {
            if reply.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{base} never became healthy; log:\n{}",
            proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One keyed command, sent until it is answered: a connection error, a 503 or a timeout is
/// not an answer (the node may be dead, or its store busy), so the same request goes again to
/// a node picked in turn. Returns the status and body of the answer.
async fn until_answered(
    http: &reqwest::Client,
    bases: &[String],
    first_node: usize,
    role: Role,
    path: &str,
    body: &Value,
    unanswered: &Retries,
) -> (u16, Value) {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let base = &bases[(first_node + attempt) % bases.len()];
        attempt += 1;
        let sent = http
            .post(format!("{base}{path}"))
            .bearer_auth(role.token())
            .json(body)
            .send()
            .await;
        let why = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(text) if status != 503 => {
                        let json = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("{path}: {status} is not JSON: {text}"));
                        return (status, json);
                    }
                    Ok(text) => format!("503 {}", unavailable_reason(&text)),
                    Err(_) => "cut off in the answer".to_string(),
                }
            }
            Err(err) if err.is_timeout() => "timed out".to_string(),
            Err(_) => "no connection".to_string(),
        };
        *unanswered.lock().expect("retries").entry(why).or_default() += 1;
        assert!(
            started.elapsed() < ANSWER_WITHIN,
            "{path} {body}: no answer in {ANSWER_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why requests had to be sent again, and how often.
type Retries = Mutex<BTreeMap<String, usize>>;

/// A 503's message with its numbers taken out, so that like reasons count together.
fn unavailable_reason(text: &str) -> String {
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|json| json["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string());
    message
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(120)
        .collect()
}

/// What the clients were told, for the end: every acknowledged key.
#[derive(Debug, Default)]
struct Acknowledged {
    /// account → charge ids answered 201.
    charges: HashMap<usize, Vec<String>>,
    /// account → purchase ids answered 201.
    top_ups: HashMap<usize, Vec<String>>,
    /// account → hold ids answered 201.
    holds: HashMap<usize, Vec<String>>,
    /// account → (path, body) of its first acknowledged charge, to replay on a fresh node.
    first_charge: HashMap<usize, (String, Value)>,
    counts: BTreeMap<String, usize>,
}

fn account_id(account: usize) -> String {
    format!("soak-{account}")
}

/// One client: a seeded mix until `running` goes false.
async fn client(
    bases: Arc<Vec<String>>,
    mut rng: Rng,
    client: usize,
    running: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Acknowledged>>,
    unanswered: Arc<Retries>,
) -> usize {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    // Holds this client placed and may still resolve itself.
    let mut open_holds: Vec<(usize, String)> = Vec::new();
    let mut sent = 0;
    while running.load(Ordering::Relaxed) {
        let n = sent;
        sent += 1;
        let account = rng.below(ACCOUNTS as u64) as usize;
        let id = account_id(account);
        let node = rng.below(bases.len() as u64) as usize;
        let key = format!("{client}-{n}");
        let roll = rng.below(100);
        let (kind, role, path, body) = match roll {
            0..=49 => (
                "charge",
                Role::Executor,
                format!("/v1/accounts/{id}/charges"),
                json!({"charge_id": format!("c-{key}"), "run_id": "soak", "node_id": "n",
                       "model": "flux-schnell", "images": rng.between(1, 2)}),
            ),
            50..=64 => (
                "hold",
                Role::Executor,
                format!("/v1/accounts/{id}/holds"),
                json!({"hold_id": format!("h-{key}"), "run_id": "soak", "node_id": "n",
                       "model": "kling-2", "seconds": rng.between(1, 3), "ttl": SHORT_TTL}),
            ),
            65..=79 if !open_holds.is_empty() => {
                let (account, hold_id) =
                    open_holds.swap_remove(rng.below(open_holds.len() as u64) as usize);
                let id = account_id(account);
                let (kind, verb, body) = if rng.chance(50) {
                    ("capture", "capture", json!({"seconds": 1}))
                } else {
                    ("release", "release", json!({}))
                };
                (
                    kind,
                    Role::Executor,
                    format!("/v1/accounts/{id}/holds/{hold_id}/{verb}"),
                    body,
                )
            }
            80..=94 => (
                "top_up",
                Role::Billing,
                format!("/v1/accounts/{id}/top-ups"),
                json!({"purchase_id": format!("p-{key}"), "credits": rng.between(50, 150),
                       "expires_at": lot_expires_at()}),
            ),
            _ => (
                "grant",
                Role::Support,
                format!("/v1/accounts/{id}/grants"),
                json!({"grant_id": format!("g-{key}"), "credits": 20, "reason": "soak",
                       "expires_at": lot_expires_at()}),
            ),
        };
        let account = path
            .strip_prefix("/v1/accounts/soak-")
            .and_then(|rest| rest.split('/').next())
            .and_then(|number| number.parse().ok())
            .expect("an account in the path");
        let (status, answer) =
            until_answered(&http, &bases, node, role, &path, &body, &unanswered).await;
        let outcome = match (kind, status) {
            (_, 200 | 201) => "ok",
            ("charge" | "hold", 402) => "insufficient",
            // Expired by the scheduler first: the hold resolves once, by whoever came first.
            ("capture" | "release", 409) if answer["error"]["code"] == "HOLD_CLOSED" => "closed",
            _ => panic!("{path} {body}: answered {status}: {answer}"),
        };
        let mut acknowledged = acknowledged.lock().expect("acknowledged");
        *acknowledged
            .counts
            .entry(format!("{kind} {outcome}"))
            .or_default() += 1;
        if outcome != "ok" {
            continue;
        }
        match kind {
            "charge" => {
                acknowledged
                    .first_charge
                    .entry(account)
                    .or_insert_with(|| (path.clone(), body.clone()));
                acknowledged
                    .charges
                    .entry(account)
                    .or_default()
                    .push(body["charge_id"].as_str().expect("id").into());
            }
            "top_up" => acknowledged
                .top_ups
                .entry(account)
                .or_default()
                .push(body["purchase_id"].as_str().expect("id").into()),
            "hold" => {
                let hold_id = body["hold_id"].as_str().expect("id").to_string();
                acknowledged
                    .holds
                    .entry(account)
                    .or_default()
                    .push(hold_id.clone());
                // Some holds are left for the scheduler to expire.
                if rng.chance(60) {
                    open_holds.push((account, hold_id));
                }
            }
            _ => {}
        }
    }
    sent
}

/// `part` of `whole` in tenths of a percent, printed: integers, as everywhere in this code.
fn percent(part: i128, whole: i128) -> String {
    let tenths = part * 1000 / whole;
    // The sign is written apart: -0.6% has no tens to carry it.
    let sign = if tenths < 0 { "-" } else { "" };
    format!("{sign}{}.{}%", (tenths / 10).abs(), (tenths % 10).abs())
}

/// Memory is flat: after warm-up, the steady node's RSS grows by no more than `bound_percent`
/// of its size then, and by no more than that beyond what the state written in the meantime
/// explains.
///
/// Plain growth is bounded because a node must not grow with its history: the command
/// handler keeps only an account's recent charges and resolved holds whole and spills older
/// ones to a fingerprint, and the mix's lots expire (`LOT_LIFETIME_S`), so the live state
/// stops growing before warm-up ends. Before records were spilled, every charge a node had
/// seen stayed in memory at about 1.3 kB, and plain growth after warm-up was 26% to 38%.
///
/// Growth beyond the state is bounded as well: a node is started afresh on the same history
/// twice, once at the end of warm-up and once at the end, and loads every account and view;
/// what it grows between the two is what the state explains. Each fresh node is set beside
/// the steady node's median over the samples just before, under the same load, so what the
/// two comparisons share cancels out: the caches only a node that served the writes fills,
/// which are full within seconds and bounded (the command handler's first answers and the
/// SQLite writer's window of recent events), and the buffers of requests in flight. Single
/// samples were too noisy: the steady node moves by ±5 MB from one second to the next under
/// load, and a fresh node measured a second after loading still held up to 7 MB of load
/// buffers, so each side is a median (steady) or the settled size (fresh).
///
/// The gap at the end is also held under `gap_percent`, so that a fixed cost cannot grow
/// large unnoticed either. Without `bound_percent` (a short run, whose warm-up point comes
/// while the caches still fill) only the gap is checked.
fn check_memory(
    label: &str,
    warm: Footprint,
    end: Footprint,
    bound_percent: Option<u64>,
    gap_percent: u64,
) {
    let grown = i128::from(end.steady_kb) - i128::from(warm.steady_kb);
    let state = i128::from(end.fresh_kb) - i128::from(warm.fresh_kb);
    let beyond = grown - state;
    let base = i128::from(warm.steady_kb);
    println!(
        "soak on {label}: steady node RSS {} kB after warm-up ({}s), {} kB at the end ({}s): {} \
         growth; a fresh node on the same history: {} kB then, {} kB at the end ({} growth); \
         growth beyond the state: {} kB, {} of the warm size (bound {} for both); steady \
         against fresh at the end: {} (bound {gap_percent}%)",
        warm.steady_kb,
        warm.at.as_secs(),
        end.steady_kb,
        end.at.as_secs(),
        percent(grown, base),
        warm.fresh_kb,
        end.fresh_kb,
        percent(state, i128::from(warm.fresh_kb)),
        beyond,
        percent(beyond, base),
        bound_percent.map_or("none in a short run".to_string(), |bound| format!(
            "{bound}%"
        )),
        percent(
            i128::from(end.steady_kb) - i128::from(end.fresh_kb),
            i128::from(end.fresh_kb)
        ),
    );
    if let Some(bound_percent) = bound_percent {
        assert!(
            grown * 100 <= base * i128::from(bound_percent),
            "after warm-up the steady node grew {grown} kB, over {bound_percent}% of its {base} \
             kB then: memory is not flat"
        );
        assert!(
            beyond * 100 <= base * i128::from(bound_percent),
            "after warm-up the steady node grew {beyond} kB more than a fresh node on the same \
         history did, over {bound_percent}% of its {base} kB then: memory grew with uptime, not \
         with state"
        );
    }
    assert!(
        end.steady_kb * 100 <= end.fresh_kb * (100 + gap_percent),
        "the steady node holds {} kB, more than {gap_percent}% above the {} kB of a fresh \
         node on the same history",
        end.steady_kb,
        end.fresh_kb
    );
}

/// The steady node's resident memory beside a fresh node's on the same history, at `at`
/// into the run.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    at: Duration,
    steady_kb: u64,
    fresh_kb: u64,
}

/// Starts a node afresh on `store` in `dir/name`, loads every account into its command
/// handler with a replay (which writes nothing) and its views up to `position`, and returns
/// its RSS in kB. The node is stopped on return.
async fn fresh_node_rss(
    store: &str,
    dir: &Path,
    name: &str,
    first_charge: &HashMap<usize, (String, Value)>,
    position: u64,
) -> u64 {
    let port = free_port();
    let fresh = Proc::start(
        Kind::Steady,
        serve_args(store, &dir.join(name), port, false),
        dir.join(format!("{name}.log")),
    );
    let base = format!("http://127.0.0.1:{port}");
    healthy(&reqwest::Client::new(), &base, &fresh).await;
    let api = Api::new(&base);
    for account in 0..ACCOUNTS {
        let (path, body) = first_charge
            .get(&account)
            .unwrap_or_else(|| panic!("account {account} had a charge by now"));
        api.post(Role::Executor, path, body.clone())
            .await
            .expect(200);
    }
    read_at(&api, &format!("/v1/accounts/{}", account_id(0)), position).await;
    // Loading leaves the allocator with pages of replay and catch-up buffers, which its
    // background thread gives back over about ten seconds: the settled size is the state's.
    let mut settled = u64::MAX;
    for _ in 0..FRESH_SETTLE_S {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settled = settled.min(rss_kb(fresh.pid()));
    }
    println!(
        "soak: fresh node {name} settled at {settled} kB; now {}",
        rss_parts(fresh.pid())
    );
    settled
}

/// The steady node's typical size over the samples of the `window` before `at`: one
/// sample under load can be off by the few megabytes of requests in flight.
fn steady_kb(samples: &[(Duration, u64)], at: Duration, window: Duration) -> u64 {
    let mut recent: Vec<u64> = samples
        .iter()
        .filter(|(when, _)| *when <= at && at.saturating_sub(*when) <= window)
        .map(|(_, kb)| *kb)
        .collect();
    assert!(
        !recent.is_empty(),
        "no steady sample within {window:?} of {at:?}"
    );
    recent.sort_unstable();
    recent[recent.len() / 2]
}

/// The footprint at the end of warm-up: a fresh node loads the history written so far, while
/// the load goes on, beside the steady node's samples of the `window` before.
async fn warm_footprint(
    store: &str,
    dir: &Path,
    steady_api: &Api,
    acknowledged: &Mutex<Acknowledged>,
    samples: &[(Duration, u64)],
    window: Duration,
) -> Footprint {
    let first_charge = acknowledged
        .lock()
        .expect("acknowledged")
        .first_charge
        .clone();
    let view = steady_api
        .get(Role::Finance, &format!("/v1/accounts/{}", account_id(0)))
        .await
        .expect(200);
    let position = view["position"].as_u64().unwrap_or(0);
    let &(at, _) = samples.last().expect("a sample");
    Footprint {
        at,
        steady_kb: steady_kb(samples, at, window),
        fresh_kb: fresh_node_rss(store, dir, "fresh-warm", &first_charge, position).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_on_postgres_loses_nothing_doubles_nothing_through_kills() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("ledger-soak-")
        .tempdir()
        .expect("a temporary directory");
    soak("postgres", &database.url, dir).await;
    database.drop_now().await;
}

/// The embedded store shared by four processes: both serve nodes, the projector and the
/// scheduler open the one SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_on_sqlite_loses_nothing_doubles_nothing_through_kills() {
    let dir = tempfile::Builder::new()
        .prefix("ledger-soak-")
        .tempdir()
        .expect("a temporary directory");
    let node_data = dir.path().join("node");
    std::fs::create_dir_all(&node_data).expect("the node's data directory");
    let store = format!("sqlite://{}", node_data.join("events.sqlite").display());
    soak("sqlite", &store, dir).await;
}

async fn soak(label: &str, store: &str, dir: tempfile::TempDir) {
    let long = long_run();
    let duration = Duration::from_secs(if long { LONG_SECONDS } else { CI_SECONDS });
    let store = store.to_string();
    let seed = seed(&format!("soak on {label}"));
    let steady_data = dir.path().join("steady");
    let node_data = dir.path().join("node");
    let (steady_port, node_port) = (free_port(), free_port());
    let log = |name: &str| dir.path().join(format!("{name}.log"));

    let steady = Proc::start(
        Kind::Steady,
        serve_args(&store, &steady_data, steady_port, false),
        log("steady"),
    );
    let http = reqwest::Client::new();
    let steady_base = format!("http://127.0.0.1:{steady_port}");
    let node_base = format!("http://127.0.0.1:{node_port}");
    healthy(&http, &steady_base, &steady).await;
    let node_data_arg = node_data.display().to_string();
    let projector_args: Vec<String> = ["project", "--store", &store, "--data", &node_data_arg]
        .map(String::from)
        .to_vec();
    let scheduler_args: Vec<String> = ["schedule", "--store", &store, "--data", &node_data_arg]
        .map(String::from)
        .to_vec();
    std::fs::create_dir_all(&node_data).expect("the node's data directory");
    let mut victims = vec![
        Proc::start(Kind::Projector, projector_args, log("projector")),
        Proc::start(
            Kind::Node,
            serve_args(&store, &node_data, node_port, true),
            log("node"),
        ),
        Proc::start(Kind::Scheduler, scheduler_args, log("scheduler")),
    ];
    healthy(&http, &node_base, &victims[1]).await;

    let api = Api::new(&steady_base);
    for account in 0..ACCOUNTS {
        let id = account_id(account);
        open(&api, &id).await;
        subscribe(&api, &id, "pro").await;
    }

    let bases = Arc::new(vec![steady_base.clone(), node_base.clone()]);
    let running = Arc::new(AtomicBool::new(true));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let unanswered: Arc<Retries> = Arc::default();
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        clients.push(tokio::spawn(client(
            bases.clone(),
            Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9)),
            index,
            running.clone(),
            acknowledged.clone(),
            unanswered.clone(),
        )));
    }

    // The killer and the memory sampler share the main task.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let mut next_kill = started + KILL_EVERY;
    let mut turn = 0;
    // Warm-up ends a third of the way in: in the ten-minute run the live lots reach their
    // steady count a lot lifetime after the start, the scheduler a little later, and the
    // steady node's samples level off at about 180 s (2026-11-29: 49.5 MB at 120 s, 54.6 MB
    // at 180 s, 55.2 MB at 600 s). At a quarter of the way in, warm-up ended on the step.
    let warm_at = duration / 3;
    // The steady node's size is the median of this many seconds of samples: it moves by
    // ±3 MB from one sample to the next under load, and 30 s medians still moved by 5%.
    let window = warm_at.min(Duration::from_secs(60));
    let mut warm = None;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((started.elapsed(), rss_kb(steady.pid())));
        if warm.is_none() && started.elapsed() >= warm_at {
            warm = Some(
                warm_footprint(&store, dir.path(), &api, &acknowledged, &samples, window).await,
            );
        }
        if Instant::now() >= next_kill {
            let victim = &mut victims[turn % 3];
            victim.kill_and_restart();
            *kills
                .entry(match victim.role {
                    Kind::Node => "serve node",
                    Kind::Projector => "projector",
                    Kind::Scheduler => "scheduler",
                    Kind::Steady => unreachable!("the steady node is never killed"),
                })
                .or_default() += 1;
            if victim.role == Kind::Node {
                healthy(&http, &node_base, victim).await;
            }
            turn += 1;
            next_kill = Instant::now() + KILL_EVERY;
        }
    }
    running.store(false, Ordering::Relaxed);
    let mut requests = 0;
    for client in clients {
        requests += client.await.expect("a client");
    }
    let acknowledged = Arc::try_unwrap(acknowledged)
        .map_err(|_| ())
        .expect("no client left")
        .into_inner()
        .expect("acknowledged");

    // The scheduler expires what is left open and every lot; then every node's views equal
    // the replay (a summary does not count a lot past its expiry, which the fold cannot
    // know until the expiry is written).
    let mut charges = 0;
    let mut events = 0;
    let mut expired = 0;
    let mut last_position = 0;
    for account in 0..ACCOUNTS {
        let id = account_id(account);
        let within = Duration::from_secs(60) + lot_lifetime();
        let fold = eventually(within, "open holds and lots to expire", || {
            let api = api.clone();
            let id = id.clone();
            async move {
                let stream = all_events(&api, &id).await;
                let fold = Fold::of(&id, &stream);
                (fold.held() == 0 && fold.lots() == 0).then_some((fold, stream))
            }
        })
        .await;
        let (fold, stream) = fold;
        for charge_id in acknowledged.charges.get(&account).into_iter().flatten() {
            assert_eq!(
                fold.charge_events.get(charge_id),
                Some(&1),
                "{id}: acknowledged charge {charge_id} is recorded exactly once"
            );
        }
        let acked_charges = acknowledged.charges.get(&account).map_or(0, Vec::len);
        assert_eq!(
            fold.charge_events.len(),
            acked_charges,
            "{id}: every recorded charge was acknowledged (each request was answered)"
        );
        for purchase_id in acknowledged.top_ups.get(&account).into_iter().flatten() {
            assert_eq!(
                stream
                    .iter()
                    .filter(|e| e["type"] == "top_up_purchased"
                        && e["data"]["purchase_id"] == purchase_id.as_str())
                    .count(),
                1,
                "{id}: acknowledged top-up {purchase_id} recorded once"
            );
        }
        let placed = of_type(&stream, "hold_placed").len();
        assert_eq!(
            placed,
            acknowledged.holds.get(&account).map_or(0, Vec::len),
            "{id}: every acknowledged hold placed once"
        );
        for base in bases.iter() {
            let view = read_at(
                &Api::new(base),
                &format!("/v1/accounts/{id}"),
                fold.position,
            )
            .await;
            fold.check_summary(&id, &view);
        }
        last_position = last_position.max(fold.position);
        charges += fold.charge_events.len();
        events += fold.version;
        expired += of_type(&stream, "hold_expired").len();
    }
    println!(
        "soak on {label} ({}s, seed {seed}): {requests} requests by {CLIENTS} clients, sent again after {:?}; \
         kills {kills:?}; {events} events, \
         {charges} charges, {expired} holds expired by the scheduler; outcomes {:?}",
        duration.as_secs(),
        unanswered.lock().expect("retries"),
        acknowledged.counts
    );
    println!(
        "soak on {label}: steady node RSS samples (s, kB): {:?}",
        samples
            .iter()
            .map(|(at, kb)| (at.as_secs(), *kb))
            .collect::<Vec<_>>()
    );
    assert!(
        kills.values().sum::<usize>() >= 3,
        "each victim was killed: {kills:?}"
    );
    assert!(expired > 0, "the scheduler expired holds through its kills");
    // The steady node's size is taken from the samples of the end of the load, as the warm
    // one was taken under load: the checks above read every event many times over, and the
    // allocator keeps that high-water mark for a while.
    println!(
        "soak on {label}: steady node now {}",
        rss_parts(steady.pid())
    );
    let &(end_at, _) = samples.last().expect("a sample");
    let end = Footprint {
        at: end_at,
        steady_kb: steady_kb(&samples, end_at, window),
        fresh_kb: fresh_node_rss(
            &store,
            dir.path(),
            "fresh-end",
            &acknowledged.first_charge,
            last_position,
        )
        .await,
    };
    // The 10% growth after warm-up holds for the ten-minute run. A 25 s run reaches
    // its warm-up point 8 s in, while the bounded caches are still filling (its growth
    // beyond the state spread from -4.8% to +12.7% on 2026-11-29), so it checks the gap at
    // its end only, at 25% (+0.2% to +7.8% on SQLite, 2026-11-28): both nodes are close to
    // their start-up size, where what is in flight weighs more. Ten-minute runs ended from
    // +3.5% to +13.3% above a fresh node, and are allowed 15%.
    check_memory(
        label,
        warm.expect("a sample after warm-up"),
        end,
        long.then_some(10),
        if long { 15 } else { 25 },
    );

    // Offline: both nodes' views equal a replay, and the shared history verifies.
    drop(victims);
    drop(steady);
    for data in [&steady_data, &node_data] {
        let data = data.to_str().expect("a UTF-8 path");
        let (ok, out, err) = ledger(&["audit", "reconcile", "--data", data, "--store", &store]);
        assert!(ok, "reconcile on {data}: {out}\n{err}");
    }
    let (ok, out, err) = ledger(&[
        "audit",
        "verify",
        "--data",
        steady_data.to_str().expect("a UTF-8 path"),
        "--store",
        &store,
    ]);
    assert!(ok, "verify: {out}\n{err}");
}
