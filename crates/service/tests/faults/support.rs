//! The fault tests' server: the real router on a loopback port, over any store wrapped in a
//! [`FaultyStore`], with the real projector's views; an HTTP client for it; load from several
//! clients; and the checks every test ends with (each acknowledged charge stored exactly
//! once, stream versions contiguous, views equal to a replay).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledger_domain::state::Core;
use ledger_domain::usage::{UsageBy, UsageRange, UsageReport};
use ledger_domain::{Account, Catalog, Instant};
use ledger_projector::{ProjectorConfig, Projectors, Views};
use ledger_service::api::{router, AppState};
use ledger_service::clock::SystemClock;
use ledger_service::ledger::Ledger;
use ledger_service::metrics::Metrics;
use ledger_service::pages::read_stream_pages;
use ledger_service::tokens::{Role, Tokens};
use ledger_service::views::{ReadModel, ViewStatus};
use ledger_store::faults::{Faults, FaultyStore};
use ledger_store::EventStore;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Longest any one request may take: an answer later than this counts as a hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Credits every load account is topped up with: far more than any test charges.
pub const TOP_UP: u64 = 1_000_000;

/// The free plan's monthly allowance in the shipped catalog (SPEC section 4): every test
/// account is on it.
pub const FREE_ALLOWANCE: u64 = 500;

/// The projector's views as the service's read model (the binary's `ProjectedViews`, which
/// lives in the binary so that neither crate depends on the other).
#[derive(Debug, Clone)]
pub struct TestViews(pub Views);

#[async_trait]
impl ReadModel for TestViews {
    fn account(&self, account_id: &str) -> Option<Core> {
        self.0.account(account_id)
    }

    fn usage(
        &self,
        _account_id: &str,
        _range: &UsageRange,
        _by: UsageBy,
        _catalog: &Catalog,
    ) -> Option<UsageReport> {
        // No fault test reads usage; the account's views are what they check.
        None
    }

    fn position(&self) -> Option<u64> {
        self.0.position()
    }

    async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        self.0.wait_for(position, timeout).await.is_ok()
    }

    fn due_accounts(&self, _now: Instant) -> Vec<String> {
        // No scheduler runs in these tests.
        Vec::new()
    }

    fn status(&self) -> Vec<ViewStatus> {
        Vec::new()
    }
}

fn token(role: Role) -> String {
    format!("faults-{}-token-0123456789", role.as_str())
}

/// A running service: the router on a loopback port over `FaultyStore(inner)`.
pub struct Server {
    pub base: String,
    pub faults: Faults,
    /// The store behind the faults, to look at what was really written.
    pub inner: Arc<dyn EventStore>,
    pub views: Views,
    projectors: Option<Projectors>,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts the service over `inner`, its views in `views_dir`.
    pub async fn start(inner: Arc<dyn EventStore>, views_dir: &Path) -> Server {
        let faults = Faults::new();
        let store: Arc<dyn EventStore> = Arc::new(FaultyStore::new(inner.clone(), faults.clone()));
        let config = ProjectorConfig {
            // Recovery is checked by waiting for it: keep the projector's backoff short.
            retry_delay_max: Duration::from_millis(200),
            ..ProjectorConfig::default()
        };
        let (views, projectors) =
            ledger_projector::spawn_embedded(store.clone(), views_dir, config)
                .await
                .expect("start the projectors");
        let ledger = Ledger::new(store, Arc::new(Catalog::shipped()), Arc::new(SystemClock));
        let spec = Role::ALL
            .iter()
            .map(|role| format!("{}={}", role.as_str(), token(*role)))
            .collect::<Vec<_>>()
            .join(",");
        let tokens = Tokens::parse(&spec).expect("test tokens");
        let state = AppState::new(
            ledger,
            Arc::new(TestViews(views.clone())),
            Arc::new(tokens),
            Metrics::new(),
            None,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, router(state)).await.expect("serve");
        });
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an http client");
        Server {
            base,
            faults,
            inner,
            views,
            projectors: Some(projectors),
            client,
            server,
        }
    }

    /// Stops serving and the projectors.
    pub async fn stop(mut self) {
        self.server.abort();
        if let Some(projectors) = self.projectors.take() {
            let _ = projectors.stop().await;
        }
    }

    /// How the projectors ended, if they end within `timeout`; `None` while they run.
    pub async fn projectors_ended(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<(), ledger_projector::ProjectorError>> {
        let projectors = self.projectors.as_mut()?;
        let ended = tokio::time::timeout(timeout, projectors.wait())
            .await
            .ok()?;
        self.projectors = None;
        Some(ended)
    }

    async fn send(&self, request: reqwest::RequestBuilder, role: Role) -> (StatusCode, Value) {
        let response = request
            .bearer_auth(token(role))
            .send()
            .await
            .unwrap_or_else(|error| panic!("no answer (a hang or a dropped connection): {error}"));
        let status = response.status();
        let text = response.text().await.expect("the answer's body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, role: Role, body: Value) -> (StatusCode, Value) {
        let request = self.client.post(format!("{}{path}", self.base)).json(&body);
        self.send(request, role).await
    }

    pub async fn get(&self, path: &str, role: Role) -> (StatusCode, Value) {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request, role).await
    }

    /// Opens `account` and tops it up with [`TOP_UP`] credits; panics unless both succeed.
    pub async fn open_funded(&self, account: &str) {
        let (status, body) = self
            .post(
                "/v1/accounts",
                Role::Billing,
                json!({"account_id": account}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "open {account}: {body}");
        let (status, body) = self
            .post(
                &format!("/v1/accounts/{account}/top-ups"),
                Role::Billing,
                json!({"purchase_id": format!("funds-{account}"), "credits": TOP_UP}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "top up {account}: {body}");
    }

    /// One 1-credit charge.
    pub async fn charge(&self, account: &str, charge_id: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/accounts/{account}/charges"),
            Role::Executor,
            json!({
                "charge_id": charge_id,
                "run_id": "run",
                "node_id": format!("node-{charge_id}"),
                "model": "assistant-chat",
            }),
        )
        .await
    }

    /// Asserts that the reads served from the views answer: the summary and an admission
    /// check of a 1-credit run (admitted).
    pub async fn assert_views_answer(&self, account: &str) {
        let (status, summary) = self.summary(account, None).await;
        assert_eq!(status, StatusCode::OK, "the summary: {summary}");
        let (status, admission) = self
            .post(
                &format!("/v1/accounts/{account}/admission"),
                Role::Executor,
                json!({"nodes": [{"node_id": "n1", "type": "assistant", "model": "assistant-chat"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "the admission check: {admission}");
        assert_eq!(admission["admitted"], json!(true), "{admission}");
    }

    /// The account summary, once the views have reached `min_position`.
    pub async fn summary(&self, account: &str, min_position: Option<u64>) -> (StatusCode, Value) {
        let query = min_position.map_or(String::new(), |p| format!("?min_position={p}"));
        self.get(&format!("/v1/accounts/{account}{query}"), Role::Support)
            .await
    }

    /// Retries the charge with the same id until it is acknowledged; its last answer.
    pub async fn charge_until_acknowledged(&self, account: &str, charge_id: &str) -> Value {
        for _ in 0..600 {
            let (status, body) = self.charge(account, charge_id).await;
            assert_acceptable(status, &body);
            if status.is_success() {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("charge {charge_id} on {account} was never acknowledged");
    }

    /// Asserts that the projector stops, within 30 s, with an error naming the event at
    /// `position` of `stream`: a corrupt event is reported, never skipped.
    pub async fn assert_projector_stopped_at(&mut self, stream: &str, position: u64) {
        let ended = self
            .projectors_ended(Duration::from_secs(30))
            .await
            .expect("the projector went on past a corrupt event");
        let error = ended
            .expect_err("the projector stopped without an error")
            .to_string();
        assert!(
            error.contains(&format!("position {position}")) && error.contains(stream),
            "the error names the event: {error}"
        );
    }

    /// Waits until the views have reached the store's head; panics after 60 s.
    pub async fn wait_views_caught_up(&self) {
        let head = self
            .inner
            .head_position()
            .await
            .expect("the store's head")
            .unwrap_or(0);
        self.views
            .wait_for(head, Duration::from_secs(60))
            .await
            .unwrap_or_else(|error| panic!("the views never caught up: {error}"));
    }
}

/// Asserts that an answer is a success or a 503 `UNAVAILABLE` with `Retry-After`'s promise:
/// never a 500, never another error.
pub fn assert_acceptable(status: StatusCode, body: &Value) {
    if status.is_success() {
        return;
    }
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a fault must answer 503, got: {body}"
    );
    assert_eq!(
        body["error"]["code"], "UNAVAILABLE",
        "a fault must answer UNAVAILABLE: {body}"
    );
}

/// Asserts a 503 `UNAVAILABLE`.
pub fn assert_unavailable(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
}

/// What the store really holds for an account: its events replayed.
pub struct Replayed {
    pub core: Core,
    /// How many times each charge id was charged.
    pub charges: BTreeMap<String, usize>,
    pub version: u64,
}

/// Replays `account` from `store`, asserting its versions run 1, 2, 3, ... without gaps.
pub async fn replay(store: &dyn EventStore, account: &str) -> Replayed {
    let mut state = Account::new(account);
    let mut charges = BTreeMap::new();
    let mut version = 0;
    read_stream_pages(
        store,
        &ledger_domain::envelope::stream_name(account),
        1,
        |recorded, _, envelope| {
            assert_eq!(
                recorded.version,
                version + 1,
                "{account}: version {} follows {version}",
                recorded.version
            );
            version = recorded.version;
            if let ledger_domain::events::Event::CreditsCharged(charged) = &envelope.event {
                *charges.entry(charged.charge_id.clone()).or_insert(0) += 1;
            }
            state.apply(envelope.event);
            Ok(true)
        },
    )
    .await
    .unwrap_or_else(|error| panic!("replay {account}: {error}"));
    Replayed {
        core: state
            .core
            .unwrap_or_else(|| panic!("{account} was never opened")),
        charges,
        version,
    }
}

/// The end-of-test checks for `account`, whose acknowledged charges are `acknowledged`: each
/// is stored exactly once and nothing else is, the views (in memory and over HTTP) equal a
/// replay of the store, and the balance is the top-up less one credit per charge.
pub async fn check_account(server: &Server, account: &str, acknowledged: &[String]) {
    server.wait_views_caught_up().await;
    let replayed = replay(server.inner.as_ref(), account).await;
    let expected: BTreeMap<String, usize> = acknowledged.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(
        replayed.charges, expected,
        "{account}: the stored charges are not exactly the acknowledged ones, once each"
    );
    let view = server.views.account(account).expect("the account's views");
    assert_eq!(
        view, replayed.core,
        "{account}: the views differ from a replay"
    );
    let head = server.inner.head_position().await.expect("head");
    let (status, summary) = server.summary(account, head).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let expected_total = TOP_UP + FREE_ALLOWANCE - acknowledged.len() as u64;
    assert_eq!(
        summary["balance"]["total"],
        json!(expected_total),
        "{account}: balance over HTTP: {summary}"
    );
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Load {
    /// Charge ids acknowledged (2xx), by account.
    pub acknowledged: BTreeMap<String, Vec<String>>,
    /// Charges answered 503, to retry with the same id.
    pub unavailable: Vec<(String, String)>,
    pub requests: usize,
}

/// `clients` concurrent clients, each sending `per_client` charges with ids of its own,
/// spread over `accounts`. Every answer must be a success or 503 `UNAVAILABLE`.
pub async fn charge_load(
    server: &Server,
    accounts: &[String],
    clients: usize,
    per_client: usize,
    tag: &str,
) -> Load {
    let done = AtomicBool::new(true);
    load_until(
        server,
        accounts,
        clients,
        (per_client, per_client),
        &done,
        tag,
    )
    .await
}

/// Like [`charge_load`], but each client goes on past `per_client.0` charges until `done` is
/// set, up to `per_client.1`: load for as long as a fault lasts.
pub async fn load_until(
    server: &Server,
    accounts: &[String],
    clients: usize,
    per_client: (usize, usize),
    done: &AtomicBool,
    tag: &str,
) -> Load {
    let (least, most) = per_client;
    let runs = (0..clients).map(|client| async move {
        let mut seen = Vec::new();
        for n in 0..most {
            if n >= least && done.load(Ordering::SeqCst) {
                break;
            }
            let account = &accounts[(client + n) % accounts.len()];
            let charge_id = format!("{tag}-{client}-{n}");
            let (status, body) = server.charge(account, &charge_id).await;
            assert_acceptable(status, &body);
            if !status.is_success() {
                // As a client honouring Retry-After would, only sooner.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.push((account.clone(), charge_id, status.is_success()));
        }
        seen
    });
    let mut load = Load::default();
    for (account, charge_id, acknowledged) in
        futures::future::join_all(runs).await.into_iter().flatten()
    {
        load.requests += 1;
        if acknowledged {
            load.acknowledged
                .entry(account)
                .or_default()
                .push(charge_id);
        } else {
            load.unavailable.push((account, charge_id));
        }
    }
    load
}

impl Load {
    /// One acknowledged charge.
    pub fn single(account: &str, charge_id: &str) -> Load {
        Load {
            acknowledged: BTreeMap::from([(account.to_owned(), vec![charge_id.to_owned()])]),
            unavailable: Vec::new(),
            requests: 1,
        }
    }

    /// Adds what another run saw.
    pub fn merge(mut self, other: Load) -> Load {
        self.requests += other.requests;
        self.unavailable.extend(other.unavailable);
        for (account, ids) in other.acknowledged {
            self.acknowledged.entry(account).or_default().extend(ids);
        }
        self
    }
}

/// Retries every charge the load saw refused until it is acknowledged, then checks every
/// account: each charge stored once, views equal to a replay. Returns the requests sent.
pub async fn settle_and_check(server: &Server, accounts: &[String], mut load: Load) -> usize {
    let mut requests = load.requests;
    for (account, charge_id) in std::mem::take(&mut load.unavailable) {
        server.charge_until_acknowledged(&account, &charge_id).await;
        requests += 1;
        load.acknowledged
            .entry(account)
            .or_default()
            .push(charge_id);
    }
    for account in accounts {
        let acknowledged = load.acknowledged.get(account).cloned().unwrap_or_default();
        check_account(server, account, &acknowledged).await;
    }
    requests
}

/// Runs `program args...`; what it printed when it failed.
pub fn run_command(program: &str, args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `count` accounts named `{prefix}{n}`, opened and funded.
pub async fn open_accounts(server: &Server, prefix: &str, count: usize) -> Vec<String> {
    let accounts: Vec<String> = (0..count).map(|n| format!("{prefix}{n}")).collect();
    for account in &accounts {
        server.open_funded(account).await;
    }
    accounts
}

/// After a fault under load has ended: the service takes commands again by itself (the
/// first one may still meet a connection the fault broke; the ones after it must not), then
/// every refused charge is retried and every account checked. Returns the requests sent.
pub async fn recover_and_check(server: &Server, accounts: &[String], load: Load) -> usize {
    server
        .charge_until_acknowledged(&accounts[0], "first-after")
        .await;
    let load = load.merge(Load::single(&accounts[0], "first-after"));
    let after = charge_load(server, accounts, 2, 5, "after").await;
    assert!(
        after.unavailable.is_empty(),
        "503 after the fault ended, without a restart of the ledger"
    );
    settle_and_check(server, accounts, load.merge(after)).await
}
