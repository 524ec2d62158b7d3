//! What an operator reads about the Redis engine's streams and a player's
//! dedupe keys (`inspect streams`, `inspect player`): `XLEN`, `XINFO GROUPS`,
//! `XINFO CONSUMERS`, `XPENDING`, and a bounded `SCAN` of one player's
//! dedupe keys on the server of the player's slot.
//!
//! Owns: these read-only queries and the decoding of their replies, the
//! [`Inspect`] capability of the Redis engine. Must not touch: anything that
//! writes (every function here only reads).

use std::collections::HashMap;

use redis::Value;

use async_trait::async_trait;

use super::conn::Conns;
use super::{keys, RedisEngine};
use crate::engine::{
    ConsumerInfo, DedupeKeys, EngineError, GroupInfo, Inspect, PendingEntry, Result, StreamInfo,
    MAX_PENDING_SHOWN,
};

/// Most `SCAN` calls one dedupe-key count makes (each looks at ~1000 keys);
/// past it the count is reported as incomplete.
const MAX_SCAN_CALLS: usize = 200;
/// Most consumer groups listed per stream, and consumers per group.
const MAX_GROUPS: usize = 100;
const MAX_CONSUMERS: usize = 100;

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("unexpected XINFO/XPENDING reply: {what}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// A reply of alternating names and values (RESP2) or a map (RESP3).
fn fields(v: Value) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let mut it = list(v).into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = text(&k) {
            out.insert(k, v);
        }
    }
    out
}

/// Length, groups, consumers and oldest pending entries of `stream`.
pub async fn stream(conns: &Conns, name: &str, kind: &str, partition: usize) -> Result<StreamInfo> {
    let mut conn = conns.shared().await?;
    let length: u64 = redis::cmd("XLEN").arg(name).query_async(&mut conn).await?;
    let groups_v: redis::RedisResult<Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(name)
        .query_async(&mut conn)
        .await;
    let groups_v = match groups_v {
        // No such key: no groups.
        Err(e) if e.to_string().contains("no such key") => Value::Nil,
        r => r?,
    };
    let mut groups = Vec::new();
    for g in list(groups_v).into_iter().take(MAX_GROUPS) {
        let f = fields(g);
        let group = f
            .get("name")
            .and_then(text)
            .ok_or_else(|| corrupt("group name"))?;
        let consumers_v: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(name)
            .arg(&group)
            .query_async(&mut conn)
            .await?;
        let consumers = list(consumers_v)
            .into_iter()
            .take(MAX_CONSUMERS)
            .map(|c| {
                let c = fields(c);
                ConsumerInfo {
                    name: c.get("name").and_then(text).unwrap_or_default(),
                    pending: c.get("pending").and_then(number).unwrap_or(0),
                    idle_ms: c.get("idle").and_then(number).unwrap_or(0),
                }
            })
            .collect();
        let pending_v: Value = redis::cmd("XPENDING")
            .arg(name)
            .arg(&group)
            .arg("-")
            .arg("+")
            .arg(MAX_PENDING_SHOWN)
            .query_async(&mut conn)
            .await?;
        let oldest_pending = list(pending_v)
            .into_iter()
            .filter_map(|p| {
                let p = list(p);
                Some(PendingEntry {
                    entry_id: text(p.first()?)?,
                    consumer: text(p.get(1)?)?,
                    idle_ms: number(p.get(2)?)?,
                    deliveries: number(p.get(3)?)?,
                })
            })
            .collect();
        groups.push(GroupInfo {
            pending: f.get("pending").and_then(number).unwrap_or(0),
            last_delivered: f
                .get("last-delivered-id")
                .and_then(text)
                .unwrap_or_else(|| "0-0".into()),
            lag: f.get("lag").and_then(number),
            name: group,
            consumers,
            oldest_pending,
        });
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StreamInfo {
        name: name.to_string(),
        kind: kind.to_string(),
        partition,
        length,
        groups,
    })
}

/// Every stream: command partitions, publish partitions, their dead letters.
pub async fn streams(conns: &Conns, commands: usize, publish: usize) -> Result<Vec<StreamInfo>> {
    let mut out = Vec::new();
    for i in 0..commands {
        out.push(
            stream(
                conns,
                &keys::partition(keys::COMMANDS, i, commands),
                "commands",
                i,
            )
            .await?,
        );
    }
    for i in 0..publish {
        let p = keys::partition(keys::PUBLISH, i, publish);
        out.push(stream(conns, &p, "publish", i).await?);
        out.push(stream(conns, &keys::dead(&p), "dead", i).await?);
    }
    Ok(out)
}

/// `player`'s unexpired dedupe keys, by a bounded `SCAN` on the server of
/// the player's slot.
pub async fn dedupe_keys(conns: &Conns, player: &str, limit: usize) -> Result<DedupeKeys> {
    let prefix = keys::dedupe(player, "");
    let pattern = format!("{prefix}*");
    let mut cursor = "0".to_string();
    let mut found: Vec<String> = Vec::new();
    let mut count = 0u64;
    for _ in 0..MAX_SCAN_CALLS {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(&cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000);
        let mut reply = list(conns.on_master_of(&prefix, &cmd).await?).into_iter();
        cursor = reply
            .next()
            .as_ref()
            .and_then(text)
            .ok_or_else(|| corrupt("SCAN cursor"))?;
        for k in list(reply.next().unwrap_or(Value::Nil)) {
            count += 1;
            if let Some(k) = text(&k) {
                if found.len() < limit.saturating_mul(4).max(limit) {
                    found.push(k.strip_prefix(&prefix).unwrap_or(&k).to_string());
                }
            }
        }
        if cursor == "0" {
            found.sort_unstable();
            found.truncate(limit);
            return Ok(DedupeKeys {
                count,
                sample: found,
                complete: true,
            });
        }
    }
    found.sort_unstable();
    found.truncate(limit);
    Ok(DedupeKeys {
        count,
        sample: found,
        complete: false,
    })
}

#[async_trait]
impl Inspect for RedisEngine {
    async fn dedupe_keys(&self, player: &str, limit: usize) -> Result<DedupeKeys> {
        dedupe_keys(&self.conns, player, limit).await
    }

    async fn streams(&self) -> Result<Vec<StreamInfo>> {
        streams(
            &self.conns,
            self.options.command_partitions,
            self.options.publish_partitions,
        )
        .await
    }
}
