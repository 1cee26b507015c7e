//! The one mapping from a rejection to an HTTP response: the error envelope
//! `{"error": {"code", "message", "details"}}` with the code's status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::Rejection;
use serde_json::{json, Value};

use crate::ledger::CommandError;

/// A rejection on its way out, with optional extra details.
#[derive(Debug)]
pub struct ApiError {
    pub rejection: Rejection,
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    pub fn with_detail(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some((key, value));
        self
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError {
            rejection,
            extra: None,
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        if !matches!(err, CommandError::Rejected(_)) {
            tracing::error!(error = %err, "command failed in the store");
        }
        err.to_rejection().into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rejection = &self.rejection;
        let status = StatusCode::from_u16(rejection.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut details = rejection.details();
        if let (Some((key, value)), Some(map)) = (self.extra, details.as_object_mut()) {
            map.insert(key.to_string(), value);
        }
        let body = json!({
            "error": {
                "code": rejection.code(),
                "message": rejection.message(),
                "details": details,
            }
        });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
