//! The insight reads of SPEC section 13: model access badges and usage from the views, the
//! balance over time from the stream. Every range is checked before anything is read or
//! waited for, and a bad one changes nothing.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Days, NaiveTime};
use ledger_domain::explain::{HistoryRange, Point};
use ledger_domain::insight::{model_badges, ModelBadge};
use ledger_domain::usage::{UsageBy, UsageRange};
use ledger_domain::{DurationS, Instant, Rejection};
use serde::{Deserialize, Serialize};

use super::dto::ReadParams;
use super::error::ApiError;
use super::extract::{AccountId, Caller, QueryParams};
use super::AppState;

/// `?from=&to=&step=` on the history endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    pub from: Instant,
    pub to: Instant,
    pub step: DurationS,
    #[serde(default)]
    pub min_position: Option<u64>,
}

/// `?from=&to=&by=` on the usage endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Midnight UTC; default: the start of the ledger's time, all usage.
    #[serde(default)]
    pub from: Option<Instant>,
    /// Midnight UTC, exclusive; default: the midnight after now, today included.
    #[serde(default)]
    pub to: Option<Instant>,
    #[serde(default)]
    pub by: UsageBy,
    #[serde(default)]
    pub min_position: Option<u64>,
}

fn not_found(account_id: String) -> ApiError {
    Rejection::AccountNotFound { account_id }.into()
}

/// `GET /v1/accounts/{id}/models`: every catalog model's badge, from the views and the code
/// that decides admission.
pub(super) async fn models(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    app.wait_for_views(params.min_position).await?;
    let account = app.views.account(&id).ok_or_else(|| not_found(id))?;
    #[derive(Serialize)]
    struct Models {
        models: Vec<ModelBadge>,
        position: Option<u64>,
    }
    Ok(Json(Models {
        models: model_badges(&account, app.ledger.catalog(), app.ledger.now()),
        position: app.views.position(),
    })
    .into_response())
}

/// `GET /v1/accounts/{id}/history`: the balance at every step of `[from, to]`, each point
/// what explain answers for that instant.
pub(super) async fn history(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Response, ApiError> {
    let range = HistoryRange::new(params.from, params.to, params.step, app.ledger.now())
        .map_err(|err| Rejection::invalid(err.to_string()))?;
    app.wait_for_views(params.min_position).await?;
    let points = crate::insight::account_history(app.ledger.store().as_ref(), &id, &range)
        .await?
        .ok_or_else(|| not_found(id))?;
    #[derive(Serialize)]
    struct History {
        points: Vec<Point>,
    }
    Ok(Json(History { points }).into_response())
}

/// `GET /v1/accounts/{id}/usage`: charges net of refunds in `[from, to)`, from the usage view.
pub(super) async fn usage(
    State(app): State<AppState>,
    _caller: Caller,
    AccountId(id): AccountId,
    QueryParams(params): QueryParams<UsageParams>,
) -> Result<Response, ApiError> {
    let from = params.from.unwrap_or(Instant::UNIX_EPOCH);
    let to = match params.to {
        Some(to) => to,
        None => next_midnight(app.ledger.now()),
    };
    let range = UsageRange::new(from, to).map_err(|err| Rejection::invalid(err.to_string()))?;
    app.wait_for_views(params.min_position).await?;
    let report = app
        .views
        .usage(&id, &range, params.by, app.ledger.catalog())
        .ok_or_else(|| not_found(id))?;
    Ok(Json(report).into_response())
}

/// The first midnight UTC after `now`.
fn next_midnight(now: Instant) -> Instant {
    let today = now.date_naive();
    today
        .checked_add_days(Days::new(1))
        .unwrap_or(today)
        .and_time(NaiveTime::MIN)
        .and_utc()
}
