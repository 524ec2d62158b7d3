//! Error types shared across modules, and their mapping to HTTP answers.
//!
//! Owns: [`EngineError`] (what storage can fail with) and [`ApiError`] (what a
//! client is told, as `{"error": {"code", "message"}}`). Must not touch: I/O.

use warp::http::StatusCode;

use crate::protocol::{ErrorCode, ProtocolError};

/// A failure of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("engine data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Rejected(&'static str),
    /// The append is done on the master, but `WAIT` saw fewer replicas
    /// confirm it in time (`MYTHOS_REDIS_WAIT_REPLICAS`): it may be lost in a
    /// failover. A retry with the same `id` appends nothing twice.
    #[error("written, but {got} of {wanted} replicas confirmed it in time")]
    NotReplicated { got: u64, wanted: u64 },
}

impl EngineError {
    /// True for a failure that may pass (Redis unreachable, restarting,
    /// timing out): worth retrying. Corrupt data and refusals are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, EngineError::Redis(_) | EngineError::Pool(_))
    }
}

/// An error answer: HTTP status, protocol code and a human message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl warp::reject::Reject for ApiError {}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        Self::bad_request(e.code, e.message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        if let EngineError::NotReplicated { .. } = e {
            tracing::warn!(error = %e, "not replicated");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NotReplicated,
                format!("{e}; the event may exist: retry with the same id"),
            );
        }
        tracing::error!(error = %e, "engine error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::EngineUnavailable,
            "the event store is unavailable; retry",
        )
    }
}
