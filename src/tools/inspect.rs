//! The inspect reports: one player (`inspect player`, `GET
//! /v1/admin/players/{P}`) and the streams (`inspect streams`, `GET
//! /v1/admin/streams`), as JSON and as plain `name: value` lines.
//!
//! Owns: gathering a report from the engine (and, on a node, its live
//! connections) and printing it. Must not touch: anything that writes —
//! reading a player's cursor applies the retention caps as every read does,
//! nothing else changes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::engine::{DedupeKeys, Engine, EngineError, StreamInfo};
use crate::protocol::now_rfc3339;

/// Dedupe keys listed by name in a report.
pub const DEDUPE_SHOWN: usize = 20;

/// Where a player stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerReport {
    pub player_id: String,
    pub last_sequence_number: u64,
    pub acked: u64,
    /// Events kept (not acknowledged, within the caps).
    pub retained: u64,
    /// The oldest kept event's sequence number (`last + 1` when none).
    pub oldest_available: u64,
    /// When the oldest kept event was appended, and how long ago (ms).
    pub oldest_timestamp: Option<String>,
    pub oldest_age_ms: Option<u64>,
    pub dedupe_keys: DedupeKeysReport,
    pub rooms: Vec<String>,
    /// Open connections by transport, per node; `None` when read from the
    /// store directly (only nodes know their connections).
    pub connections: Option<BTreeMap<String, BTreeMap<String, u64>>>,
    /// When the report was made.
    pub at: String,
}

/// The dedupe keys of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeKeysReport {
    pub count: u64,
    pub complete: bool,
    pub sample: Vec<String>,
}

impl From<DedupeKeys> for DedupeKeysReport {
    fn from(d: DedupeKeys) -> Self {
        Self {
            count: d.count,
            complete: d.complete,
            sample: d.sample,
        }
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("unknown player `{0}`: nothing was ever published to them and they are in no room")]
    UnknownPlayer(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A player's report from the engine. `connections` is the node's count
/// by transport, if the caller is a node.
pub async fn player(
    engine: &dyn Engine,
    player: &str,
    connections: Option<BTreeMap<String, BTreeMap<String, u64>>>,
) -> Result<PlayerReport, InspectError> {
    let c = engine.cursor(player).await?;
    let rooms = engine.rooms_of(player).await?;
    if c.last == 0 && rooms.is_empty() {
        return Err(InspectError::UnknownPlayer(player.to_string()));
    }
    let oldest = engine.read(player, c.oldest.saturating_sub(1), 1).await?;
    let oldest_timestamp = oldest.first().map(|e| e.body.timestamp.clone());
    let oldest_age_ms = oldest_timestamp
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| now_ms().saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    let dedupe = engine.dedupe_keys(player, DEDUPE_SHOWN).await?;
    Ok(PlayerReport {
        player_id: player.to_string(),
        last_sequence_number: c.last,
        acked: c.acked,
        retained: (c.last + 1).saturating_sub(c.oldest),
        oldest_available: c.oldest,
        oldest_timestamp,
        oldest_age_ms,
        dedupe_keys: dedupe.into(),
        rooms,
        connections,
        at: now_rfc3339(),
    })
}

impl PlayerReport {
    /// `name: value` lines.
    pub fn lines(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: String| {
            let _ = writeln!(s, "{k}: {v}");
        };
        kv("player", self.player_id.clone());
        kv(
            "last_sequence_number",
            self.last_sequence_number.to_string(),
        );
        kv("acked", self.acked.to_string());
        kv("retained", self.retained.to_string());
        kv("oldest_available", self.oldest_available.to_string());
        kv(
            "oldest_timestamp",
            self.oldest_timestamp.clone().unwrap_or_else(|| "-".into()),
        );
        kv(
            "oldest_age",
            self.oldest_age_ms.map_or_else(
                || "-".into(),
                |ms| {
                    humantime::format_duration(std::time::Duration::from_secs(ms / 1000))
                        .to_string()
                },
            ),
        );
        let more = if self.dedupe_keys.complete {
            ""
        } else {
            "+ (search bounded)"
        };
        kv("dedupe_keys", format!("{}{more}", self.dedupe_keys.count));
        if !self.dedupe_keys.sample.is_empty() {
            kv("dedupe_keys_sample", self.dedupe_keys.sample.join(" "));
        }
        kv(
            "rooms",
            if self.rooms.is_empty() {
                "-".into()
            } else {
                self.rooms.join(" ")
            },
        );
        match &self.connections {
            None => kv(
                "connections",
                "unknown (read from the store; ask a node with --url)".into(),
            ),
            Some(nodes) => {
                for (node, by) in nodes {
                    let total: u64 = by.values().sum();
                    kv(&format!("connections[{node}]"), total.to_string());
                    for (t, n) in by {
                        kv(&format!("connections[{node}].{t}"), n.to_string());
                    }
                }
            }
        }
        s
    }
}

/// Every stream of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamsReport {
    pub streams: Vec<StreamInfo>,
    pub at: String,
}

/// The streams' report from the engine.
pub async fn streams(engine: &dyn Engine) -> Result<StreamsReport, EngineError> {
    Ok(StreamsReport {
        streams: engine.streams().await?,
        at: now_rfc3339(),
    })
}

/// `name: value` lines of a streams report given as JSON (as the API
/// answers it, or as [`StreamsReport`] serialises).
/// `inspect presence` as `name: value` lines: a player's record, or the
/// node leases (with how long each has left, by the local clock).
pub fn presence_lines(report: &serde_json::Value) -> String {
    let mut s = String::new();
    let empty = Vec::new();
    if let Some(leases) = report["leases"].as_array() {
        if let Some(node) = report["node"].as_str() {
            let _ = writeln!(s, "node: {node}");
            let _ = writeln!(s, "local_players: {}", report["local_players"]);
        }
        let now = crate::engine::presence::now_ms();
        let _ = writeln!(s, "leases: {}", leases.len());
        for l in leases {
            let expires = l["expires_ms"].as_u64().unwrap_or(0);
            let left = expires as i64 - now as i64;
            let _ = writeln!(
                s,
                "lease[{}]: expires_ms {expires} ({}{} ms)",
                l["node"].as_str().unwrap_or("?"),
                if left < 0 { "expired " } else { "in " },
                left.unsigned_abs()
            );
        }
        return s;
    }
    for key in ["player_id", "state", "since_ms", "until_ms", "seq"] {
        if !report[key].is_null() {
            let v = report[key]
                .as_str()
                .map_or_else(|| report[key].to_string(), str::to_string);
            let _ = writeln!(s, "{key}: {v}");
        }
    }
    let nodes: Vec<&str> = report["nodes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let _ = writeln!(s, "nodes: {}", nodes.join(" "));
    s
}

pub fn streams_lines(report: &serde_json::Value) -> String {
    let mut s = String::new();
    let empty = Vec::new();
    for st in report["streams"].as_array().unwrap_or(&empty) {
        let name = st["name"].as_str().unwrap_or("?");
        let _ = writeln!(s, "{name}.kind: {}", st["kind"].as_str().unwrap_or("?"));
        let _ = writeln!(s, "{name}.partition: {}", st["partition"]);
        let _ = writeln!(s, "{name}.length: {}", st["length"]);
        let groups = st["groups"].as_array().unwrap_or(&empty);
        let _ = writeln!(s, "{name}.groups: {}", groups.len());
        for g in groups {
            let gname = g["name"].as_str().unwrap_or("?");
            let p = format!("{name}.group[{gname}]");
            let _ = writeln!(s, "{p}.pending: {}", g["pending"]);
            let _ = writeln!(
                s,
                "{p}.last_delivered: {}",
                g["last_delivered"].as_str().unwrap_or("?")
            );
            let lag = if g["lag"].is_null() {
                "-".to_string()
            } else {
                g["lag"].to_string()
            };
            let _ = writeln!(s, "{p}.lag: {lag}");
            for c in g["consumers"].as_array().unwrap_or(&empty) {
                let c_name = c["name"].as_str().unwrap_or("?");
                let _ = writeln!(
                    s,
                    "{p}.consumer[{c_name}]: pending {} idle_ms {}",
                    c["pending"], c["idle_ms"]
                );
            }
            for e in g["oldest_pending"].as_array().unwrap_or(&empty) {
                let _ = writeln!(
                    s,
                    "{p}.pending_entry[{}]: consumer {} idle_ms {} deliveries {}",
                    e["entry_id"].as_str().unwrap_or("?"),
                    e["consumer"]
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .unwrap_or("-"),
                    e["idle_ms"],
                    e["deliveries"]
                );
            }
        }
    }
    s
}
