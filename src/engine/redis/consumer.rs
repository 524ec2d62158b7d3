//! Reading a stream as a consumer group: the one `XREADGROUP` / `XAUTOCLAIM`
//! / `XACK` code path, shared by the command stream (`read_commands`,
//! `claim_commands`, `ack_commands`) and Redis-native publishing ([`super::ingest`]).
//!
//! Owns: creating a group on first use (from the stream's start, `MKSTREAM`),
//! blocking reads on a pooled connection of their own, and discarding that
//! connection when a blocking read does not complete. Must not touch: what
//! the entries mean (callers decode them).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Value;

use super::conn::Conns;
use super::ms;
use super::stream::{self, Entry};
use crate::engine::Result;

/// Consumer group `name` on stream `stream`.
#[derive(Clone, Copy)]
pub(crate) struct Group<'a> {
    pub stream: &'a str,
    pub name: &'a str,
}

impl<'a> Group<'a> {
    pub fn new(stream: &'a str, name: &'a str) -> Self {
        Self { stream, name }
    }

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
        conns: &Conns,
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
        let mut conn = conns.own().await?;
        let v = match conn.query_blocking(&cmd, block).await {
            Err(crate::engine::EngineError::Redis(e)) if e.code() == Some("NOGROUP") => {
                self.create(&mut conns.shared().await?).await?;
                conn.query_blocking(&cmd, block).await?
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
