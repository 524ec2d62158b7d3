//! Transports: how a player's feed reaches a socket.
//!
//! Owns: what SSE and WebSocket share — the resume point rules and opening a
//! session. Must not touch: storage directly (sessions go through
//! [`crate::session::Feed`] and the engine trait).

pub mod sse;
pub mod ws;

use std::sync::Arc;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::state::App;

/// Parses a resume point: a non-negative integer, else `400 invalid_resume_point`.
pub fn parse_resume(raw: &str) -> Result<u64, ApiError> {
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_resume_point",
            "the resume point must be a non-negative integer sequence number",
        ));
    }
    // Digits only: the one failure left is overflow, a resume point beyond
    // any sequence number, which means "nothing to replay".
    Ok(digits.parse::<u64>().unwrap_or(u64::MAX))
}

/// Checks the caller may read `path_player`'s feed (a player token for that player).
pub fn check_reader(principal: &Principal, path_player: Option<&str>) -> Result<(), ApiError> {
    principal.require(&[Role::Player])?;
    if let Some(p) = path_player {
        principal.require_player(p)?;
    }
    Ok(())
}

/// The resume point to use: the explicit one, else the player's acked cursor.
pub async fn resolve_after(
    app: &Arc<App>,
    player: &str,
    explicit: Option<u64>,
) -> Result<u64, ApiError> {
    match explicit {
        Some(n) => Ok(n),
        None => Ok(app.engine.cursor(player).await?.acked),
    }
}

/// A short random id for a session.
pub fn session_id() -> String {
    format!("s-{:016x}", rand::random::<u64>())
}
