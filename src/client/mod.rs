//! The Rust client of a running broker's public API: what a game server, a
//! tool or a test sends and reads over the wire, and nothing else.
//!
//! - [`Http`]: HTTP calls with a bearer token and JSON bodies (publish, rooms,
//!   accounts, the admin reads), over hyper's client;
//! - [`Player`]: a player's WebSocket feed (token and `since` in the URL,
//!   frames as JSON, client messages, how it closed);
//! - [`SseReader`]: the `id:`/`event:`/`data:` blocks of an SSE stream;
//! - [`token`]: an HS256 token for a subject and role, from the shared secret;
//! - [`Backoff`]: the waits between a client's retries.
//!
//! Used by the tools' `--url` path, the demo world (`examples/demo`), the
//! [`testkit`](crate::testkit), the benchmarks (`bench/`) and the tests.
//! Owns: requests, frames and tokens as protocol.md defines them. Must not
//! touch: the broker's insides — it makes exactly the requests any client
//! could.

mod http;
mod sse;
mod ws;

use std::time::Duration;

pub use self::http::{query_value, ClientError, Http, MAX_ANSWER};
pub use self::sse::{SseError, SseEvent, SseReader};
pub use self::ws::{Player, Socket, WsEnd};

use crate::auth::{now_secs, Claims, Role};

/// An HS256 token for `sub` with `role`, signed with `secret`, expiring
/// `exp_in_secs` from now (negative: already expired, for tests).
pub fn token(secret: &str, sub: &str, role: Role, exp_in_secs: i64) -> Result<String, ClientError> {
    let now = now_secs() as i64;
    let claims = Claims {
        sub: sub.to_string(),
        exp: (now + exp_in_secs).max(0) as u64,
        iat: Some(now as u64),
        role,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| ClientError::Token(e.to_string()))
}

/// The waits between retries of one operation: `first`, then doubling up to
/// `max`; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt (and doubles the one after it).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Sleeps [`Backoff::next_wait`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }

    /// Back to `first`, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..4).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }
}
