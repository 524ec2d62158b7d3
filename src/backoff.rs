//! The pause between retries of something that failed, written once.
//!
//! Owns: exponential backoff (each failure doubles the pause, up to a
//! ceiling; callers start from their least pause and go back to it after a
//! success). Must not touch: what is retried, or the sleeping (callers sleep,
//! so they can also select).

use std::time::Duration;

/// The pause after `pause` failed again: doubled, at most `max`.
pub(crate) fn next(pause: Duration, max: Duration) -> Duration {
    (pause * 2).min(max)
}
