//! Transports: how a player's feed reaches a socket.
//!
//! Owns: what SSE and WebSocket share — parsing a resume point, who may
//! read a feed, and why a connection ends ([`End`], with the close codes of
//! contract §9). Delivery semantics (what a resume point means, what it
//! acknowledges, `resync_required`) are the session's: both transports call
//! [`crate::session::open`]. Must not touch: storage directly.

pub mod sse;
pub mod ws;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::protocol::{ErrorCode, Event};
use crate::session::Feed;

/// Parses a resume point: a non-negative integer, else `400 invalid_resume_point`.
pub fn parse_resume(raw: &str) -> Result<u64, ApiError> {
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidResumePoint,
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

/// Why a connection ends (contract §9). WebSocket closes with [`End::close`];
/// an SSE stream just ends, and the client resumes from its `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The node shuts down (SIGTERM/SIGINT).
    Shutdown,
    /// The token expired on the open connection.
    Expired,
    /// The bounded send queue overflowed while live (slow consumer).
    Slow,
    /// Sustained protocol violations (WebSocket), or an SSE client that
    /// sends more than `sse::MAX_CLIENT_BYTES`.
    Abuse,
    /// A frame above the hard limit (WebSocket only).
    TooBig,
    /// A text frame that is not UTF-8 (WebSocket only).
    NotUtf8,
    /// The peer was silent for longer than the idle timeout (WebSocket only).
    Idle,
    /// The engine failed while the feed read the log.
    EngineLost,
    /// The client said `bye` (a clean logout; WebSocket only).
    Bye,
}

/// WebSocket close code: a normal closure (after the client's `bye`).
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code: the node is restarting.
pub const CLOSE_RESTART: u16 = 1012;
/// WebSocket close code: the token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// WebSocket close code: slow consumer.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// WebSocket close code: policy violation (sustained abuse).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code: data inconsistent with its type (text that is not UTF-8).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// WebSocket close code: a message too big to read.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code: going away (idle peer).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code: an internal error (the engine is unavailable).
pub const CLOSE_INTERNAL: u16 = 1011;

impl End {
    /// A short name of why the connection ended, for logs.
    pub const fn reason(self) -> &'static str {
        match self {
            End::Shutdown => "shutdown",
            End::Expired => "token_expired",
            End::Slow => "slow_consumer",
            End::Abuse => "policy_violation",
            End::TooBig => "message_too_big",
            End::NotUtf8 => "invalid_utf8",
            End::Idle => "idle_timeout",
            End::EngineLost => "engine_unavailable",
            End::Bye => "bye",
        }
    }

    /// The WebSocket close code (RFC 6455 §7.4; 4001 and 4008 are the
    /// contract's own) and reason.
    pub const fn close(self) -> (u16, &'static str) {
        match self {
            End::Shutdown => (CLOSE_RESTART, "server restarting"),
            End::Expired => (CLOSE_TOKEN_EXPIRED, "token_expired"),
            End::Slow => (CLOSE_SLOW_CONSUMER, "slow_consumer"),
            End::Abuse => (CLOSE_POLICY, "policy_violation"),
            End::TooBig => (CLOSE_TOO_BIG, "message_too_big"),
            End::NotUtf8 => (CLOSE_INVALID_DATA, "invalid_utf8"),
            End::Idle => (CLOSE_GOING_AWAY, "idle_timeout"),
            End::EngineLost => (CLOSE_INTERNAL, "engine_unavailable"),
            End::Bye => (CLOSE_NORMAL, "bye"),
        }
    }
}

/// Events sent in one write when several are ready.
const MAX_BATCH: usize = 64;

/// `first`, then up to `MAX_BATCH - 1` more events that are ready now.
fn ready_batch(first: Event, feed: &mut Feed) -> impl Iterator<Item = Event> + '_ {
    let batch =
        std::iter::once(first).chain(std::iter::from_fn(|| feed.try_next()).take(MAX_BATCH - 1));
    #[cfg(feature = "defects")]
    let batch = resend_batch(batch);
    batch
}

/// [`crate::defects::Defect::ResendBatch`]: a batch of two or more, twice.
#[cfg(feature = "defects")]
fn resend_batch(batch: impl Iterator<Item = Event>) -> std::vec::IntoIter<Event> {
    let mut v: Vec<Event> = batch.collect();
    if crate::defects::on(crate::defects::Defect::ResendBatch) && v.len() >= 2 {
        v.extend_from_within(..);
    }
    v.into_iter()
}

/// A short random id for a session.
pub fn session_id() -> String {
    format!("s-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod props {
    use super::parse_resume;
    use proptest::prelude::*;

    proptest! {
        /// Any header or query value: a number or `invalid_resume_point`, never a panic.
        #[test]
        fn resume_points_never_panic(raw in "\\PC{0,40}") {
            if let Err(e) = parse_resume(&raw) {
                prop_assert_eq!(e.code.as_str(), "invalid_resume_point");
            }
        }

        #[test]
        fn resume_points_round_trip(n in any::<u64>(), pad in " {0,3}") {
            prop_assert_eq!(parse_resume(&format!("{pad}{n}{pad}")).expect("number"), n);
        }

        /// Past 64 bits is "beyond the last": the largest number.
        #[test]
        fn huge_resume_points_mean_beyond_the_last(digits in "[1-9][0-9]{20,60}") {
            prop_assert_eq!(parse_resume(&digits).expect("number"), u64::MAX);
        }
    }
}
