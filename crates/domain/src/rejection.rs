//! Rejections: the closed set of outcomes that refuse a request. Their codes are exactly the
//! API's error codes (SPEC section 8), so a caller can act on the code alone.

use serde_json::{json, Value};

use crate::catalog::Tier;
use crate::credits::Credits;
use crate::time::Instant;

/// Every error code of the HTTP contract. How to handle each: 4xx codes are the caller's to
/// fix (or, for 402/403, to resolve by paying or upgrading) and retrying unchanged is
/// pointless, except `INSUFFICIENT_CREDITS`, which may succeed after a top-up; 409 conflicts
/// mean the id was used for something else; 503 is the only code worth a blind retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400: malformed or out-of-range input.
    InvalidRequest { message: String },
    /// 400: the model is not in the catalog.
    UnknownModel { model: String },
    /// 401: no or an unknown bearer token.
    Unauthenticated,
    /// 403: the token's role may not do this.
    Forbidden { role: String },
    /// 403: the model needs a higher tier and no trial applies.
    ModelTierRequired {
        model: String,
        required: Tier,
        tier: Tier,
    },
    /// 403: the model's count trial is used up; only an upgrade unblocks it.
    TrialExhausted { model: String, limit: u32 },
    /// 403: the model's time trial has closed; only an upgrade unblocks it.
    TrialExpired { model: String, closed_at: Instant },
    /// 403: API runs need deployment or admin scope.
    ScopeRequired { scope: &'static str },
    /// 403: business needs an approved verification first.
    BusinessVerificationRequired { status: &'static str },
    /// 402: the live buckets cannot pay the whole cost; nothing moved.
    InsufficientCredits {
        required: Credits,
        available: Credits,
    },
    /// 404: no such account.
    AccountNotFound { account_id: String },
    /// 404: no such charge, hold or verification.
    NotFound { what: &'static str, id: String },
    /// 409: the account already exists.
    AccountExists { account_id: String },
    /// 409: the id was already used with a different body.
    IdempotencyConflict { id: String },
    /// 409: a renewal for a period that does not start after the current one.
    StaleRenewal {
        period_start: Instant,
        current_period_start: Instant,
    },
    /// 409: the hold is already captured, released or expired.
    HoldClosed {
        hold_id: String,
        status: &'static str,
    },
    /// 413: the body is larger than allowed.
    PayloadTooLarge { limit_bytes: usize },
    /// 503: the store is unreachable; nothing was written.
    Unavailable { message: String },
}

impl Rejection {
    pub fn invalid(message: impl Into<String>) -> Self {
        Rejection::InvalidRequest {
            message: message.into(),
        }
    }

    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidRequest { .. } => "INVALID_REQUEST",
            Rejection::UnknownModel { .. } => "UNKNOWN_MODEL",
            Rejection::Unauthenticated => "UNAUTHENTICATED",
            Rejection::Forbidden { .. } => "FORBIDDEN",
            Rejection::ModelTierRequired { .. } => "MODEL_TIER_REQUIRED",
            Rejection::TrialExhausted { .. } => "TRIAL_EXHAUSTED",
            Rejection::TrialExpired { .. } => "TRIAL_EXPIRED",
            Rejection::ScopeRequired { .. } => "SCOPE_REQUIRED",
            Rejection::BusinessVerificationRequired { .. } => "BUSINESS_VERIFICATION_REQUIRED",
            Rejection::InsufficientCredits { .. } => "INSUFFICIENT_CREDITS",
            Rejection::AccountNotFound { .. } => "ACCOUNT_NOT_FOUND",
            Rejection::NotFound { .. } => "NOT_FOUND",
            Rejection::AccountExists { .. } => "ACCOUNT_EXISTS",
            Rejection::IdempotencyConflict { .. } => "IDEMPOTENCY_CONFLICT",
            Rejection::StaleRenewal { .. } => "STALE_RENEWAL",
            Rejection::HoldClosed { .. } => "HOLD_CLOSED",
            Rejection::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Rejection::Unavailable { .. } => "UNAVAILABLE",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(&self) -> u16 {
        match self {
            Rejection::InvalidRequest { .. } | Rejection::UnknownModel { .. } => 400,
            Rejection::Unauthenticated => 401,
            Rejection::InsufficientCredits { .. } => 402,
            Rejection::Forbidden { .. }
            | Rejection::ModelTierRequired { .. }
            | Rejection::TrialExhausted { .. }
            | Rejection::TrialExpired { .. }
            | Rejection::ScopeRequired { .. }
            | Rejection::BusinessVerificationRequired { .. } => 403,
            Rejection::AccountNotFound { .. } | Rejection::NotFound { .. } => 404,
            Rejection::AccountExists { .. }
            | Rejection::IdempotencyConflict { .. }
            | Rejection::StaleRenewal { .. }
            | Rejection::HoldClosed { .. } => 409,
            Rejection::PayloadTooLarge { .. } => 413,
            Rejection::Unavailable { .. } => 503,
        }
    }

    /// A human-readable message: lowercase, no trailing period.
    pub fn message(&self) -> String {
        match self {
            Rejection::InvalidRequest { message } => message.clone(),
            Rejection::UnknownModel { model } => format!("model {model:?} is not in the catalog"),
            Rejection::Unauthenticated => "a valid bearer token is required".into(),
            Rejection::Forbidden { role } => format!("role {role} may not do this"),
            Rejection::ModelTierRequired {
                model,
                required,
                tier,
            } => {
                format!(
                    "model {model} needs the {required} tier or above, the account is on {tier}"
                )
            }
            Rejection::TrialExhausted { model, limit } => {
                format!(
                    "the free trial of {model} ({limit} runs) is used up: upgrade to run it again"
                )
            }
            Rejection::TrialExpired { model, closed_at } => format!(
                "the free trial window of {model} closed at {}: upgrade to run it again",
                closed_at.to_rfc3339()
            ),
            Rejection::ScopeRequired { scope } => {
                format!("api runs need deployment or admin scope, the account has {scope} scope")
            }
            Rejection::BusinessVerificationRequired { status } => {
                format!("business needs an approved business verification, it is {status}")
            }
            Rejection::InsufficientCredits {
                required,
                available,
            } => {
                format!("the run costs {required} credits and {available} are available")
            }
            Rejection::AccountNotFound { account_id } => {
                format!("account {account_id} does not exist")
            }
            Rejection::NotFound { what, id } => format!("{what} {id} does not exist"),
            Rejection::AccountExists { account_id } => {
                format!("account {account_id} already exists")
            }
            Rejection::IdempotencyConflict { id } => {
                format!("id {id} was already used with a different request")
            }
            Rejection::StaleRenewal {
                period_start,
                current_period_start,
            } => format!(
                "renewal period starts at {}, not after the current period start {}",
                period_start.to_rfc3339(),
                current_period_start.to_rfc3339()
            ),
            Rejection::HoldClosed { hold_id, status } => {
                format!("hold {hold_id} is already {status}")
            }
            Rejection::PayloadTooLarge { limit_bytes } => {
                format!("the request body is larger than {limit_bytes} bytes")
            }
            Rejection::Unavailable { message } => format!("the ledger is unavailable: {message}"),
        }
    }

    /// Structured details for the error envelope.
    pub fn details(&self) -> Value {
        match self {
            Rejection::InvalidRequest { .. }
            | Rejection::Unauthenticated
            | Rejection::Unavailable { .. } => json!({}),
            Rejection::UnknownModel { model } => json!({ "model": model }),
            Rejection::Forbidden { role } => json!({ "role": role }),
            Rejection::ModelTierRequired {
                model,
                required,
                tier,
            } => {
                json!({ "model": model, "required_tier": required, "tier": tier })
            }
            Rejection::TrialExhausted { model, limit } => json!({ "model": model, "limit": limit }),
            Rejection::TrialExpired { model, closed_at } => {
                json!({ "model": model, "closed_at": closed_at.to_rfc3339() })
            }
            Rejection::ScopeRequired { scope } => json!({ "scope": scope }),
            Rejection::BusinessVerificationRequired { status } => json!({ "status": status }),
            Rejection::InsufficientCredits {
                required,
                available,
            } => {
                json!({ "required": required, "available": available })
            }
            Rejection::AccountNotFound { account_id } | Rejection::AccountExists { account_id } => {
                json!({ "account_id": account_id })
            }
            Rejection::NotFound { what, id } => json!({ "kind": what, "id": id }),
            Rejection::IdempotencyConflict { id } => json!({ "id": id }),
            Rejection::StaleRenewal {
                period_start,
                current_period_start,
            } => json!({
                "period_start": period_start.to_rfc3339(),
                "current_period_start": current_period_start.to_rfc3339(),
            }),
            Rejection::HoldClosed { hold_id, status } => {
                json!({ "hold_id": hold_id, "status": status })
            }
            Rejection::PayloadTooLarge { limit_bytes } => json!({ "limit_bytes": limit_bytes }),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for Rejection {}
