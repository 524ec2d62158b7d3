//! The pause between retries of something that failed, written once.
//!
//! Owns: exponential backoff (the least pause, doubling after each failure
//! up to a ceiling, back to the least after a success). Must not touch: what
//! is retried, or the sleeping (callers sleep, so they can also select).

use std::time::Duration;

/// A retry's pause: `min`, doubling after each failure up to `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    pause: Duration,
}

impl Backoff {
    pub(crate) const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            pause: min,
        }
    }

    /// How long to wait before the next attempt.
    pub(crate) fn pause(&self) -> Duration {
        self.pause
    }

    /// An attempt failed: the next pause doubles, up to the ceiling.
    pub(crate) fn failed(&mut self) {
        self.pause = (self.pause * 2).min(self.max);
    }

    /// An attempt succeeded (or starts over): the next pause is the least.
    pub(crate) fn reset(&mut self) {
        self.pause = self.min;
    }
}
