//! Presence on Redis: each player's machine in `lua/presence.lua` (its
//! hash and node set share the player's hash tag), node leases and
//! `linkdead` deadlines in two sorted sets, the facts in the partitions of
//! `mythos:presence`.
//!
//! Owns: the [`Presence`] capability of the Redis engine. Lease times are
//! the clock of the leases key's Redis (`TIME` inside `lua/leases.lua`),
//! never a node's, so nodes with skewed clocks agree on who is dead. A deadline is filed in `mythos:presence:linkdead` *before*
//! the step that makes a player `linkdead`, so a node dying between the two
//! leaves a deadline with nothing to do, never a `linkdead` player nobody
//! will take offline. On one Redis a fact is appended by the script that
//! makes it; on a cluster the stream is on another slot and is appended right
//! after. Must not touch: the logs, connections.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::AsyncCommands;

use super::{keys, stream, RedisEngine};
use crate::engine::presence::{
    ms, Fact, FactEntry, Lease, Presence, Reason, Record, State, MAX_FACTS, MAX_PRESENCE_PAGE,
    REAP_CLAIM,
};
use crate::engine::{EngineError, Result};

/// Expired leases / due deadlines handled per sweep (the next sweep takes
/// the rest).
const SWEEP_BATCH: usize = 100;
/// Players of a dead node read per `SSCAN` round.
const SCAN_BATCH: usize = 500;
/// Attempts at appending a fact on a cluster (about 10 s in all).
const FACT_ATTEMPTS: u32 = 8;
/// A dead node's players moved to `linkdead` at once.
const REAP_PARALLEL: usize = 16;

/// What one step of `presence.lua` answered.
struct Step {
    state: State,
    until: u64,
    fact: Option<Fact>,
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("presence: {what}"))
}

impl RedisEngine {
    /// The partition of `mythos:presence` holding `player`'s facts.
    fn presence_stream(&self, player: &str) -> String {
        let n = self.options.command_partitions;
        keys::partition(keys::PRESENCE, keys::partition_of(player, n), n)
    }

    /// One step of `player`'s machine (`lua/presence.lua`).
    async fn step(
        &self,
        op: &str,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
    ) -> Result<Step> {
        let stream = self.presence_stream(player);
        let cluster = self.conns.is_cluster();
        let mut inv = self.scripts.presence.prepare_invoke();
        inv.key(keys::presence(player))
            .key(keys::presence_nodes(player));
        if !cluster {
            inv.key(&stream);
        }
        inv.arg(op)
            .arg(player)
            .arg(node)
            .arg(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX))
            .arg(why.as_str())
            .arg(MAX_FACTS);
        let (state, until, seq, fstate, reason, now): (String, u64, u64, String, String, u64) =
            inv.invoke_async(&mut self.shared().await?).await?;
        let state = State::parse(&state).ok_or_else(|| corrupt("unknown state"))?;
        let fact = if seq == 0 {
            None
        } else {
            Some(Fact {
                player_id: player.to_string(),
                seq,
                state: State::parse(&fstate).ok_or_else(|| corrupt("unknown fact state"))?,
                reason: Reason::parse(&reason).ok_or_else(|| corrupt("unknown reason"))?,
                at_ms: now,
                node: node.to_string(),
            })
        };
        if let (true, Some(f)) = (cluster, &fact) {
            let fields = [
                ("player_id", f.player_id.clone()),
                ("seq", f.seq.to_string()),
                ("state", f.state.as_str().to_string()),
                ("reason", f.reason.as_str().to_string()),
                ("at", f.at_ms.to_string()),
                ("node", f.node.clone()),
            ];
            // The state already changed: a retry of the whole step would
            // find nothing to do, so the append itself is retried (a slot
            // moving, a failover) before the fact is given up (docs/presence.md).
            let maxlen = redis::streams::StreamMaxlen::Approx(MAX_FACTS);
            let mut pause = Duration::from_millis(100);
            for attempt in 1.. {
                let added: Result<String> = async {
                    Ok(self
                        .shared()
                        .await?
                        .xadd_maxlen(&stream, maxlen, "*", &fields)
                        .await?)
                }
                .await;
                match added {
                    Ok(_) => break,
                    Err(e) if attempt >= FACT_ATTEMPTS => {
                        tracing::error!(error = %e, player, seq = f.seq, "presence: a fact could not be appended; its seq is a gap");
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        Ok(Step { state, until, fact })
    }

    /// Redis's clock, ms.
    async fn redis_now(&self) -> Result<u64> {
        let (s, us): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.shared().await?)
            .await?;
        Ok(s * 1000 + us / 1000)
    }

    /// Removes `member` from `set` if its score is still `score`.
    async fn zrem_if(&self, set: &str, member: &str, score: u64) -> Result<()> {
        let _: i64 = self
            .scripts
            .zrem_if
            .key(set)
            .arg(member)
            .arg(score)
            .invoke_async(&mut self.shared().await?)
            .await?;
        Ok(())
    }

    /// Up to [`SWEEP_BATCH`] members of `set` with a score at or below `now`.
    async fn due(&self, set: &str, now: u64) -> Result<Vec<(String, u64)>> {
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(set)
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH)
            .query_async(&mut self.shared().await?)
            .await?)
    }

    /// Moves the players of the dead node `lost` to `linkdead`, as `node`.
    async fn reap(&self, node: &str, lost: &str, grace: Duration) -> Result<Vec<Fact>> {
        let held = keys::presence_held(lost);
        let mut facts = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, players): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&held)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut self.shared().await?)
                .await?;
            // A few at a time: a dead node may have held thousands.
            let steps = futures_util::stream::iter(players)
                .map(|p| async move { self.disconnect(lost, &p, grace, Reason::NodeLost).await })
                .buffer_unordered(REAP_PARALLEL)
                .collect::<Vec<_>>()
                .await;
            for step in steps {
                facts.extend(step?);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: i64 = self.shared().await?.del(&held).await?;
        tracing::warn!(
            lost,
            reaper = node,
            "presence: reaped the players of a node whose lease expired"
        );
        Ok(facts)
    }

    /// Where `player` stands (one round trip).
    async fn record(&self, player: &str) -> Result<Record> {
        type Fields = (Option<String>, Option<u64>, Option<u64>, Option<u64>);
        let (fields, mut nodes): (Fields, Vec<String>) = redis::pipe()
            .cmd("HMGET")
            .arg(keys::presence(player))
            .arg(&["state", "since", "until", "seq"])
            .cmd("SMEMBERS")
            .arg(keys::presence_nodes(player))
            .query_async(&mut self.shared().await?)
            .await?;
        let (state, since, until, seq) = fields;
        nodes.sort_unstable();
        let state = match state {
            Some(s) => State::parse(&s).ok_or_else(|| corrupt("unknown state"))?,
            None => State::Offline,
        };
        Ok(Record {
            player_id: player.to_string(),
            state,
            since_ms: since.unwrap_or(0),
            until_ms: (state == State::Linkdead).then(|| until.unwrap_or(0)),
            nodes,
            seq: seq.unwrap_or(0),
        })
    }

    /// `presence_disconnect`, filing the deadline first (see the module doc).
    async fn disconnect(
        &self,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
    ) -> Result<Option<Fact>> {
        if !grace.is_zero() {
            let due = self.redis_now().await? + ms(grace);
            let _: i64 = self
                .shared()
                .await?
                .zadd(keys::PRESENCE_LINKDEAD, player, due)
                .await?;
        }
        let step = self.step("disconnect", node, player, grace, why).await?;
        if step.state == State::Linkdead {
            // The script's deadline is the truth; keep the filed one in step.
            let _: i64 = self
                .shared()
                .await?
                .zadd(keys::PRESENCE_LINKDEAD, player, step.until)
                .await?;
        }
        Ok(step.fact)
    }
}

#[async_trait]
impl Presence for RedisEngine {
    async fn presence_connect(&self, node: &str, player: &str) -> Result<Option<Fact>> {
        let step = self
            .step("connect", node, player, Duration::ZERO, Reason::Connect)
            .await?;
        Ok(step.fact)
    }

    async fn presence_disconnect(
        &self,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
    ) -> Result<Option<Fact>> {
        let fact = self.disconnect(node, player, grace, why).await?;
        let _: i64 = self
            .shared()
            .await?
            .srem(keys::presence_held(node), player)
            .await?;
        Ok(fact)
    }

    async fn presence_logout(&self, node: &str, player: &str) -> Result<Option<Fact>> {
        let step = self
            .step("logout", node, player, Duration::ZERO, Reason::Logout)
            .await?;
        Ok(step.fact)
    }

    async fn presence_heartbeat(&self, node: &str, lease: Duration) -> Result<bool> {
        let lost: i64 = self
            .scripts
            .leases
            .key(keys::PRESENCE_LEASES)
            .arg("beat")
            .arg(node)
            .arg(ms(lease))
            .invoke_async(&mut self.shared().await?)
            .await?;
        Ok(lost == 1)
    }

    async fn presence_hold(&self, node: &str, player: &str) -> Result<()> {
        let _: i64 = self
            .shared()
            .await?
            .sadd(keys::presence_held(node), player)
            .await?;
        Ok(())
    }

    async fn presence_release(&self, node: &str) -> Result<()> {
        let mut c = self.shared().await?;
        let _: i64 = c.zrem(keys::PRESENCE_LEASES, node).await?;
        let _: i64 = c.del(keys::presence_held(node)).await?;
        Ok(())
    }

    async fn presence_sweep(&self, node: &str, grace: Duration) -> Result<Vec<Fact>> {
        let mut facts = Vec::new();
        #[cfg(feature = "defects")]
        let reap = !crate::defects::on(crate::defects::Defect::PresenceNoReap);
        #[cfg(not(feature = "defects"))]
        let reap = true;
        if reap {
            // Claimed atomically (renamed `reaping:<node>`), so two reapers
            // never take the same lease and the node, back, finds it gone.
            let lost: Vec<String> = self
                .scripts
                .leases
                .key(keys::PRESENCE_LEASES)
                .arg("claim")
                .arg(ms(REAP_CLAIM))
                .arg(SWEEP_BATCH)
                .invoke_async(&mut self.shared().await?)
                .await?;
            for lost in lost {
                facts.extend(self.reap(node, &lost, grace).await?);
                let _: i64 = self
                    .scripts
                    .leases
                    .key(keys::PRESENCE_LEASES)
                    .arg("release")
                    .arg(&lost)
                    .invoke_async(&mut self.shared().await?)
                    .await?;
            }
        }
        let now = self.redis_now().await?;
        for (player, deadline) in self.due(keys::PRESENCE_LINKDEAD, now).await? {
            let step = self
                .step("expire", node, &player, Duration::ZERO, Reason::Timeout)
                .await?;
            if step.state == State::Linkdead && step.until > deadline {
                // Went linkdead again meanwhile: file the new deadline.
                let _: i64 = self
                    .shared()
                    .await?
                    .zadd(keys::PRESENCE_LINKDEAD, &player, step.until)
                    .await?;
            } else if step.state != State::Linkdead {
                self.zrem_if(keys::PRESENCE_LINKDEAD, &player, deadline)
                    .await?;
            }
            facts.extend(step.fact);
        }
        Ok(facts)
    }

    async fn presence_of(&self, players: &[String]) -> Result<Vec<Record>> {
        let players = &players[..players.len().min(MAX_PRESENCE_PAGE)];
        // One pipeline per player (its two keys share a slot), all at once
        // on the shared connection: a cluster cannot pipeline across slots.
        let reads = players.iter().map(|p| self.record(p));
        futures_util::future::try_join_all(reads).await
    }

    async fn presence_facts(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<FactEntry>> {
        let n = self.options.command_partitions;
        if partition >= n {
            return Err(EngineError::Rejected("no such presence partition"));
        }
        self.entries_after(
            &keys::partition(keys::PRESENCE, partition, n),
            after,
            count,
            "a presence entry id must look like <ms>-<n>",
        )
        .await?
        .into_iter()
        .filter_map(|e| fact_of(&e).transpose())
        .collect()
    }

    async fn presence_leases(&self) -> Result<Vec<Lease>> {
        let all: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(keys::PRESENCE_LEASES)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.shared().await?)
            .await?;
        Ok(all
            .into_iter()
            .map(|(node, expires_ms)| Lease { node, expires_ms })
            .collect())
    }

    async fn set_room_presence_events(&self, room: &str, on: bool) -> Result<()> {
        let mut c = self.shared().await?;
        let key = keys::room_presence(room);
        if on {
            let _: () = c.set(key, "1").await?;
        } else {
            let _: i64 = c.del(key).await?;
        }
        Ok(())
    }

    async fn room_presence_events(&self, room: &str) -> Result<bool> {
        Ok(self
            .shared()
            .await?
            .exists(keys::room_presence(room))
            .await?)
    }
}

/// A fact from its stream entry; `None` for an entry deleted while listed.
fn fact_of(e: &stream::Entry) -> Result<Option<FactEntry>> {
    if e.fields.is_none() {
        return Ok(None);
    }
    let text = |name: &str| {
        e.get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| corrupt(&format!("fact without {name}")))
    };
    let num = |name: &str| {
        text(name)?
            .parse::<u64>()
            .map_err(|_| corrupt(&format!("fact {name} is not a number")))
    };
    Ok(Some(FactEntry {
        entry_id: e.id.clone(),
        fact: Fact {
            player_id: text("player_id")?.to_string(),
            seq: num("seq")?,
            state: State::parse(text("state")?).ok_or_else(|| corrupt("unknown state"))?,
            reason: Reason::parse(text("reason")?).ok_or_else(|| corrupt("unknown reason"))?,
            at_ms: num("at")?,
            node: text("node")?.to_string(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(fields: Vec<(String, Vec<u8>)>) -> stream::Entry {
        stream::Entry {
            id: "1-0".into(),
            fields: Some(fields),
        }
    }

    #[test]
    fn facts_decode() {
        let f = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        let good = entry(vec![
            f("player_id", "alice"),
            f("seq", "3"),
            f("state", "online"),
            f("reason", "connect"),
            f("at", "1700000000000"),
            f("node", "n1.1"),
        ]);
        let got = fact_of(&good).expect("decodes").expect("an entry");
        assert_eq!((got.fact.seq, got.fact.state), (3, State::Online));
        let mut bad = good.clone();
        bad.fields = Some(vec![f("player_id", "alice"), f("seq", "x")]);
        assert!(fact_of(&bad).is_err());
        let deleted = stream::Entry {
            id: "1-0".into(),
            fields: None,
        };
        assert_eq!(fact_of(&deleted).ok(), Some(None));
    }

    proptest! {
        /// Whatever a stream entry of `mythos:presence` holds (an operator's
        /// XADD, a corrupted write), decoding answers or refuses, never panics.
        #[test]
        fn any_fact_entry_decodes_or_is_refused(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("player_id".to_string()), Just("seq".to_string()),
                    Just("state".to_string()), Just("reason".to_string()),
                    Just("at".to_string()), Just("node".to_string()), "[a-z]{1,6}",
                ], proptest::collection::vec(any::<u8>(), 0..24)),
                0..10,
            ),
        ) {
            let _ = fact_of(&entry(fields));
        }
    }
}
