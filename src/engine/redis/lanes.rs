//! Multiplexed lanes: a few long-held pooled connections shared by every
//! non-blocking command.
//!
//! Owns: which pooled connection a command goes out on. A deadpool-redis
//! connection is a multiplexed one, so many tasks can have requests in flight
//! on it at once (Redis reads them as pipelines). Checking a connection out
//! of the pool per command would cost deadpool's recycle round trip
//! (`UNWATCH` + `PING`) every time, doubling the round trips of a publish.
//! So each lane keeps one pooled connection checked out; a lane whose
//! connection fails with an I/O error or timeout returns it to the pool
//! (where the recycle check discards it) and takes a fresh one next time.
//! Must not touch: blocking commands (`XREADGROUP BLOCK`), which would stall
//! everyone behind them on a shared connection: those use the pool directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use deadpool_redis::{Connection, Pool};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::engine::EngineError;

#[derive(Default)]
struct Slot {
    /// Bumped whenever the connection is replaced, so a late failure report
    /// about an old connection doesn't discard its replacement.
    generation: u64,
    conn: Option<Connection>,
}

/// A fixed set of lanes over a deadpool-redis pool.
pub struct Lanes {
    pool: Pool,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
}

impl Lanes {
    pub fn new(pool: Pool, lanes: usize) -> Self {
        let slots = (0..lanes.max(1)).map(|_| Mutex::default()).collect();
        Self {
            pool,
            slots,
            next: AtomicUsize::new(0),
        }
    }

    fn slot(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle on the next lane (round robin), connecting it if needed.
    pub async fn get(&self) -> Result<Lane<'_>, EngineError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(lane) = self.lane(i, &self.slot(i)) {
            return Ok(lane);
        }
        let fresh = self
            .pool
            .get()
            .await
            .map_err(|e| EngineError::Pool(e.to_string()))?;
        let mut s = self.slot(i);
        if s.conn.is_none() {
            s.generation += 1;
            s.conn = Some(fresh);
        }
        self.lane(i, &s)
            .ok_or_else(|| EngineError::Pool("lane emptied while connecting".into()))
    }

    /// A handle on lane `slot`'s connection, if it has one.
    fn lane(&self, slot: usize, s: &Slot) -> Option<Lane<'_>> {
        Some(Lane {
            conn: (**s.conn.as_ref()?).clone(),
            lanes: self,
            slot,
            generation: s.generation,
        })
    }

    fn failed(&self, slot: usize, generation: u64, e: &RedisError) {
        if !(e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error()) {
            return;
        }
        let old = {
            let mut s = self.slot(slot);
            if s.generation != generation {
                return;
            }
            s.conn.take()
        };
        if old.is_some() {
            tracing::warn!(lane = slot, error = %e, "redis lane dropped; reconnecting on next use");
        }
    }
}

/// One command's use of a lane; reports connection failures back to it.
pub struct Lane<'a> {
    conn: MultiplexedConnection,
    lanes: &'a Lanes,
    slot: usize,
    generation: u64,
}

impl ConnectionLike for Lane<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.lanes.failed(self.slot, self.generation, e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.conn.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &r {
                self.lanes.failed(self.slot, self.generation, e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
