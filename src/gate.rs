//! Connection caps: how many player connections this node holds, in all and
//! per player (`MYTHOS_MAX_CONNECTIONS`, `MYTHOS_MAX_PLAYER_CONNECTIONS`).
//!
//! Owns: the counts, and the [`Pass`] each open connection holds (dropping it
//! frees the place). The excess is refused with `429 too_many_connections`
//! before an SSE stream starts or a WebSocket is upgraded, so a flood of
//! connections from one token cannot exhaust the node. Must not touch:
//! sessions, sockets, the engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use warp::http::StatusCode;

use crate::error::ApiError;
use crate::protocol::ErrorCode;

/// The node's connection counts and caps.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_player: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_player: HashMap<String, usize>,
    /// Open connections by (player, transport), for `inspect player`.
    by_transport: HashMap<(String, &'static str), usize>,
}

/// A place taken by one open connection; freed on drop.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    player: String,
    transport: &'static str,
}

impl Gate {
    pub fn new(max_total: u64, max_player: u64) -> Arc<Self> {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Arc::new(Self {
            max_total: n(max_total),
            max_player: n(max_player),
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a connection of `player` over `transport` (`sse`,
    /// `websocket`), or says why not.
    pub fn admit(
        self: &Arc<Self>,
        player: &str,
        transport: &'static str,
    ) -> Result<Pass, ApiError> {
        let mut c = self.counts();
        if c.total >= self.max_total {
            metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED, "reason" => "node")
                .increment(1);
            return Err(refused(format!(
                "this node holds its maximum of {} connections (MYTHOS_MAX_CONNECTIONS); try again later or another node",
                self.max_total
            )));
        }
        let mine = c.per_player.get(player).copied().unwrap_or(0);
        if mine >= self.max_player {
            metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED, "reason" => "player")
                .increment(1);
            return Err(refused(format!(
                "this player already has {} connections on this node (MYTHOS_MAX_PLAYER_CONNECTIONS); close one first",
                self.max_player
            )));
        }
        c.total += 1;
        c.per_player.insert(player.to_string(), mine + 1);
        *c.by_transport
            .entry((player.to_string(), transport))
            .or_default() += 1;
        Ok(Pass {
            gate: self.clone(),
            player: player.to_string(),
            transport,
        })
    }

    /// Open connections on this node.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.counts().total
    }

    /// `player`'s open connections on this node, by transport.
    pub fn of_player(&self, player: &str) -> std::collections::BTreeMap<String, u64> {
        self.counts()
            .by_transport
            .iter()
            .filter(|((p, _), _)| p == player)
            .map(|((_, t), n)| (t.to_string(), *n as u64))
            .collect()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut c = self.gate.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_player.get_mut(&self.player) {
            *n -= 1;
            if *n == 0 {
                c.per_player.remove(&self.player);
            }
        }
        let key = (std::mem::take(&mut self.player), self.transport);
        if let Some(n) = c.by_transport.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.by_transport.remove(&key);
            }
        }
    }
}

fn refused(message: String) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyConnections,
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_player_and_per_node() {
        let g = Gate::new(3, 2);
        let a1 = g.admit("a", "sse").expect("a1");
        let a2 = g.admit("a", "sse").expect("a2");
        let e = g.admit("a", "sse").expect_err("a3 over the player cap");
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (429, "too_many_connections")
        );
        let _b1 = g.admit("b", "sse").expect("b1");
        assert_eq!(
            g.admit("c", "sse")
                .expect_err("over the node cap")
                .status
                .as_u16(),
            429
        );
        drop(a1);
        let _c1 = g.admit("c", "sse").expect("a place was freed");
        drop(a2);
        assert_eq!(g.open(), 2);
        assert!(
            !g.counts().per_player.contains_key("a"),
            "no entry left behind"
        );
        let _w = g.admit("c", "websocket").expect("c2");
        assert_eq!(
            g.of_player("c"),
            [("sse".to_string(), 1), ("websocket".to_string(), 1)].into()
        );
        assert!(g.counts().by_transport.keys().all(|(p, _)| p != "a"));
    }
}
