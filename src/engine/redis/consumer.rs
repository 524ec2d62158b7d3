//! Reading a stream as a consumer group: the one `XREADGROUP` / `XAUTOCLAIM`
//! / `XACK` code path, shared by the command stream (`read_commands`,
//! `claim_commands`, `ack_commands`) and Redis-native publishing ([`super::ingest`]).
//!
//! Owns: creating a group on first use (from the stream's start, `MKSTREAM`),
//! blocking reads on a pooled connection of their own, and discarding that
//! connection when a blocking read does not complete. Must not touch: what
//! the entries mean (callers decode them).

use std::time::Duration;

use deadpool_redis::{Connection, Pool};
use redis::aio::ConnectionLike;
use redis::{Cmd, Value};

use super::stream::{self, Entry};
use super::{ms, pool_err, OP_TIMEOUT};
use crate::engine::{EngineError, Result};

/// Consumer group `name` on stream `stream`.
#[derive(Clone, Copy)]
pub(crate) struct Group<'a> {
    pub stream: &'a str,
    pub name: &'a str,
}

impl Group<'_> {
    /// Creates the group (reading from the stream's start) unless it exists.
    async fn create(&self, conn: &mut impl ConnectionLike) -> Result<()> {
        let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream)
            .arg(self.name)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Up to `count` entries for `consumer`: new ones (`from` = `>`, waiting
    /// up to `block`) or its own pending ones (`from` = `0`). Creates the
    /// group if Redis does not know it.
    pub async fn read(
        &self,
        pool: &Pool,
        consumer: &str,
        from: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(self.name).arg(consumer);
        cmd.arg("COUNT").arg(count.max(1));
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(ms(block));
        }
        cmd.arg("STREAMS").arg(self.stream).arg(from);
        let v = match query_blocking(pool, &cmd, block).await {
            Err(EngineError::Redis(e)) if e.code() == Some("NOGROUP") => {
                self.create(&mut pool.get().await.map_err(pool_err)?)
                    .await?;
                query_blocking(pool, &cmd, block).await?
            }
            r => r?,
        };
        stream::read_group(v)
    }

    /// One `XAUTOCLAIM` step from `cursor`: up to `count` entries idle for
    /// `min_idle` on any consumer, now `consumer`'s, and the next cursor
    /// (`0-0` once the whole pending list was looked at). An unknown group
    /// has nothing pending.
    pub async fn claim(
        &self,
        conn: &mut impl ConnectionLike,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<Entry>)> {
        let v = redis::cmd("XAUTOCLAIM")
            .arg(self.stream)
            .arg(self.name)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(conn)
            .await;
        let v = match v {
            Err(e) if e.code() == Some("NOGROUP") => return Ok(("0-0".into(), Vec::new())),
            v => v?,
        };
        stream::autoclaim(v)
    }

    /// Marks entries as processed by the group.
    pub async fn ack(&self, conn: &mut impl ConnectionLike, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: u64 = redis::cmd("XACK")
            .arg(self.stream)
            .arg(self.name)
            .arg(ids)
            .query_async(conn)
            .await?;
        Ok(())
    }
}

/// Sends a command that may block on the server for `block`, on a pooled
/// connection of its own. The connection goes back to the pool only when the
/// command completed: one whose future was dropped (a reader stopped
/// waiting), or that failed on the wire, may still have the command running
/// on the server and would stall its next user, so it leaves the pool.
async fn query_blocking(pool: &Pool, cmd: &Cmd, block: Duration) -> Result<Value> {
    let mut held = Held(Some(pool.get().await.map_err(pool_err)?));
    let Some(conn) = held.0.as_mut() else {
        return Err(pool_err("no connection"));
    };
    conn.set_response_timeout(block + OP_TIMEOUT);
    let r = cmd.query_async(&mut *conn).await;
    if !r
        .as_ref()
        .is_err_and(|e| e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error())
    {
        conn.set_response_timeout(OP_TIMEOUT);
        held.0.take(); // completed: back to the pool
    }
    Ok(r?)
}

/// A pooled connection that is discarded, not returned, if still held when dropped.
struct Held(Option<Connection>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Connection::take(conn));
        }
    }
}
