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

use super::{router, AppState};
use crate::clock::SystemClock;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::tokens::{Role, Tokens};
use crate::views::{AccountView, ReadModel, ViewStatus};

/// Views stuck at one position: a wait for anything beyond it times out at once, so the
/// tests see the 503 without sleeping for the real 2 s.
#[derive(Debug)]
struct StuckViews {
    position: Option<u64>,
}

#[async_trait]
impl ReadModel for StuckViews {
    fn account(&self, _account_id: &str) -> Option<AccountView> {
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
        let state = AppState::new(ledger, views, Arc::new(tokens), Metrics::new());
        Harness {
            _dir: dir,
            router: router(state),
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
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::empty()).expect("a request");
        let response = self
            .router
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
