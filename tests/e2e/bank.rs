//! The Jepsen "bank" workload adapted to credits (issue 15): 16 clients run a seeded random
//! mix of every credit-moving command (charges, holds, captures, releases, refunds, top-ups,
//! grants, renewals, tier changes) on three accounts over real HTTP, retrying some with the
//! same idempotency key. Every read of an account's events is folded (`bank/fold.rs`),
//! independently of the domain crate, and checked: contiguous versions, no bucket below zero, every hold
//! resolved at most once, every recorded forfeit equal to what its bucket had left. A checker
//! pauses one account at a time and holds the views (summary) and the server's replay
//! (explain) to the fold: granted − charged + refunded − forfeited = balance + held. At the end
//! `ledger audit reconcile` and `verify` run on every node's data. It runs on the SQLite
//! store, on PostgreSQL, and on three nodes sharing one PostgreSQL database.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::RwLock;

use crate::cluster::{ledger, start_options, TestDatabase};
use crate::support::*;

mod fold;
pub use fold::{seed, Fold, Rng};

const ACCOUNTS: [&str; 3] = ["bank-a", "bank-b", "bank-c"];
const CLIENTS: usize = 16;
/// Random operations per store: enough to interleave every command type many times over,
/// small enough that a store's run stays well under a minute on two cores.
const OPERATIONS: usize = 1_200;
/// Share of keyed commands sent a second time with the same key.
const RETRY_PERCENT: u64 = 25;

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

/// What the clients share: the ids they may act on and what they saw.
#[derive(Debug, Default)]
struct Shared {
    /// (account, charge id) of acknowledged charges, for refunds.
    charges: Vec<(usize, String)>,
    /// charge id → the position its first answer gave.
    charge_positions: HashMap<String, u64>,
    /// (account, hold id, quantity field, quantity) of placed holds.
    holds: Vec<(usize, String, &'static str, u64)>,
    /// Every successful resolution of a hold: (capture|release, answer).
    resolutions: HashMap<String, Vec<(&'static str, Value)>>,
    /// Operation kind and outcome → count.
    counts: BTreeMap<String, usize>,
}

/// The refusals a command may meet in this mix; anything else fails the run.
fn allowed_refusal(kind: &str, status: u16, code: Option<&str>) -> bool {
    matches!(
        (kind, status, code),
        (
            "charge" | "hold",
            402,
            Some("INSUFFICIENT_CREDITS")
        ) | (
            "charge" | "hold",
            403,
            Some("MODEL_TIER_REQUIRED" | "TRIAL_EXHAUSTED" | "TRIAL_EXPIRED")
        ) | ("capture" | "release", 409, Some("HOLD_CLOSED" | "IDEMPOTENCY_CONFLICT"))
            | ("renewal", 409, Some("STALE_RENEWAL"))
            // A tier change to free may land between the pick and the renewal.
            | ("renewal", 400, Some("INVALID_REQUEST"))
    )
}

/// One request of the mix: who sends it, where, what, and whether it has a caller key.
#[derive(Debug)]
struct Request {
    kind: &'static str,
    role: Role,
    path: String,
    body: Option<Value>,
    keyed: bool,
}

impl Request {
    async fn send(&self, api: &Api) -> Reply {
        match &self.body {
            Some(body) => api.post(self.role, &self.path, body.clone()).await,
            None => api.post_empty(self.role, &self.path).await,
        }
    }
}

/// Picks the next operation; `None` for a read.
fn pick(rng: &mut Rng, n: usize, account: usize, shared: &Mutex<Shared>) -> Option<Request> {
    let id = ACCOUNTS[account];
    let base = format!("/v1/accounts/{id}");
    let roll = rng.below(100);
    let (model, field, quantity) = match rng.below(5) {
        0 => ("assistant-chat", None, 0),
        1 => ("flux-schnell", Some("images"), rng.between(1, 3)),
        2 => ("flux-pro", Some("images"), rng.between(1, 2)),
        // Long videos drain an account, so that refusals for want of credits happen too.
        3 => ("kling-2", Some("seconds"), rng.between(1, 120)),
        _ => ("seedance-2.0-i2v", Some("seconds"), rng.between(1, 300)),
    };
    let run = |key: &str| {
        let mut body = json!({"run_id": format!("run-{n}"), "node_id": "node", "model": model});
        body[key] = json!(format!("{key}-{n}"));
        if let Some(field) = field {
            body[field] = json!(quantity);
        }
        body
    };
    let request = match roll {
        0..=29 => Request {
            kind: "charge",
            role: Role::Executor,
            path: format!("{base}/charges"),
            body: Some(run("charge_id")),
            keyed: true,
        },
        30..=41 => {
            let mut body = run("hold_id");
            if field.is_none() {
                // A per-call model has nothing to capture less of.
                body["model"] = json!("kling-2");
                body["seconds"] = json!(quantity.max(1));
            }
            if rng.chance(50) {
                body["ttl"] = json!("1h");
            }
            Request {
                kind: "hold",
                role: Role::Executor,
                path: format!("{base}/holds"),
                body: Some(body),
                keyed: true,
            }
        }
        42..=55 => {
            let held = {
                let shared = shared.lock().expect("shared");
                let mine: Vec<_> = shared.holds.iter().filter(|h| h.0 == account).collect();
                if mine.is_empty() {
                    return None;
                }
                mine[rng.below(mine.len() as u64) as usize].clone()
            };
            let (_, hold_id, field, quantity) = held;
            if rng.chance(55) {
                let mut body = json!({});
                if quantity > 0 {
                    body[field] = json!(rng.between(1, quantity));
                }
                Request {
                    kind: "capture",
                    role: Role::Executor,
                    path: format!("{base}/holds/{hold_id}/capture"),
                    body: Some(body),
                    keyed: true,
                }
            } else {
                Request {
                    kind: "release",
                    role: Role::Executor,
                    path: format!("{base}/holds/{hold_id}/release"),
                    body: None,
                    keyed: true,
                }
            }
        }
        56..=63 => {
            let charge_id = {
                let shared = shared.lock().expect("shared");
                let mine: Vec<_> = shared.charges.iter().filter(|c| c.0 == account).collect();
                if mine.is_empty() {
                    return None;
                }
                mine[rng.below(mine.len() as u64) as usize].1.clone()
            };
            Request {
                kind: "refund",
                role: Role::Executor,
                path: format!("{base}/charges/{charge_id}/refund"),
                body: Some(json!({"reason": "the run failed"})),
                keyed: true,
            }
        }
        64..=72 => Request {
            kind: "top_up",
            role: Role::Billing,
            path: format!("{base}/top-ups"),
            body: Some(json!({"purchase_id": format!("p-{n}"), "credits": rng.between(10, 120)})),
            keyed: true,
        },
        73..=79 => Request {
            kind: "grant",
            role: Role::Support,
            path: format!("{base}/grants"),
            body: Some(
                json!({"grant_id": format!("g-{n}"), "credits": rng.between(5, 50),
                              "reason": "bank"}),
            ),
            keyed: true,
        },
        80..=85 => Request {
            kind: "renewal",
            role: Role::Billing,
            path: format!("{base}/renewals"),
            body: Some(
                json!({"invoice_id": format!("in-{n}"), "period_start": from_now(0),
                              "period_end": from_now(30 * 86_400)}),
            ),
            keyed: true,
        },
        86..=91 => {
            let tier = ["free", "free", "pro", "pro", "business"][rng.below(5) as usize];
            let billing = (tier != "free").then_some("monthly");
            Request {
                kind: "subscription",
                role: Role::Billing,
                path: format!("{base}/subscription"),
                body: Some(subscription(tier, billing, &format!("sub-{n}"))),
                keyed: true,
            }
        }
        _ => return None,
    };
    Some(request)
}

/// Records what an answer means for the shared pools, and checks it.
fn record(shared: &Mutex<Shared>, account: usize, request: &Request, reply: &Reply) {
    let mut shared = shared.lock().expect("shared");
    let outcome = match reply.status {
        200 | 201 => "ok".to_string(),
        status => {
            let code = reply.code();
            assert!(
                allowed_refusal(request.kind, status, code.as_deref()),
                "{} answered {status}: {}",
                reply.request,
                reply.text
            );
            code.unwrap_or_default().to_lowercase()
        }
    };
    *shared
        .counts
        .entry(format!("{} {outcome}", request.kind))
        .or_default() += 1;
    if outcome != "ok" {
        return;
    }
    let body = request.body.clone().unwrap_or(Value::Null);
    match request.kind {
        "charge" => {
            let id = body["charge_id"].as_str().expect("charge_id").to_string();
            let position = position(&reply.json);
            let first = *shared
                .charge_positions
                .entry(id.clone())
                .or_insert(position);
            assert_eq!(
                first, position,
                "{}: a replay answers the first position",
                reply.request
            );
            shared.charges.push((account, id));
        }
        "hold" => {
            let id = body["hold_id"].as_str().expect("hold_id").to_string();
            let (field, quantity) = ["images", "seconds"]
                .into_iter()
                .find_map(|field| body[field].as_u64().map(|q| (field, q)))
                .unwrap_or(("images", 0));
            shared.holds.push((account, id, field, quantity));
        }
        "capture" | "release" => {
            let hold_id = reply.json["hold_id"].as_str().expect("hold_id").to_string();
            shared
                .resolutions
                .entry(hold_id)
                .or_default()
                .push((request.kind, reply.json.clone()));
        }
        _ => {}
    }
}

/// The nodes under test and how to stop them for the offline checks.
#[derive(Debug)]
pub struct Nodes {
    pub servers: Vec<Server>,
    pub store: Option<String>,
}

impl Nodes {
    fn apis(&self) -> Vec<Api> {
        self.servers
            .iter()
            .map(|server| server.api.clone())
            .collect()
    }
}

/// Pauses one account's writers, then holds every node's views and the server's replay to
/// the fold of the account's events.
async fn barrier_check(apis: &[Api], locks: &[RwLock<()>], account: usize, turn: usize) {
    let _paused = locks[account].write().await;
    let id = ACCOUNTS[account];
    let reader = &apis[turn % apis.len()];
    let events = all_events(reader, id).await;
    let fold = Fold::of(id, &events);
    for api in apis {
        let view = read_at(api, &format!("/v1/accounts/{id}"), fold.position).await;
        fold.check_summary(id, &view);
    }
    let explain = read_at(reader, &format!("/v1/accounts/{id}/explain"), fold.position).await;
    fold.check_explain(id, &explain);
}

/// A read once the node's views have reached `position`. A node whose projector is busier
/// than the 2 s a read waits answers 503; that is the documented answer, so ask again.
pub async fn read_at(api: &Api, path: &str, position: u64) -> Value {
    let path = format!("{path}?min_position={position}");
    for _ in 0..30 {
        let reply = api.get(Role::Finance, &path).await;
        if reply.status != 503 {
            return reply.expect(200);
        }
    }
    panic!("{path}: the views never reached position {position}");
}

/// Runs the mix against `nodes` and checks everything; `label` names the store in the output.
pub async fn run_bank(label: &str, nodes: Nodes) {
    let seed = seed(&format!("bank on {label}"));
    let apis = nodes.apis();
    let api = &apis[0];
    let verification =
        json!({"company_name": "Bank GmbH", "country": "DE", "registration_number": "HRB 1"});
    for id in ACCOUNTS {
        open(api, id).await;
        api.post(
            Role::Billing,
            &format!("/v1/accounts/{id}/business-verification"),
            verification.clone(),
        )
        .await
        .expect(202);
        api.post_empty(
            Role::Admin,
            &format!("/v1/accounts/{id}/business-verification/approve"),
        )
        .await
        .expect(200);
        top_up(api, id, &format!("seed-{id}"), 100).await;
    }

    let shared = Arc::new(Mutex::new(Shared::default()));
    let locks: Arc<Vec<RwLock<()>>> = Arc::new(ACCOUNTS.iter().map(|_| RwLock::new(())).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let replays = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));

    let checker = {
        let apis = apis.clone();
        let locks = locks.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let mut turn = 0;
            while running.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                barrier_check(&apis, &locks, turn % ACCOUNTS.len(), turn).await;
                turn += 1;
            }
            turn
        })
    };

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let apis: Vec<Api> = apis.iter().map(Api::fresh).collect();
        let shared = shared.clone();
        let locks = locks.clone();
        let next = next.clone();
        let replays = replays.clone();
        let reads = reads.clone();
        let mut rng = Rng::new(seed ^ (client as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= OPERATIONS {
                    return;
                }
                let account = rng.below(ACCOUNTS.len() as u64) as usize;
                let node = rng.below(apis.len() as u64) as usize;
                let _writing = locks[account].read().await;
                let Some(request) = pick(&mut rng, n, account, &shared) else {
                    // A read: the events so far must fold without breaking an invariant.
                    let id = ACCOUNTS[account];
                    let events = all_events(&apis[node], id).await;
                    Fold::of(id, &events);
                    reads.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let first = request.send(&apis[node]).await;
                record(&shared, account, &request, &first);
                if request.keyed && rng.chance(RETRY_PERCENT) {
                    // The retry goes to another node where there is one.
                    let again = request.send(&apis[(node + 1) % apis.len()]).await;
                    if matches!(first.status, 200 | 201) {
                        assert_eq!(
                            (again.status, &again.json),
                            (200, &first.json),
                            "{}: a retry with the same key answers as a replay",
                            first.request
                        );
                        replays.fetch_add(1, Ordering::Relaxed);
                    } else {
                        record(&shared, account, &request, &again);
                    }
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("a client");
    }
    running.store(false, Ordering::Relaxed);
    let barrier_checks = checker.await.expect("the checker");
    for account in 0..ACCOUNTS.len() {
        barrier_check(&apis, &locks, account, account).await;
    }

    // Every hold resolved at most once as the clients saw it: any second success is a replay
    // of the first (same kind, same answer).
    let shared = Arc::try_unwrap(shared)
        .map_err(|_| ())
        .expect("no client left")
        .into_inner()
        .expect("shared");
    for (hold_id, answers) in &shared.resolutions {
        let (kind, answer) = &answers[0];
        for (other_kind, other) in &answers[1..] {
            assert_eq!(
                (other_kind, other),
                (kind, answer),
                "hold {hold_id} resolved twice"
            );
        }
    }
    let mut totals = (0, 0, 0, 0);
    for id in ACCOUNTS {
        let fold = Fold::of(id, &all_events(api, id).await);
        for (charge_id, count) in &fold.charge_events {
            assert_eq!(*count, 1, "{id}: charge {charge_id} recorded once");
            assert_eq!(
                shared.charge_positions.get(charge_id),
                fold.charge_positions.get(charge_id),
                "{id}: charge {charge_id} was answered with the position of its event"
            );
        }
        totals.0 += fold.version;
        totals.1 += fold.hold_placed;
        totals.2 += fold.hold_resolutions;
        totals.3 += fold.charge_events.len();
    }
    println!(
        "bank on {label}: {OPERATIONS} operations by {CLIENTS} clients on {} node(s), \
         {} replays, {} reads, {barrier_checks} paused checks; {} events, {} charges, \
         {} holds placed, {} resolved",
        apis.len(),
        replays.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        totals.0,
        totals.3,
        totals.1,
        totals.2,
    );
    println!("bank on {label}: outcomes {:?}", shared.counts);
    for kind in [
        "charge",
        "hold",
        "capture",
        "release",
        "refund",
        "top_up",
        "grant",
        "renewal",
        "subscription",
    ] {
        assert!(
            shared
                .counts
                .get(&format!("{kind} ok"))
                .is_some_and(|n| *n > 0),
            "the mix ran at least one successful {kind}: {:?}",
            shared.counts
        );
    }

    // Offline: each node's views equal a replay, and the history verifies.
    let mut stopped = Vec::new();
    for server in nodes.servers {
        stopped.push(server.stop().await);
    }
    for node in &stopped {
        let data = node.data();
        let data = data.to_str().expect("a UTF-8 path");
        let mut args = vec!["audit", "reconcile", "--data", data];
        if let Some(store) = &nodes.store {
            args.extend(["--store", store.as_str()]);
        }
        let (ok, out, err) = ledger(&args);
        assert!(ok, "reconcile on {data}: {out}\n{err}");
        args[1] = "verify";
        let (ok, out, err) = ledger(&args);
        assert!(ok, "verify on {data}: {out}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_on_the_sqlite_store() {
    let server = Server::start().await;
    run_bank(
        "sqlite",
        Nodes {
            servers: vec![server],
            store: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_on_postgres() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let server = Server::start_with(start_options(&database.url)).await;
    run_bank(
        "postgres",
        Nodes {
            servers: vec![server],
            store: Some(database.url.clone()),
        },
    )
    .await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_on_three_postgres_nodes() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start_with(start_options(&database.url)).await);
    }
    run_bank(
        "three postgres nodes",
        Nodes {
            servers,
            store: Some(database.url.clone()),
        },
    )
    .await;
    database.drop_now().await;
}
