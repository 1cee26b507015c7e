//! Extractors that turn every malformed request into the API's error envelope: bearer-token
//! roles, strict JSON bodies (unknown fields refused, 64 KiB at most), account ids in paths,
//! and query strings.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use ledger_domain::decide::valid_account_id;
use ledger_domain::Rejection;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::tokens::Role;

/// Bodies larger than this are refused with 413.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Paths with query strings longer than this are refused with 400 before anything reads
/// them: every query this API takes fits in a few hundred bytes.
pub const URI_LIMIT_BYTES: usize = 8 * 1024;

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
}

impl Caller {
    /// Allows `roles` (and admin, which may do everything).
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Rejection::Forbidden {
                role: self.role.as_str().to_string(),
            }
            .into())
        }
    }
}

impl Caller {
    /// The caller a request's `Authorization: Bearer TOKEN` header names. The scheme is
    /// case-insensitive, as HTTP says.
    pub fn from_headers(
        tokens: &crate::tokens::Tokens,
        headers: &axum::http::HeaderMap,
    ) -> Result<Caller, ApiError> {
        let value = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .ok_or(Rejection::Unauthenticated)?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(Rejection::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Rejection::Unauthenticated.into());
        }
        let role = tokens
            .role(token.trim())
            .ok_or(Rejection::Unauthenticated)?;
        Ok(Caller { role })
    }
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Set by the guard of the route table once the caller's role is allowed. A handler
        // on a route without that guard admits nobody rather than every role.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(*caller);
        }
        let caller = Caller::from_headers(&AppState::from_ref(state).tokens, &parts.headers)?;
        Err(Rejection::Forbidden {
            role: caller.role.as_str().to_string(),
        }
        .into())
    }
}

/// A JSON body parsed strictly into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let declared = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| value.to_str().unwrap_or("").to_string());
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::from(Rejection::PayloadTooLarge {
                        limit_bytes: BODY_LIMIT_BYTES,
                    })
                } else {
                    ApiError::from(Rejection::invalid(format!("unreadable body: {rejection}")))
                }
            })?;
        if let Some(declared) = declared {
            if !bytes.iter().all(u8::is_ascii_whitespace) && !is_json(&declared) {
                return Err(Rejection::invalid(format!(
                    "bodies are JSON: Content-Type {declared:?} is not application/json"
                ))
                .into());
            }
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// `application/json`, with or without parameters, or a `+json` type. A body declared as
/// something else (a form, plain text) was not meant as this JSON and is not read as it.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a body, naming the offending field in the error. An empty body reads as `{}`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    // serde reads a struct from an array too, field by field in order: `["acme"]` would open
    // account acme. Every body of this API is an object.
    if text.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::invalid("invalid JSON body: the body must be a JSON object").into());
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(text);
    let value: T = serde_path_to_error::deserialize(&mut *deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = if path == "." {
            format!("invalid JSON body: {}", err.inner())
        } else {
            format!("invalid JSON body at {path}: {}", err.inner())
        };
        Rejection::invalid(message)
    })?;
    // Anything after the value is not JSON we understand: refuse it rather than ignore it.
    deserializer
        .end()
        .map_err(|err| Rejection::invalid(format!("invalid JSON body: {err}")))?;
    Ok(value)
}

/// An account id from the path, checked.
#[derive(Debug, Clone)]
pub struct AccountId(pub String);

impl<S> FromRequestParts<S> for AccountId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params): Path<Vec<(String, String)>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|err| Rejection::invalid(format!("bad path: {err}")))?;
        let id = params
            .into_iter()
            .find(|(name, _)| name == "id")
            .map(|(_, value)| value)
            .ok_or_else(|| Rejection::invalid("missing account id"))?;
        if !valid_account_id(&id) {
            return Err(Rejection::invalid(
                "account ids are 1 to 64 characters of letters, digits, '_' and '-'",
            )
            .into());
        }
        Ok(AccountId(id))
    }
}

/// A query string parsed strictly into `T`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|err| Rejection::invalid(format!("invalid query: {}", err.body_text())))?;
        Ok(QueryParams(value))
    }
}
