//! The subscriber connection: a RESP3 connection (one Redis) or a cluster
//! connection whose pushes go to the supervisor, and the channel commands
//! (`SUBSCRIBE`, or `SSUBSCRIBE` per slot on a cluster, in chunks) for the
//! two kinds of live channel ([`Chan`]: a player's, a room's).
//!
//! Owns: connecting, subscribing and unsubscribing, telling whether the
//! connection still answers and, on a cluster, how many shard channels its
//! connections hold (`ssub` of `CLIENT INFO` on every master). Must not touch: which players are followed
//! (the supervisor's), decoding.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, Value};
use tokio::sync::mpsc;

use super::super::conn::Topology;
use super::super::{keys, OP_TIMEOUT};
use crate::engine::{EngineError, Result as EngineResult};

/// How long a ping may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Channels per subscribe command.
const CHUNK: usize = 512;
/// How deep an answer of `CLIENT INFO` from every master is walked (a map
/// of node to text; anything deeper is not such an answer).
const MAX_DEPTH: usize = 4;

/// A live channel: a player's own, or a room's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Chan {
    Player(String),
    Room(String),
}

impl Chan {
    /// The channel's name ([`keys::live`], [`keys::live_room`]).
    pub(super) fn name(&self) -> String {
        match self {
            Chan::Player(p) => keys::live(p),
            Chan::Room(r) => keys::live_room(r),
        }
    }

    /// The hash tag's text, whose slot the channel lives on.
    fn tag(&self) -> &str {
        match self {
            Chan::Player(s) | Chan::Room(s) => s,
        }
    }

    /// The channel a name belongs to, if it is one of ours.
    pub(super) fn parse(name: &str) -> Option<Self> {
        keys::live_player(name)
            .map(|p| Chan::Player(p.to_string()))
            .or_else(|| keys::live_room_of(name).map(|r| Chan::Room(r.to_string())))
    }
}

/// The subscriber connection.
pub(super) struct Subscriber {
    pub(super) topology: Topology,
    pub(super) push_tx: mpsc::UnboundedSender<PushInfo>,
    pub(super) conn: Option<SubConn>,
}

#[derive(Clone)]
pub(super) enum SubConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// Connects unless connected: on one Redis a connection is replaced
    /// (set to `None`) when lost; a cluster connection repairs itself
    /// (reconnects, follows the slot map) and is kept.
    pub(super) async fn connect(&mut self) -> EngineResult<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let conn = match &self.topology {
            Topology::Single(url) => {
                let info = url.as_str().into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(OP_TIMEOUT))
                    .set_response_timeout(Some(OP_TIMEOUT))
                    .set_push_sender(self.push_tx.clone());
                SubConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Topology::Cluster(seeds) => SubConn::Cluster(
                ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(self.push_tx.clone())
                    .connection_timeout(OP_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    .build()?
                    .get_async_connection()
                    .await?,
            ),
        };
        self.conn = Some(conn);
        Ok(())
    }

    /// Subscribes to (`on`) or unsubscribes from `chans`; on one Redis a
    /// failure drops the connection (the next attempt makes a fresh one).
    pub(super) async fn subscribe(&mut self, chans: &[Chan], on: bool) -> EngineResult<()> {
        if chans.is_empty() {
            return Ok(());
        }
        self.connect().await?;
        let Some(conn) = self.conn.clone() else {
            return Err(EngineError::Pool("no subscriber connection".into()));
        };
        let channels: Vec<String> = chans.iter().map(Chan::name).collect();
        let r = match conn {
            SubConn::Single(mut c) => {
                let mut r = Ok(());
                for chunk in channels.chunks(CHUNK) {
                    r = if on {
                        c.subscribe(chunk).await
                    } else {
                        c.unsubscribe(chunk).await
                    };
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            SubConn::Cluster(c) => {
                // A shard-channel command names channels of one slot only.
                let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
                for (c, ch) in chans.iter().zip(channels) {
                    by_slot
                        .entry(keys::slot(c.tag().as_bytes()))
                        .or_default()
                        .push(ch);
                }
                let calls = by_slot.into_values().map(|chs| {
                    let mut c = c.clone();
                    async move {
                        if on {
                            c.ssubscribe(chs).await
                        } else {
                            c.sunsubscribe(chs).await
                        }
                    }
                });
                join_all(calls).await.into_iter().collect()
            }
        };
        if let Err(e) = r {
            if matches!(self.conn, Some(SubConn::Single(_))) {
                self.conn = None;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// False if the connection stopped answering (one Redis; a cluster
    /// connection reports its losses as pushes).
    pub(super) async fn alive(&mut self) -> bool {
        let Some(SubConn::Single(c)) = &mut self.conn else {
            return true;
        };
        let cmd = redis::cmd("PING");
        let ping = tokio::time::timeout(PING_TIMEOUT, cmd.query_async::<Value>(c));
        if matches!(ping.await, Ok(Ok(_))) {
            return true;
        }
        self.conn = None;
        false
    }

    /// On a cluster, the shard channels this connection is subscribed to,
    /// summed over the masters (each one's `CLIENT INFO` answers for the
    /// connection it is asked on, the one holding the subscriptions);
    /// `None` on one Redis or when a master did not answer.
    pub(super) async fn shard_subscriptions(&mut self) -> Option<u64> {
        let Some(SubConn::Cluster(c)) = &mut self.conn else {
            return None;
        };
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("INFO");
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let answer = tokio::time::timeout(PING_TIMEOUT, c.route_command(cmd, routing)).await;
        let value = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "CLIENT INFO on the masters failed");
                return None;
            }
            Err(_) => return None,
        };
        let mut held = Some(0u64);
        sum_ssub(&value, 0, &mut held);
        if held.is_none() {
            tracing::debug!(answer = ?value, "CLIENT INFO on the masters: no ssub");
        }
        held
    }
}

/// Adds the `ssub` of every `CLIENT INFO` text in `v` to `held`; `None`
/// when a text lacks it or the answer is not of that shape.
fn sum_ssub(v: &Value, depth: usize, held: &mut Option<u64>) {
    if depth > MAX_DEPTH {
        *held = None;
        return;
    }
    let text = match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(t) => Some(t.as_str()),
        Value::VerbatimString { text, .. } => Some(text.as_str()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|i| sum_ssub(i, depth + 1, held));
            return;
        }
        // node address -> its answer
        Value::Map(pairs) => {
            pairs.iter().for_each(|(_, i)| sum_ssub(i, depth + 1, held));
            return;
        }
        _ => None,
    };
    *held = match (*held, text.and_then(ssub_of)) {
        (Some(sum), Some(n)) => Some(sum.saturating_add(n)),
        _ => None,
    };
}

/// The `ssub=<n>` field of a `CLIENT INFO` line.
fn ssub_of(info: &str) -> Option<u64> {
    info.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("ssub="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssub_is_summed_over_the_masters() {
        let line = |n: u64| Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: format!("id=5 addr=127.0.0.1:1 sub=0 psub=0 ssub={n} multi=-1 resp=3\n"),
        };
        let answer = Value::Map(vec![
            (Value::SimpleString("127.0.0.1:7000".into()), line(3)),
            (Value::SimpleString("127.0.0.1:7001".into()), line(4)),
        ]);
        let mut held = Some(0);
        sum_ssub(&answer, 0, &mut held);
        assert_eq!(held, Some(7));
        // a master whose answer has no ssub: not known
        let answer = Value::Array(vec![line(1), Value::BulkString(b"id=1 sub=0".to_vec())]);
        let mut held = Some(0);
        sum_ssub(&answer, 0, &mut held);
        assert_eq!(held, None);
    }

    proptest::proptest! {
        /// Any text from Redis: no panic, and a well-formed field is read.
        #[test]
        fn ssub_of_never_panics(text in ".{0,200}", n in 0u64..1_000_000) {
            let _ = ssub_of(&text);
            proptest::prop_assume!(!text.contains("ssub="));
            let line = format!("{text} ssub={n} multi=-1");
            proptest::prop_assert_eq!(ssub_of(&line), Some(n));
        }
    }
}
