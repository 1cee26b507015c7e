//! The harness every end-to-end test uses: a real `ledger serve` child process on a free
//! loopback port with its own data directory (killed when dropped), an HTTP client that
//! checks every request body and every response against `schemas/openapi.json`, and the
//! small flows (open, subscribe, top up, charge, read) the stories are made of.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::openapi;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ledger");

/// How long a server may take to say `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The five roles of SPEC section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Executor,
    Billing,
    Support,
    Finance,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Executor,
        Role::Billing,
        Role::Support,
        Role::Finance,
        Role::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Executor => "executor",
            Role::Billing => "billing",
            Role::Support => "support",
            Role::Finance => "finance",
            Role::Admin => "admin",
        }
    }

    /// The token the test servers give this role (at least 16 characters).
    pub fn token(self) -> &'static str {
        match self {
            Role::Executor => "e2e-executor-token-0123456789",
            Role::Billing => "e2e-billing-token-0123456789",
            Role::Support => "e2e-support-token-0123456789",
            Role::Finance => "e2e-finance-token-0123456789",
            Role::Admin => "e2e-admin-token-0123456789",
        }
    }
}

/// `LEDGER_TOKENS` for the test servers.
pub fn tokens_env() -> String {
    Role::ALL
        .iter()
        .map(|role| format!("{}={}", role.name(), role.token()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The shipped catalog, edited by `edit` (e.g. a short trial window).
pub fn catalog_with(edit: impl FnOnce(&mut Value)) -> String {
    let mut catalog: Value = serde_json::from_str(ledger_domain::catalog::DEFAULT_CATALOG_JSON)
        .expect("the shipped catalog is JSON");
    edit(&mut catalog);
    serde_json::to_string_pretty(&catalog).expect("a catalog serializes")
}

/// Sets one model's field in a catalog document.
pub fn set_model_field(catalog: &mut Value, model: &str, field: &str, value: Value) {
    let models = catalog["models"]
        .as_array_mut()
        .expect("models is an array");
    let entry = models
        .iter_mut()
        .find(|entry| entry["id"] == model)
        .unwrap_or_else(|| panic!("no model {model} in the catalog"));
    entry[field] = value;
}

/// A `Command` for the binary with the environment of the tests' machine cleaned of every
/// `LEDGER_*` variable, so only what a test passes reaches it.
pub fn ledger_command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("LEDGER_") {
            command.env_remove(name);
        }
    }
    command
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Catalog JSON written to a file and passed with `--catalog`.
    pub catalog: Option<String>,
    /// Whether to pass `LEDGER_TOKENS`; without it `serve` generates `DATA/tokens.json`.
    pub tokens: bool,
    /// `--store URL` (a shared PostgreSQL database); none: the embedded SQLite file.
    pub store: Option<String>,
    /// `LEDGER_STRIPE_WEBHOOK_SECRETS`; none: the Stripe webhook route is off.
    pub stripe_secrets: Option<String>,
    /// Extra environment variables for the server (alert delivery settings).
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            catalog: None,
            tokens: true,
            store: None,
            stripe_secrets: None,
            env: Vec::new(),
        }
    }
}

impl Options {
    pub fn catalog(catalog: String) -> Self {
        Options {
            catalog: Some(catalog),
            ..Options::default()
        }
    }
}

/// A running `ledger serve`. Killed (SIGKILL) when dropped if still running.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub api: Api,
    dir: Option<TempDir>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// A server that has exited, with its directory kept for the command-line tools.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub dir: TempDir,
    pub stdout: Vec<String>,
}

impl Stopped {
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Server {
    /// Starts a server with the shipped catalog and known tokens.
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("ledger-e2e-")
            .tempdir()
            .expect("a temporary directory");
        Server::start_in(dir, options).await
    }

    /// Starts a server on `dir/data` (which may hold the data of an earlier server).
    pub async fn start_in(dir: TempDir, options: Options) -> Server {
        let started = tokio::task::spawn_blocking(move || Server::spawn(dir, &options));
        started.await.expect("the start task")
    }

    fn spawn(dir: TempDir, options: &Options) -> Server {
        let data = dir.path().join("data");
        let mut command = ledger_command();
        command
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(catalog) = &options.catalog {
            let path = dir.path().join("catalog.json");
            std::fs::write(&path, catalog).expect("write the test catalog");
            command.arg("--catalog").arg(path);
        }
        if options.tokens {
            command.env("LEDGER_TOKENS", tokens_env());
        }
        if let Some(store) = &options.store {
            command.arg("--store").arg(store);
        }
        if let Some(secrets) = &options.stripe_secrets {
            command.env("LEDGER_STRIPE_WEBHOOK_SECRETS", secrets);
        }
        command.envs(options.env.iter().map(|(name, value)| (name, value)));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .expect("open the stderr log");
        command.stderr(stderr);
        let mut child = command.spawn().expect("spawn ledger serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = mpsc::channel::<String>();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                kept.lock().expect("stdout lines").push(line.clone());
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "ledger serve exited with {status} before listening; stderr:\n{}",
                            read_log(dir.path())
                        );
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ledger serve did not print `listening on` in {START_TIMEOUT:?}; stderr:\n{}",
                        read_log(dir.path())
                    );
                }
            }
        };
        Server {
            child,
            api: Api::new(&format!("http://{addr}")),
            dir: Some(dir),
            stdout: lines,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the server's directory").path()
    }

    pub fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }

    /// The server's log so far.
    pub fn stderr(&self) -> String {
        read_log(self.dir())
    }

    /// Kills the process with SIGKILL, as a machine loss would, and keeps its directory.
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("the server's directory")
    }

    /// Sends SIGTERM and waits (at most 15 s) for the process to exit.
    pub async fn stop(mut self) -> Stopped {
        let pid = self.pid();
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = started + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "ledger serve did not exit within 15 s of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let elapsed = started.elapsed();
        let stdout = self.stdout();
        Stopped {
            status,
            elapsed,
            dir: self.dir.take().expect("the server's directory"),
            stdout,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    /// JSON that must match the documented request schema.
    Json(Value),
    /// Bytes sent as they are (malformed or deliberately invalid bodies).
    Raw(String),
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub request: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "{} answered {} (wanted {status}): {}",
            self.request, self.status, self.text
        );
        self.json.clone()
    }

    /// Asserts the error envelope `{"error": {"code", "message", "details"}}` with this
    /// status and code, and returns `details`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            (self.status, self.code()),
            (status, Some(code.to_string())),
            "{} answered {}: {}",
            self.request,
            self.status,
            self.text
        );
        assert_envelope(&self.json, &self.request);
        self.json["error"]["details"].clone()
    }

    /// The error code, if the body is an error envelope.
    pub fn code(&self) -> Option<String> {
        self.json["error"]["code"].as_str().map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    }
}

/// The error envelope has exactly `error` with exactly `code`, `message` and `details`.
#[track_caller]
pub fn assert_envelope(body: &Value, request: &str) {
    let outer = body.as_object().expect("an error body is an object");
    assert_eq!(
        outer.keys().collect::<Vec<_>>(),
        vec!["error"],
        "{request}: {body}"
    );
    let error = body["error"].as_object().expect("error is an object");
    let mut keys: Vec<_> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "details", "message"], "{request}: {body}");
    assert!(
        error["code"].as_str().is_some_and(
            |code| !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        ),
        "{request}: code must be UPPER_SNAKE: {body}"
    );
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{request}: message must be a non-empty string: {body}"
    );
    assert!(
        error["details"].is_object(),
        "{request}: details must be an object: {body}"
    );
}

/// An HTTP client for one server. Every JSON request body is checked against the documented
/// request schema, every response against the documented response of its status.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Api {
            base: base.to_string(),
            http,
        }
    }

    /// A client with its own connection pool (for concurrency tests).
    pub fn fresh(&self) -> Api {
        Api::new(&self.base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with the token of `role` (none when `None`).
    pub async fn send(&self, role: Option<Role>, method: &str, path: &str, body: Body) -> Reply {
        self.send_with_token(role.map(Role::token), method, path, body)
            .await
    }

    /// Sends a request with a literal bearer token (or none).
    pub async fn send_with_token(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Body,
    ) -> Reply {
        self.send_with_headers(token, method, path, body, &[]).await
    }

    /// Sends a request with a literal bearer token (or none) and extra headers.
    pub async fn send_with_headers(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method_value = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self.http.request(method_value, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        match &body {
            Body::None => {}
            Body::Json(value) => {
                openapi::check_request(method, path, value);
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(value.to_string());
            }
            Body::Raw(text) => {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(text.clone());
            }
        }
        let who = token.map_or_else(
            || "anonymous".to_string(),
            |token| token.split("-token").next().unwrap_or(token).to_string(),
        );
        let description = format!("{method} {path} as {who}");
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{description}: {err}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .unwrap_or_else(|err| panic!("{description}: reading the body: {err}"));
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        openapi::check_response(method, path, status, &content_type, &text, &description);
        let json = if content_type.starts_with("application/json") {
            serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{description}: body is not JSON ({err}): {text}"))
        } else {
            Value::Null
        };
        Reply {
            request: description,
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, role: Role, path: &str) -> Reply {
        self.send(Some(role), "GET", path, Body::None).await
    }

    pub async fn post(&self, role: Role, path: &str, body: Value) -> Reply {
        self.send(Some(role), "POST", path, Body::Json(body)).await
    }

    pub async fn post_raw(&self, role: Role, path: &str, body: &str) -> Reply {
        self.send(Some(role), "POST", path, Body::Raw(body.to_string()))
            .await
    }

    pub async fn post_empty(&self, role: Role, path: &str) -> Reply {
        self.send(Some(role), "POST", path, Body::None).await
    }
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// An instant `secs` seconds from now, RFC 3339 UTC.
pub fn from_now(secs: i64) -> String {
    (Utc::now() + chrono::TimeDelta::seconds(secs)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 instant from a response.
pub fn instant(value: &Value) -> chrono::DateTime<Utc> {
    value
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not an RFC 3339 instant: {value}"))
}

/// Sleeps until `at` (plus a margin) has passed on this machine's clock.
pub async fn sleep_past(at: chrono::DateTime<Utc>) {
    let left = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(150)).await;
}

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

/// The `position` of a command answer.
#[track_caller]
pub fn position(body: &Value) -> u64 {
    body["position"]
        .as_u64()
        .unwrap_or_else(|| panic!("no position in {body}"))
}

/// Opens an account (201) and returns the summary.
pub async fn open(api: &Api, id: &str) -> Value {
    api.post(Role::Billing, "/v1/accounts", json!({ "account_id": id }))
        .await
        .expect(201)
}

/// The subscription body for `tier` from now for 30 days.
pub fn subscription(tier: &str, billing: Option<&str>, reference: &str) -> Value {
    json!({
        "tier": tier,
        "billing": billing,
        "period_start": from_now(0),
        "period_end": from_now(30 * 86_400),
        "reference": reference,
    })
}

/// Moves an account to `tier` (monthly for paid tiers); returns the summary.
pub async fn subscribe(api: &Api, id: &str, tier: &str) -> Value {
    let billing = (tier != "free").then_some("monthly");
    api.post(
        Role::Billing,
        &format!("/v1/accounts/{id}/subscription"),
        subscription(tier, billing, &format!("sub-{id}-{tier}")),
    )
    .await
    .expect(200)
}

/// Buys a top-up (201); returns the summary.
pub async fn top_up(api: &Api, id: &str, purchase_id: &str, credits: u64) -> Value {
    api.post(
        Role::Billing,
        &format!("/v1/accounts/{id}/top-ups"),
        json!({ "purchase_id": purchase_id, "credits": credits }),
    )
    .await
    .expect(201)
}

/// A charge body for one run of `model` with its quantity field (`images`/`seconds`), if any.
pub fn charge_body(charge_id: &str, model: &str, quantity: Option<(&str, u32)>) -> Value {
    let mut body = json!({
        "charge_id": charge_id,
        "run_id": format!("run-{charge_id}"),
        "node_id": "node-1",
        "model": model,
    });
    if let Some((field, amount)) = quantity {
        body[field] = json!(amount);
    }
    body
}

/// Charges `account` as the executor.
pub async fn charge(api: &Api, account: &str, body: Value) -> Reply {
    api.post(
        Role::Executor,
        &format!("/v1/accounts/{account}/charges"),
        body,
    )
    .await
}

/// The summary once the views have reached `min_position`.
pub async fn summary(api: &Api, account: &str, min_position: u64) -> Value {
    api.get(
        Role::Support,
        &format!("/v1/accounts/{account}?min_position={min_position}"),
    )
    .await
    .expect(200)
}

/// Every event of an account, paging through the events endpoint.
pub async fn all_events(api: &Api, account: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .get(
                Role::Finance,
                &format!("/v1/accounts/{account}/events?after={after}&limit=10000"),
            )
            .await
            .expect(200);
        let batch = page["events"].as_array().expect("events array").clone();
        if batch.is_empty() {
            return events;
        }
        after = batch
            .last()
            .and_then(|event| event["version"].as_u64())
            .expect("a version");
        events.extend(batch);
    }
}

/// The events of one type.
pub fn of_type<'a>(events: &'a [Value], type_name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == type_name)
        .collect()
}

/// Polls `check` every 100 ms until it returns `Some`, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
