//! `PUT` and `GET /v1/accounts/{id}/alerts` (SPEC section 14): settings go in as an
//! `alerts_configured` event once the receiver URL has passed the guard; reading them back
//! comes from the alerts projector's outbox, with the notifications parked as failed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::Rejection;
use serde_json::json;

use super::dto::{self, IntoCommand, ReadParams};
use super::error::ApiError;
use super::extract::{AccountId, Caller, JsonBody, QueryParams};
use super::{AppState, MIN_POSITION_WAIT};

pub(super) async fn configure(
    State(app): State<AppState>,
    caller: Caller,
    AccountId(id): AccountId,
    JsonBody(body): JsonBody<dto::Alerts>,
) -> Result<Response, ApiError> {
    if let Some(url) = &body.url {
        app.alert_guard
            .check(url)
            .await
            .map_err(|refused| Rejection::invalid(refused.to_string()))?;
    }
    let outcome = app.run(&id, body.into_command(), caller).await?;
    let configured = outcome
        .written
        .last()
        .and_then(|sealed| match &sealed.event {
            ledger_domain::Event::AlertsConfigured(data) => Some(data.clone()),
            _ => None,
        });
    let Some(configured) = configured else {
        return Err(Rejection::Unavailable {
            message: "the alert settings were not recorded".into(),
        }
        .into());
    };
    Ok(Json(json!({
        "account_id": id,
        "low_balance": configured.low_balance,
        "url": configured.url,
        "position": outcome.position,
    }))
    .into_response())
}

pub(super) async fn read(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    let Some(outbox) = app.alerts.clone() else {
        return Err(Rejection::Unavailable {
            message: "this process runs no alerts projector".into(),
        }
        .into());
    };
    app.wait_for_views(params.min_position).await?;
    if let Some(position) = params.min_position {
        if !outbox.wait_for(position, MIN_POSITION_WAIT).await {
            return Err(Rejection::Unavailable {
                message: format!("the alerts outbox has not reached position {position} yet"),
            }
            .into());
        }
    }
    if app.views.account(&id).is_none() {
        return Err(Rejection::AccountNotFound { account_id: id }.into());
    }
    let account_id = id.clone();
    let alerts = tokio::task::spawn_blocking(move || outbox.account(&account_id))
        .await
        .map_err(|error| error.to_string())
        .and_then(|read| read.map_err(|error| error.to_string()))
        .map_err(|message| Rejection::Unavailable { message })?;
    let (low_balance, url) = match alerts.config {
        Some(config) => (config.low_balance, config.url),
        None => (Vec::new(), None),
    };
    Ok(Json(json!({
        "account_id": id,
        "low_balance": low_balance,
        "url": url,
        "notifications": {
            "pending": alerts.pending,
            "delivered": alerts.delivered,
            "failed": alerts.failed,
        },
    }))
    .into_response())
}
