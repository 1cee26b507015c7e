//! The router in process, without a socket: the rules that live in this module (the role
//! table, `min_position` on every read) checked where they are declared. The end-to-end
//! suite checks the same rules against the real binary.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use ledger_domain::{Catalog, Command, Instant};
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

use super::{router, Access, AppState, ROUTES, ROUTE_TABLE};
use crate::clock::SystemClock;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::tokens::{Role, Tokens};
use crate::views::{ReadModel, ViewStatus};
use ledger_domain::state::Core;
use ledger_domain::usage::{UsageBy, UsageRange, UsageReport};

/// Views stuck at one position: a wait for anything beyond it times out at once, so the
/// tests see the 503 without sleeping for the real 2 s.
#[derive(Debug)]
struct StuckViews {
    position: Option<u64>,
}

#[async_trait]
impl ReadModel for StuckViews {
    fn account(&self, _account_id: &str) -> Option<Core> {
        None
    }

    fn usage(
        &self,
        _account_id: &str,
        _range: &UsageRange,
        _by: UsageBy,
        _catalog: &Catalog,
    ) -> Option<UsageReport> {
        None
    }

    fn position(&self) -> Option<u64> {
        self.position
    }

    async fn wait_for(&self, position: u64, _timeout: Duration) -> bool {
        self.position.is_some_and(|reached| reached >= position)
    }

    fn due_accounts(&self, _now: Instant) -> Vec<String> {
        Vec::new()
    }

    fn status(&self) -> Vec<ViewStatus> {
        Vec::new()
    }
}

pub(super) fn token(role: Role) -> String {
    format!("unit-{}-token-0123456789", role.as_str())
}

/// A router over a fresh SQLite store, with one account `a1` opened (position 1) and views
/// stuck at `views_position`.
pub(super) struct Harness {
    _dir: TempDir,
    pub state: AppState,
    pub router: Router,
}

impl Harness {
    pub async fn new(views_position: Option<u64>) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).expect("a sqlite store"));
        let ledger = Ledger::new(store, Arc::new(Catalog::shipped()), Arc::new(SystemClock));
        ledger
            .execute("a1", &Command::OpenAccount, "billing")
            .await
            .expect("open a1");
        let spec = Role::ALL
            .iter()
            .map(|role| format!("{}={}", role.as_str(), token(*role)))
            .collect::<Vec<_>>()
            .join(",");
        let tokens = Tokens::parse(&spec).expect("test tokens");
        let views = Arc::new(StuckViews {
            position: views_position,
        });
        let stripe = crate::stripe::Secrets::parse("whsec_harness");
        let state = AppState::new(ledger, views, Arc::new(tokens), Metrics::new(), stripe);
        Harness {
            _dir: dir,
            router: router(state.clone()),
            state,
        }
    }

    /// Sends a request without a body; returns the status, headers and the JSON body (null
    /// when the body is not JSON).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        send_to(&self.router, method, path, token).await
    }
}

async fn send_to(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Body::empty()).expect("a request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

#[tokio::test]
async fn events_and_explain_honour_min_position_else_503_with_retry_after() {
    let harness = Harness::new(Some(1)).await;
    let finance = token(Role::Finance);
    for endpoint in ["events", "explain"] {
        let path = format!("/v1/accounts/a1/{endpoint}?min_position=1000000000");
        let (status, headers, body) = harness.send("GET", &path, Some(&finance)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "UNAVAILABLE", "{path}");
        assert!(headers.contains_key(header::RETRY_AFTER), "{path}");
        let path = format!("/v1/accounts/a1/{endpoint}?min_position=1");
        let (status, _, body) = harness.send("GET", &path, Some(&finance)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

#[tokio::test]
async fn bad_reads_are_refused_before_waiting_for_min_position() {
    let harness = Harness::new(Some(1)).await;
    let support = token(Role::Support);
    let future = (chrono::Utc::now() + chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for path in [
        "/v1/accounts/a1/events?limit=0&min_position=1000000000".to_string(),
        format!("/v1/accounts/a1/explain?at={future}&min_position=1000000000"),
    ] {
        let (status, _, body) = harness.send("GET", &path, Some(&support)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{path}");
    }
}

#[test]
fn a_route_missing_from_the_role_table_is_denied() {
    for (method, path) in [
        ("GET", "/v1/no-such-route"),
        ("POST", "/v1/accounts/{id}/undeclared"),
        ("DELETE", "/v1/accounts/{id}/charges"),
    ] {
        assert!(
            super::allowed_roles(method, path).is_none(),
            "{method} {path} is in no table, so nobody may call it"
        );
    }
    for spec in ROUTE_TABLE {
        assert_eq!(
            super::allowed_roles(spec.method.as_str(), spec.path),
            Some(spec.access),
            "{} {}",
            spec.method.as_str(),
            spec.path
        );
    }
}

#[test]
fn routes_are_derived_from_the_role_table() {
    let derived: Vec<(&str, &str)> = ROUTE_TABLE
        .iter()
        .map(|spec| (spec.method.as_str(), spec.path))
        .collect();
    assert_eq!(ROUTES.to_vec(), derived);
}

/// A concrete path for a route template: every `{param}` filled with `x`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_of_the_router_admits_exactly_the_roles_on_its_line() {
    let harness = Harness::new(Some(1)).await;
    for spec in ROUTE_TABLE {
        let (method, path) = (spec.method.as_str(), concrete(spec.path));
        let what = format!("{method} {path}");
        let (status, _, body) = harness.send(method, &path, None).await;
        // A route the router lacks would answer the fallback's 404 instead.
        assert_ne!(
            body["error"]["details"]["kind"], "route",
            "{what} is routed"
        );
        let roles = match spec.access {
            // Stripe's deliveries authenticate by signature: none here, so refused as such.
            Access::Public if spec.path == "/v1/billing/stripe" => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{what} unsigned: {body}");
                continue;
            }
            Access::Public => {
                assert!(status.is_success(), "{what} is public: {status} {body}");
                continue;
            }
            Access::Roles(roles) => roles,
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} without a token");
        for role in Role::ALL {
            let (status, _, body) = harness.send(method, &path, Some(&token(role))).await;
            let allowed = role == Role::Admin || roles.contains(&role);
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what} as {}: {status} {body}",
                    role.as_str()
                );
                assert_ne!(body["error"]["details"]["kind"], "route", "{what}");
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
                    "{what} as {}",
                    role.as_str()
                );
            }
        }
    }
}

#[tokio::test]
async fn unknown_routes_are_404_not_found_for_every_token_and_none() {
    let harness = Harness::new(Some(1)).await;
    let mut tokens: Vec<Option<String>> = Role::ALL.iter().map(|r| Some(token(*r))).collect();
    tokens.push(None);
    tokens.push(Some("not-a-token-of-this-ledger".to_string()));
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/accounts/x/undeclared"),
        ("GET", "/v1/accounts/x/charges/c/refund/extra"),
        ("DELETE", "/v1/audit"),
        ("GET", "/metrics/extra"),
    ] {
        for token in &tokens {
            let (status, _, body) = harness.send(method, path, token.as_deref()).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
                "{method} {path} with {token:?}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_handler_on_a_route_without_the_tables_guard_admits_nobody() {
    let harness = Harness::new(Some(1)).await;
    let unguarded: Router = Router::new()
        .route(
            "/unguarded",
            axum::routing::get(|_caller: super::extract::Caller| async { "reached" }),
        )
        .with_state(harness.state.clone());
    for role in Role::ALL {
        let (status, _, body) = send_to(&unguarded, "GET", "/unguarded", Some(&token(role))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{}: {body}", role.as_str());
    }
    let (status, _, _) = send_to(&unguarded, "GET", "/unguarded", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
