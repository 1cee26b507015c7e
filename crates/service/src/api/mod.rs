//! The HTTP API of SPEC section 8: routes, roles, the error envelope, `position` on every
//! command answer and `min_position` on reads, and the support console's embedded files.

mod alerts;
mod answer;
mod console;
pub mod dto;
pub mod error;
pub mod extract;
#[cfg(test)]
mod fuzz;
mod insight;
mod routes;
#[cfg(test)]
mod tests;

pub use self::console::CONTENT_SECURITY_POLICY;
pub use self::routes::{allowed_roles, router, Access, RouteSpec, Verb, ROUTES, ROUTE_TABLE};

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use ledger_domain::admission::admit;
use ledger_domain::decide::Reply;
use ledger_domain::events::Via;
use ledger_domain::state::VerificationStatus;
use ledger_domain::{Command, Rejection};
use serde_json::{json, Value};

use self::dto::IntoCommand;
use self::error::ApiError;
use self::extract::{AccountId, Caller, JsonBody, QueryParams};
use crate::alerts::guard::Guard;
use crate::alerts::Outbox;
use crate::ledger::{Ledger, Outcome};
use crate::metrics::{Format as MetricsFormat, Metrics};
use crate::summary::summarize;
use crate::tokens::Tokens;
use crate::views::ReadModel;

/// How long a read waits for the views to reach `min_position`.
pub(crate) const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);
/// Events per page of the events endpoint, by default and at most.
const EVENTS_LIMIT_DEFAULT: usize = 1_000;
const EVENTS_LIMIT_MAX: usize = 10_000;

/// Everything a handler needs. Cloned for every request, so it is one `Arc`.
#[derive(Debug, Clone)]
pub struct AppState(Arc<App>);

/// What `AppState` shares.
#[derive(Debug)]
pub struct App {
    pub ledger: Ledger,
    pub views: Arc<dyn ReadModel>,
    pub tokens: Arc<Tokens>,
    pub metrics: Metrics,
    /// Stripe's webhook secrets; `None` turns `POST /v1/billing/stripe` off.
    pub stripe: Option<crate::stripe::Secrets>,
    /// The alerts outbox; `None` where this process runs no alerts projector.
    pub alerts: Option<Arc<dyn Outbox>>,
    /// What receiver URLs may point at.
    pub alert_guard: Guard,
}

impl AppState {
    pub fn new(
        ledger: Ledger,
        views: Arc<dyn ReadModel>,
        tokens: Arc<Tokens>,
        metrics: Metrics,
        stripe: Option<crate::stripe::Secrets>,
    ) -> AppState {
        AppState::with_alerts(
            ledger,
            views,
            tokens,
            metrics,
            stripe,
            None,
            Guard::default(),
        )
    }

    /// An app that also answers `GET .../alerts` from `alerts` and checks receiver URLs with
    /// `alert_guard`.
    pub fn with_alerts(
        ledger: Ledger,
        views: Arc<dyn ReadModel>,
        tokens: Arc<Tokens>,
        metrics: Metrics,
        stripe: Option<crate::stripe::Secrets>,
        alerts: Option<Arc<dyn Outbox>>,
        alert_guard: Guard,
    ) -> AppState {
        AppState(Arc::new(App {
            ledger,
            views,
            tokens,
            metrics,
            stripe,
            alerts,
            alert_guard,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

fn with_position(mut body: Value, position: Option<u64>) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.insert("position".into(), json!(position));
    }
    body
}

impl AppState {
    async fn run(
        &self,
        account_id: &str,
        command: Command,
        caller: Caller,
    ) -> Result<Outcome, ApiError> {
        let name = command.name();
        let result = self
            .ledger
            .execute_owned(account_id, command, caller.role.as_str())
            .await;
        match &result {
            Ok(outcome) => tracing::info!(
                account_id,
                command = name,
                outcome = if outcome.replayed {
                    "replayed"
                } else {
                    "accepted"
                },
                position = outcome.position,
                "command"
            ),
            Err(err) => tracing::info!(account_id, command = name, outcome = %err, "command"),
        }
        Ok(result?)
    }

    /// The summary after a command, from the state it decided on and as of the command's
    /// time; for a replay, the first answer again.
    fn summary(&self, account_id: &str, outcome: &Outcome) -> Value {
        let Some(core) = &outcome.core else {
            return json!({ "account_id": account_id, "position": outcome.position });
        };
        let summary = summarize(
            self.ledger.catalog(),
            account_id,
            &core.plan,
            &core.balance,
            &core.trials,
            outcome.at,
            outcome.position,
        );
        serde_json::to_value(summary).unwrap_or(Value::Null)
    }

    async fn wait_for_views(&self, min_position: Option<u64>) -> Result<(), ApiError> {
        if let Some(position) = min_position {
            if !self.views.wait_for(position, MIN_POSITION_WAIT).await {
                return Err(Rejection::Unavailable {
                    message: format!("the views have not reached position {position} yet"),
                }
                .into());
            }
        }
        Ok(())
    }
}

fn created_or_replayed(outcome: &Outcome) -> StatusCode {
    if outcome.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
}

async fn open_account(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<dto::OpenAccount>,
) -> Result<Response, ApiError> {
    let outcome = app
        .run(&body.account_id, Command::OpenAccount, caller)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(app.summary(&body.account_id, &outcome)),
    )
        .into_response())
}

async fn get_account(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<dto::ReadParams>,
) -> Result<Response, ApiError> {
    app.wait_for_views(params.min_position).await?;
    let view = app
        .views
        .account(&id)
        .ok_or_else(|| Rejection::AccountNotFound {
            account_id: id.clone(),
        })?;
    let summary = summarize(
        app.ledger.catalog(),
        &id,
        &view.plan,
        &view.balance,
        &view.trials,
        app.ledger.now(),
        app.views.position(),
    );
    Ok(Json(summary).into_response())
}

async fn summary_command(
    app: AppState,
    caller: Caller,
    id: String,
    command: Command,
    created: bool,
) -> Result<Response, ApiError> {
    let outcome = app.run(&id, command, caller).await?;
    let status = if created {
        created_or_replayed(&outcome)
    } else {
        StatusCode::OK
    };
    Ok((status, Json(app.summary(&id, &outcome))).into_response())
}

/// A command endpoint that answers with the account summary: subscription and renewal
/// (200), top-ups and grants (201, or 200 for a replay).
async fn summary_route<B: dto::IntoCommand, const CREATED: bool>(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    JsonBody(body): JsonBody<B>,
) -> Result<Response, ApiError> {
    summary_command(app, caller, id, body.into_command(), CREATED).await
}

fn verification_body(id: &str, outcome: &Outcome) -> Value {
    let status = outcome
        .core
        .as_ref()
        .map_or(VerificationStatus::None, |core| {
            core.plan.verification.status()
        });
    json!({ "account_id": id, "business_verification": status, "position": outcome.position })
}

async fn submit_verification(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    JsonBody(body): JsonBody<dto::Verification>,
) -> Result<Response, ApiError> {
    let outcome = app.run(&id, body.into_command(), caller).await?;
    let status = if outcome.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(verification_body(&id, &outcome))).into_response())
}

async fn approve_verification(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    JsonBody(_): JsonBody<dto::Empty>,
) -> Result<Response, ApiError> {
    let outcome = app
        .run(&id, Command::ApproveBusinessVerification, caller)
        .await?;
    Ok(Json(verification_body(&id, &outcome)).into_response())
}

async fn reject_verification(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    JsonBody(body): JsonBody<dto::Reason>,
) -> Result<Response, ApiError> {
    let command = Command::RejectBusinessVerification {
        reason: body.reason,
    };
    let outcome = app.run(&id, command, caller).await?;
    Ok(Json(verification_body(&id, &outcome)).into_response())
}

async fn admission(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<dto::ReadParams>,
    JsonBody(body): JsonBody<dto::Admission>,
) -> Result<Response, ApiError> {
    app.wait_for_views(params.min_position).await?;
    let account = app
        .views
        .account(&id)
        .ok_or_else(|| Rejection::AccountNotFound {
            account_id: id.clone(),
        })?;
    let now = app.ledger.now();
    let nodes: Vec<_> = body.nodes.into_iter().map(dto::Node::into_node).collect();
    match admit(
        &account,
        app.ledger.catalog(),
        body.via.unwrap_or(Via::App),
        &nodes,
        now,
    ) {
        Ok(admitted) => Ok(Json(json!({
            "admitted": true,
            "total_cost": admitted.total_cost,
            "nodes": admitted.nodes.iter().map(|node| json!({
                "node_id": node.node_id,
                "cost": node.cost,
                "paid_by": node.paid_by,
            })).collect::<Vec<_>>(),
            "balance": admitted.balance,
            "position": app.views.position(),
        }))
        .into_response()),
        Err(blocked) => {
            let error = ApiError::from(blocked.rejection);
            Err(match blocked.node_id {
                Some(node_id) => error.with_detail("node_id", json!(node_id)),
                None => error,
            })
        }
    }
}

/// Renders a receipt-shaped reply: the receipt's fields as the domain names them, plus
/// `position`.
fn receipt_response(outcome: &Outcome, created: bool) -> Response {
    let status = if created {
        created_or_replayed(outcome)
    } else {
        StatusCode::OK
    };
    let receipt = match &outcome.reply {
        Reply::Charged(receipt) => {
            let answer = answer::ChargeAnswer::new(receipt, outcome.position);
            return (status, Json(answer)).into_response();
        }
        Reply::HoldPlaced(receipt) => serde_json::to_value(receipt),
        Reply::HoldResolved(receipt) => serde_json::to_value(receipt),
        Reply::Refunded(receipt) => serde_json::to_value(receipt),
        Reply::Summary { .. }
        | Reply::Verification { .. }
        | Reply::Ticked
        | Reply::AlertsConfigured => Ok(json!({})),
    };
    // Receipts are plain data: serialising them cannot fail.
    let body = with_position(receipt.unwrap_or_else(|_| json!({})), outcome.position);
    (status, Json(body)).into_response()
}

/// A command endpoint that answers with a receipt: charges and holds (201, or 200 for a
/// replay).
async fn receipt_route<B: dto::IntoCommand>(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    JsonBody(body): JsonBody<B>,
) -> Result<Response, ApiError> {
    let outcome = app.run(&id, body.into_command(), caller).await?;
    Ok(receipt_response(&outcome, true))
}

async fn refund(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    axum::extract::Path((_, charge_id)): axum::extract::Path<(String, String)>,
    JsonBody(body): JsonBody<dto::Reason>,
) -> Result<Response, ApiError> {
    let command = Command::RefundCharge {
        charge_id,
        reason: body.reason,
    };
    let outcome = app.run(&id, command, caller).await?;
    Ok(receipt_response(&outcome, false))
}

async fn capture_hold(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    axum::extract::Path((_, hold_id)): axum::extract::Path<(String, String)>,
    JsonBody(body): JsonBody<dto::Capture>,
) -> Result<Response, ApiError> {
    let command = Command::CaptureHold(ledger_domain::command::CaptureHold {
        hold_id,
        quantity: ledger_domain::command::Quantity {
            images: body.images,
            seconds: body.seconds,
        },
    });
    let outcome = app.run(&id, command, caller).await?;
    Ok(receipt_response(&outcome, false))
}

async fn release_hold(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    axum::extract::Path((_, hold_id)): axum::extract::Path<(String, String)>,
    JsonBody(_): JsonBody<dto::Empty>,
) -> Result<Response, ApiError> {
    let outcome = app
        .run(&id, Command::ReleaseHold { hold_id }, caller)
        .await?;
    Ok(receipt_response(&outcome, false))
}

async fn events(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<dto::EventsParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(EVENTS_LIMIT_DEFAULT);
    if limit == 0 || limit > EVENTS_LIMIT_MAX {
        return Err(
            Rejection::invalid(format!("limit must be between 1 and {EVENTS_LIMIT_MAX}")).into(),
        );
    }
    // The page is read from the store, but a caller that names a position expects the views
    // to have reached it too (SPEC section 8, every read): the same wait as the other reads.
    app.wait_for_views(params.min_position).await?;
    let events = crate::audit::stream_page(
        app.ledger.store().as_ref(),
        &id,
        params.after.unwrap_or(0),
        limit,
    )
    .await
    .map_err(ApiError::from)?;
    if events.is_empty() {
        let opened = app
            .ledger
            .store()
            .read_stream(&ledger_domain::envelope::stream_name(&id), 1, 1)
            .await
            .map_err(|err| ApiError::from(crate::ledger::CommandError::from(err)))?;
        if opened.is_empty() {
            return Err(Rejection::AccountNotFound { account_id: id }.into());
        }
    }
    // Serialised straight from the stored envelopes, so `data` stays byte-for-byte what was
    // hashed and finance can check the chain from this answer.
    #[derive(serde::Serialize)]
    struct Page {
        events: Vec<ledger_domain::envelope::RawEnvelope>,
    }
    Ok(Json(Page { events }).into_response())
}

async fn explain(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<dto::ExplainParams>,
) -> Result<Response, ApiError> {
    // A bad `at` is refused before any wait.
    let now = app.ledger.now();
    let at = crate::audit::explain_instant(params.at, now).map_err(Rejection::from)?;
    app.wait_for_views(params.min_position).await?;
    let explanation = crate::audit::explain_account(
        app.ledger.store().as_ref(),
        app.ledger.catalog(),
        &id,
        Some(at),
        now,
    )
    .await
    .map_err(ApiError::from)?;
    if !explanation.exists {
        return Err(Rejection::AccountNotFound { account_id: id }.into());
    }
    Ok(Json(explanation).into_response())
}

async fn audit_events(
    State(app): State<AppState>,
    _caller: Caller,
    QueryParams(params): QueryParams<dto::AuditParams>,
) -> Result<Response, ApiError> {
    if let (Some(since), Some(until)) = (params.since, params.until) {
        if until <= since {
            return Err(Rejection::invalid("until must be after since").into());
        }
    }
    let mut lines = Box::pin(
        crate::audit::export_lines(app.ledger.store().clone(), params.since, params.until)
            .peekable(),
    );
    // A store that fails at once gets a 503 like any read of it; once the status has gone
    // out, a failure can only cut the body short, which the client sees as an error.
    if let Some(Err(err)) = lines.as_mut().peek().await {
        tracing::error!(error = %err, "the audit export cannot read the store");
        return Err(Rejection::Unavailable {
            message: err.to_string(),
        }
        .into());
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `/metrics` in the format the scraper asks for (see `metrics::Format::negotiate`).
async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = MetricsFormat::negotiate(accept);
    if let Some(outbox) = app.alerts.clone() {
        let counts = tokio::task::spawn_blocking(move || outbox.counts()).await;
        if let Ok(Ok(counts)) = counts {
            app.metrics.set_alerts(counts);
        }
    }
    let text = app.metrics.render(&app.views.status(), format);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            // Caches must keep the two formats apart.
            (header::VARY, "accept"),
        ],
        text,
    )
        .into_response()
}
