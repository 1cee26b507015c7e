//! The cluster shape of SPEC section 9 on a real PostgreSQL: three `ledger serve` nodes on one
//! database, each with its own data directory for its views. 32 executors charge one
//! 1,000-credit account, 1 credit at a time, every charge sent to a random node and then
//! again to another one; a node is SIGKILLed in the middle of the load and restarted. The run
//! ends with exactly 1,000 charges, no overdraft, identical bodies for the retries, every
//! node's views equal to a replay, and a verified shared history.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const NODES: usize = 3;
const CLIENTS: usize = 32;
const CREDITS: u64 = 1_000;
/// More charges than credits, so that the last ones must be refused.
const CHARGES: usize = 1_150;
/// Which node is killed, and after how many charges.
const VICTIM: usize = 1;
const KILL_AFTER: usize = 300;

/// A database of its own on the test server, dropped at the end.
pub(crate) struct TestDatabase {
    admin_url: String,
    name: String,
    pub(crate) url: String,
}

impl TestDatabase {
    /// `None` (after saying why) when no PostgreSQL answers and `CI` is not set; with `CI`
    /// set a missing server fails the test.
    pub(crate) async fn create() -> Option<TestDatabase> {
        let admin_url = std::env::var("LEDGER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let client = match connect(&admin_url).await {
            Ok(client) => client,
            Err(err) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but PostgreSQL at {admin_url} does not answer: {err}"
                );
                eprintln!(
                    "SKIPPED: no PostgreSQL at {admin_url} ({err}); set LEDGER_TEST_POSTGRES"
                );
                return None;
            }
        };
        let name = format!("ledger_e2e_{}", uuid_simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let url = with_database(&admin_url, &name);
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    pub(crate) async fn drop_now(self) {
        if let Ok(client) = connect(&self.admin_url).await {
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn uuid_simple() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base
        .find("://")
        .map(|scheme| scheme + 3)
        .and_then(|start| base[start..].find('/').map(|slash| start + slash))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Runs `ledger ARGS` to completion and returns (success, stdout, stderr).
pub(crate) fn ledger(args: &[&str]) -> (bool, String, String) {
    let output = ledger_command()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ledger");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The nodes' base URLs as the clients see them; a restarted node gets a new port.
type Bases = Arc<RwLock<Vec<Option<String>>>>;

/// Sends one charge to node `node`, and to the others in turn while a node cannot be
/// reached (it may be the one being killed): (status, body) of the first definitive answer.
async fn charge_somewhere(
    http: &reqwest::Client,
    bases: &Bases,
    node: usize,
    body: &Value,
) -> (u16, Value) {
    for attempt in 0..200 {
        let base = bases.read().expect("bases")[(node + attempt) % NODES].clone();
        let Some(base) = base else { continue };
        let sent = http
            .post(format!("{base}/v1/accounts/hot/charges"))
            .bearer_auth(Role::Executor.token())
            .json(body)
            .send()
            .await;
        let Ok(response) = sent else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let status = response.status().as_u16();
        let Ok(text) = response.text().await else {
            continue;
        };
        // A node shutting down or a store hiccup is not an answer: try another node.
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        return (status, json);
    }
    panic!("no node answered charge {body}");
}

pub(crate) fn start_options(url: &str) -> Options {
    Options {
        store: Some(url.to_string()),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_one_postgres_spend_exactly_the_balance_through_a_node_loss() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let url = database.url.clone();
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(Some(Server::start_with(start_options(&url)).await));
    }
    let api = nodes[0].as_ref().expect("node 0").api.clone();
    open(&api, "hot").await;
    let mut body = subscription("enterprise", Some("monthly"), "ent-hot");
    body["allowance"] = json!(CREDITS);
    let ready = api
        .post(Role::Billing, "/v1/accounts/hot/subscription", body)
        .await
        .expect(200);
    assert_eq!(ready["balance"]["total"], CREDITS);

    let bases: Bases = Arc::new(RwLock::new(
        nodes
            .iter()
            .map(|node| node.as_ref().map(|node| node.api.url("")))
            .collect(),
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(CLIENTS);
    for client in 0..CLIENTS {
        let bases = bases.clone();
        let next = next.clone();
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client");
            let mut answers = BTreeMap::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= CHARGES {
                    return answers;
                }
                let id = format!("charge-{n:04}");
                let body = json!({"charge_id": id, "run_id": "run-hot",
                                  "node_id": format!("node-{n}"), "model": "assistant-chat"});
                // A pseudo-random first node; the retry goes to another one.
                let first_node = (n * 7 + client) % NODES;
                let first = charge_somewhere(&http, &bases, first_node, &body).await;
                let second = charge_somewhere(&http, &bases, first_node + 1, &body).await;
                answers.insert(id, [first, second]);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Kill one node in the middle of the load, then bring it back on its own data.
    eventually(
        Duration::from_secs(120),
        "the load reaches the kill point",
        || {
            let done = done.clone();
            async move { (done.load(Ordering::Relaxed) >= KILL_AFTER).then_some(()) }
        },
    )
    .await;
    let victim = nodes[VICTIM].take().expect("the victim node");
    bases.write().expect("bases")[VICTIM] = None;
    let dir = victim.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = Server::start_in(dir, start_options(&url)).await;
    bases.write().expect("bases")[VICTIM] = Some(restarted.api.url(""));
    nodes[VICTIM] = Some(restarted);

    let mut answers = BTreeMap::new();
    for client in clients {
        answers.extend(client.await.expect("a client task"));
    }
    assert_eq!(answers.len(), CHARGES);
    let mut succeeded = HashSet::new();
    let mut refused = 0;
    let mut last_position = 0;
    for (id, [(status_a, body_a), (status_b, body_b)]) in &answers {
        match (status_a, status_b) {
            (201 | 200, 200) => {
                assert_eq!(body_a, body_b, "{id}: the retry answers the first body");
                assert_eq!(body_a["cost"], 1);
                last_position = last_position.max(position(body_a));
                succeeded.insert(id.clone());
            }
            (402, 402) => {
                assert_eq!(body_a["error"]["code"], "INSUFFICIENT_CREDITS", "{id}");
                refused += 1;
            }
            other => panic!("{id}: answered {other:?}: {body_a} / {body_b}"),
        }
    }
    assert_eq!(
        succeeded.len(),
        CREDITS as usize,
        "exactly the balance is spent"
    );
    assert_eq!(refused, CHARGES - CREDITS as usize);

    // Every node, the restarted one included, catches up to the same zero balance.
    for node in nodes.iter().flatten() {
        let read = summary(&node.api, "hot", last_position).await;
        assert_eq!(read["balance"]["total"], 0, "no overdraft on any node");
    }
    let events = all_events(&api, "hot").await;
    let charged = of_type(&events, "credits_charged");
    assert_eq!(charged.len(), CREDITS as usize, "exactly 1,000 charges");
    let recorded: HashSet<String> = charged
        .iter()
        .map(|event| event["data"]["charge_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        recorded, succeeded,
        "the recorded charges are the acknowledged ones"
    );

    // Stop the nodes; each node's views equal a replay, and the shared history verifies.
    let mut data_dirs: Vec<PathBuf> = Vec::new();
    let mut stopped = Vec::new();
    for node in nodes.into_iter().flatten() {
        let node = node.stop().await;
        data_dirs.push(node.data());
        stopped.push(node);
    }
    for data in &data_dirs {
        let data = data.to_str().expect("a UTF-8 path");
        let (ok, out, err) = ledger(&["audit", "reconcile", "--data", data, "--store", &url]);
        assert!(ok, "reconcile on {data}: {out}\n{err}");
    }
    let scratch = Path::new(&data_dirs[0]);
    let (ok, out, err) = ledger(&[
        "audit",
        "verify",
        "--data",
        scratch.to_str().expect("a UTF-8 path"),
        "--store",
        &url,
    ]);
    assert!(ok, "verify: {out}\n{err}");
    drop(stopped);
    database.drop_now().await;
}
