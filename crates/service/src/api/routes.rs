//! The route table: every route's method, path, roles and handler on one line, and the
//! router built from it. Access is denied by default: a route can only be registered through
//! the table, the table has no default role, and the guard each route gets checks exactly the
//! roles on its line. `ROUTES` (held to the OpenAPI document by a test) is derived from it.

use std::time::Instant as Clock;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use ledger_domain::Rejection;

use super::error::ApiError;
use super::extract::{Caller, BODY_LIMIT_BYTES, URI_LIMIT_BYTES};
use super::{
    admission, alerts, approve_verification, audit_events, capture_hold, console, dto, events,
    explain, get_account, healthz, insight, metrics, open_account, receipt_route, refund,
    reject_verification, release_hold, submit_verification, summary_route, AppState,
};
use crate::tokens::Role;

/// Who may call a route. There is no default: every line of the table names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A token of one of these roles, or of admin (which may do everything).
    Roles(&'static [Role]),
}

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
}

impl Verb {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
        }
    }
}

/// Mounts a handler for one method; each line of the table passes its own.
type Mount = fn(MethodFilter) -> MethodRouter<AppState>;

/// One route, declared in one place.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub method: Verb,
    pub path: &'static str,
    pub access: Access,
    mount: Mount,
}

const fn route(method: Verb, path: &'static str, access: Access, mount: Mount) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        mount,
    }
}

const PUBLIC: Access = Access::Public;
const ANY: Access = Access::Roles(&Role::ALL);
const BILLING: Access = Access::Roles(&[Role::Billing]);
const SUPPORT: Access = Access::Roles(&[Role::Support]);
const EXECUTOR: Access = Access::Roles(&[Role::Executor]);
const READERS: Access = Access::Roles(&[Role::Support, Role::Finance]);
const FINANCE: Access = Access::Roles(&[Role::Finance]);
const ADMIN: Access = Access::Roles(&[Role::Admin]);
const BILLING_SUPPORT: Access = Access::Roles(&[Role::Billing, Role::Support]);

use Verb::{Get as GET, Post as POST, Put as PUT};

/// Every route the server answers: SPEC section 8's table, with the handler beside it.
#[rustfmt::skip]
pub const ROUTE_TABLE: &[RouteSpec] = &[
    route(POST, "/v1/accounts", BILLING, |m| on(m, open_account)),
    route(GET, "/v1/accounts/{id}", ANY, |m| on(m, get_account)),
    route(POST, "/v1/accounts/{id}/subscription", BILLING, |m| on(m, summary_route::<dto::Subscription, false>)),
    route(POST, "/v1/accounts/{id}/renewals", BILLING, |m| on(m, summary_route::<dto::Renewal, false>)),
    route(POST, "/v1/accounts/{id}/top-ups", BILLING, |m| on(m, summary_route::<dto::TopUp, true>)),
    route(POST, "/v1/accounts/{id}/business-verification", BILLING, |m| on(m, submit_verification)),
    route(POST, "/v1/accounts/{id}/business-verification/approve", ADMIN, |m| on(m, approve_verification)),
    route(POST, "/v1/accounts/{id}/business-verification/reject", ADMIN, |m| on(m, reject_verification)),
    route(POST, "/v1/accounts/{id}/grants", SUPPORT, |m| on(m, summary_route::<dto::Grant, true>)),
    route(POST, "/v1/accounts/{id}/admission", EXECUTOR, |m| on(m, admission)),
    route(POST, "/v1/accounts/{id}/charges", EXECUTOR, |m| on(m, receipt_route::<dto::Charge>)),
    route(POST, "/v1/accounts/{id}/charges/{charge_id}/refund", EXECUTOR, |m| on(m, refund)),
    route(POST, "/v1/accounts/{id}/holds", EXECUTOR, |m| on(m, receipt_route::<dto::Hold>)),
    route(POST, "/v1/accounts/{id}/holds/{hold_id}/capture", EXECUTOR, |m| on(m, capture_hold)),
    route(POST, "/v1/accounts/{id}/holds/{hold_id}/release", EXECUTOR, |m| on(m, release_hold)),
    route(GET, "/v1/accounts/{id}/events", READERS, |m| on(m, events)),
    route(GET, "/v1/accounts/{id}/explain", READERS, |m| on(m, explain)),
    route(GET, "/v1/accounts/{id}/models", ANY, |m| on(m, insight::models)),
    route(GET, "/v1/accounts/{id}/history", READERS, |m| on(m, insight::history)),
    route(GET, "/v1/accounts/{id}/usage", READERS, |m| on(m, insight::usage)),
    route(PUT, "/v1/accounts/{id}/alerts", BILLING, |m| on(m, alerts::configure)),
    route(GET, "/v1/accounts/{id}/alerts", BILLING_SUPPORT, |m| on(m, alerts::read)),
    route(GET, "/v1/audit/events", FINANCE, |m| on(m, audit_events)),
    // Stripe's deliveries carry no token: the Stripe-Signature header authenticates them.
    route(POST, "/v1/billing/stripe", PUBLIC, |m| on(m, crate::stripe::webhook)),
    route(GET, "/healthz", PUBLIC, |m| on(m, healthz)),
    route(GET, "/metrics", PUBLIC, |m| on(m, metrics)),
    // The support console (SPEC section 15): public, because the page itself asks for a token
    // and every read it makes goes through the routes above with that token.
    route(GET, "/console", PUBLIC, |m| on(m, console::page)),
    route(GET, "/console/app.js", PUBLIC, |m| on(m, console::script)),
    route(GET, "/console/app.css", PUBLIC, |m| on(m, console::style)),
];

// Checked when the crate compiles: an empty role list would quietly mean "admin only", and
// a route listed twice would make axum panic at start.
const _: () = {
    let mut index = 0;
    while index < ROUTE_TABLE.len() {
        if let Access::Roles(roles) = ROUTE_TABLE[index].access {
            assert!(!roles.is_empty(), "a route with an empty role list");
        }
        let mut other = index + 1;
        while other < ROUTE_TABLE.len() {
            let (a, b) = (&ROUTE_TABLE[index], &ROUTE_TABLE[other]);
            assert!(
                !(a.method as u8 == b.method as u8 && str_eq(a.path, b.path)),
                "a route listed twice"
            );
            other += 1;
        }
        index += 1;
    }
};

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// Every route the server answers, as (method, path template), in table order. The OpenAPI
/// document must list exactly these; a test holds them to it.
pub const ROUTES: &[(&str, &str)] = &{
    let mut routes = [("", ""); ROUTE_TABLE.len()];
    let mut index = 0;
    while index < ROUTE_TABLE.len() {
        routes[index] = (ROUTE_TABLE[index].method.as_str(), ROUTE_TABLE[index].path);
        index += 1;
    }
    routes
};

/// Who may call a route, by method and path template. `None`: the route is not in the table,
/// and nobody may call it.
pub fn allowed_roles(method: &str, path: &str) -> Option<Access> {
    ROUTE_TABLE
        .iter()
        .find(|spec| spec.method.as_str() == method && spec.path == path)
        .map(|spec| spec.access)
}

/// The router: each line of the table mounted with a guard for exactly its roles.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for spec in ROUTE_TABLE {
        let guard = Guard {
            app: state.clone(),
            access: spec.access,
        };
        let handler = (spec.mount)(spec.method.filter())
            .route_layer(middleware::from_fn_with_state(guard, authorize));
        router = router.route(spec.path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn(bounded_uri))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// What a route's guard knows: the tokens (through the app) and the route's access.
#[derive(Debug, Clone)]
struct Guard {
    app: AppState,
    access: Access,
}

/// Authenticates and authorises before anything else of the request is read: a caller in
/// the wrong role gets 403 whatever its body says.
async fn authorize(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let Access::Roles(roles) = guard.access else {
        return next.run(request).await;
    };
    let caller = match Caller::from_headers(&guard.app.tokens, request.headers()) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = caller.require(roles) {
        return error.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Counts and times every request.
async fn observe(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Clock::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    app.metrics
        .observe(&route, &method, status, started.elapsed());
    response
}

/// Refuses an oversize path and query before routing, so no extractor parses it.
async fn bounded_uri(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |path| path.as_str().len());
    if length > URI_LIMIT_BYTES {
        return ApiError::from(Rejection::invalid(format!(
            "the path and query string are {length} bytes, more than the {URI_LIMIT_BYTES} allowed"
        )))
        .into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    Rejection::NotFound {
        what: "route",
        id: "this path".into(),
    }
    .into()
}

async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::from(Rejection::invalid("method not allowed on this path")).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
