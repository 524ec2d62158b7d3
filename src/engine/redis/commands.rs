//! The command stream on Redis: `XADD mythos:commands MAXLEN ~` into the
//! player's partition (confirmed by `WAIT` with
//! `MYTHOS_REDIS_WAIT_REPLICAS`), and game servers' consumer-group reads,
//! acks and takeovers ([`super::consumer`]), plus `XRANGE` for exports.
//!
//! Owns: the [`CommandStream`] capability. Must not touch: the player logs.

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamMaxlen;
use redis::Cmd;

use super::consumer::Group;
use super::decode::command_of;
use super::{keys, RedisEngine};
use crate::engine::{Command, CommandEntry, CommandStream, EngineError, Result, MAX_COMMANDS};

impl RedisEngine {
    /// Partition `partition` of the command stream, checked.
    fn commands(&self, partition: usize) -> Result<String> {
        let n = self.options.command_partitions;
        if partition >= n {
            return Err(EngineError::Rejected("no such command partition"));
        }
        Ok(keys::partition(keys::COMMANDS, partition, n))
    }
}

#[async_trait]
impl CommandStream for RedisEngine {
    async fn push_command(&self, cmd: &Command) -> Result<String> {
        let stream = self.commands(keys::partition_of(
            &cmd.player_id,
            self.options.command_partitions,
        ))?;
        self.within(async {
            // One XADD: no script needed, and it touches only the stream's slot.
            let fields = [
                ("player_id", &cmd.player_id),
                ("session_id", &cmd.session_id),
                ("type", &cmd.kind),
                ("id", &cmd.id),
                ("payload", &cmd.payload),
            ];
            let maxlen = StreamMaxlen::Approx(MAX_COMMANDS);
            let xadd = Cmd::xadd_maxlen(&stream, maxlen, "*", &fields);
            if !self.waits() {
                return Ok(xadd.query_async(&mut self.shared().await?).await?);
            }
            // `WAIT` blocks the connection it runs on and counts that
            // connection's writes: one of its own. A command not confirmed
            // in time is `NotReplicated` (it stays appended).
            let mut own = self.conns.own().await?;
            let id: String = xadd.query_async(&mut own).await?;
            let confirmed = self
                .wait_each(&mut own, std::slice::from_ref(&stream))
                .await;
            confirmed.into_iter().next().unwrap_or(Ok(()))?;
            Ok(id)
        })
        .await
    }

    fn command_partitions(&self) -> usize {
        self.options.command_partitions
    }

    async fn read_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        count: usize,
        block: Duration,
    ) -> Result<Vec<CommandEntry>> {
        let stream = self.commands(partition)?;
        let entries = Group::new(&stream, group)
            .read(&self.conns, consumer, ">", count, block)
            .await?;
        entries
            .into_iter()
            .filter_map(|e| command_of(e).transpose())
            .collect()
    }

    async fn commands_after(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        let stream = self.commands(partition)?;
        self.entries_after(
            &stream,
            after,
            count,
            "a command entry id must look like <ms>-<n>",
        )
        .await?
        .into_iter()
        .filter_map(|e| command_of(e).transpose())
        .collect()
    }

    async fn ack_commands(
        &self,
        group: &str,
        partition: usize,
        entry_ids: &[String],
    ) -> Result<()> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let stream = self.commands(partition)?;
        Group::new(&stream, group)
            .ack(&mut self.shared().await?, entry_ids)
            .await
    }

    async fn claim_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        let stream = self.commands(partition)?;
        let group = Group::new(&stream, group);
        let count = count.max(1);
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        while out.len() < count {
            let (next, claimed) = group
                .claim(
                    &mut self.shared().await?,
                    consumer,
                    min_idle,
                    &cursor,
                    count - out.len(),
                )
                .await?;
            for e in claimed {
                out.extend(command_of(e)?);
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }
}
