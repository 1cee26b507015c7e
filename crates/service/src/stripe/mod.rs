//! `POST /v1/billing/stripe` (SPEC section 12): Stripe's webhook deliveries, authenticated by
//! their signature, turned into the ledger's billing commands. Stripe retries anything but a
//! 2xx for days, delivers twice and out of order; the answers below are chosen for that.

pub mod event;
pub mod signature;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::Rejection;
use serde_json::{json, Value};

pub use self::event::{map_delivery, Delivery, Mapped, PayloadError};
pub use self::signature::{Secrets, SignatureError};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::ledger::CommandError;

/// The role the envelope records for what Stripe caused.
const ACTOR: &str = "billing";

/// The answer Stripe reads: 200 stops its retries.
fn receipt(applied: &str, position: Option<u64>, refused: Option<&Rejection>) -> Response {
    let mut body = json!({ "received": true, "applied": applied, "position": position });
    if let (Some(rejection), Some(map)) = (refused, body.as_object_mut()) {
        map.insert(
            "refused".into(),
            json!({ "code": rejection.code(), "message": rejection.message() }),
        );
    }
    Json::<Value>(body).into_response()
}

/// Verifies, maps and runs one delivery.
pub async fn webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(secrets) = app.stripe.as_ref() else {
        // Without secrets nothing could be verified: the route is off.
        return Err(Rejection::NotFound {
            what: "stripe webhook secret",
            id: "LEDGER_STRIPE_WEBHOOK_SECRETS".into(),
        }
        .into());
    };
    let header = headers
        .get("stripe-signature")
        .map(|value| value.as_bytes());
    let now_s = app.ledger.now().timestamp();
    // Before any parsing: an unsigned body is never even read as JSON.
    if let Err(err) = signature::verify(secrets, header, &body, now_s) {
        tracing::warn!(error = %err, "stripe delivery refused");
        return Err(Rejection::invalid(err.to_string()).into());
    }
    let delivery = map_delivery(&body).map_err(|err| {
        tracing::warn!(error = %err, "stripe delivery unusable");
        Rejection::invalid(err.to_string())
    })?;
    let (account_id, command, writes) = match delivery.mapped {
        Mapped::Ignored(reason) => {
            tracing::info!(stripe_event = %delivery.id, r#type = %delivery.type_name, reason, "stripe delivery acknowledged");
            return Ok(receipt("none", None, None));
        }
        Mapped::Command {
            account_id,
            command,
            writes,
        } => (account_id, command, writes),
    };
    let result = app.ledger.execute(&account_id, &command, ACTOR).await;
    let span = (&delivery.id, &delivery.type_name, command.name());
    match result {
        Ok(outcome) => {
            let wrote = outcome
                .written
                .iter()
                .any(|envelope| envelope.event.type_name() == writes);
            let applied = if wrote { writes } else { "none" };
            tracing::info!(
                stripe_event = %span.0, r#type = %span.1, command = span.2, account_id,
                applied, replayed = outcome.replayed, position = outcome.position,
                "stripe delivery applied"
            );
            Ok(receipt(applied, outcome.position, None))
        }
        // An invoice for a period already renewed: older than the state it would change.
        Err(CommandError::Rejected(Rejection::StaleRenewal { .. })) => {
            tracing::info!(stripe_event = %span.0, r#type = %span.1, account_id, "stripe delivery older than the account");
            Ok(receipt("none", None, None))
        }
        // Refusals no retry can change: acknowledged so that Stripe stops, and logged for
        // billing to fix (approve the verification) and resend from Stripe's dashboard.
        Err(CommandError::Rejected(
            rejection @ (Rejection::BusinessVerificationRequired { .. }
            | Rejection::IdempotencyConflict { .. }),
        )) => {
            tracing::warn!(
                stripe_event = %span.0, r#type = %span.1, command = span.2, account_id,
                code = rejection.code(), message = %rejection.message(),
                "stripe delivery refused by the ledger's rules; acknowledged so Stripe stops retrying"
            );
            Ok(receipt("none", None, Some(&rejection)))
        }
        // 404 for an account that does not exist (yet), or a lot not bought yet: Stripe
        // retries. 400 for what the rules call invalid, 503 for a store outage.
        Err(err) => {
            tracing::warn!(stripe_event = %span.0, r#type = %span.1, account_id, error = %err, "stripe delivery not applied");
            Err(err.into())
        }
    }
}
