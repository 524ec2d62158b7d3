//! Appending an event to players' logs: one `append.lua` call per slot
//! group (one on a single Redis), run concurrently; with
//! `MYTHOS_REDIS_WAIT_REPLICAS`, the groups written through one connection
//! of its own, then `WAIT` per group ([`RedisEngine::wait_each`], which
//! commands use too) and `confirm.lua` for the confirmed ones.
//!
//! Owns: the fan-out and replica confirmation of writes. Must not touch:
//! who the players are (rooms resolve their members first), reading.

use std::collections::HashMap;

use futures_util::future::join_all;

use super::conn::{Own, Shared};
use super::{deliver_unconfirmed, flags_of, keys, live, ms, pool_err, RedisEngine};
use crate::engine::{EngineError, Result};
use crate::protocol::{Delivery, EventBody};

impl RedisEngine {
    /// `WAIT` on `conn` for the writes it sent to the masters of `keys`:
    /// per key, confirmed, `NotReplicated`, or the engine's error.
    pub(super) async fn wait_each(&self, conn: &mut Own, keys: &[String]) -> Vec<Result<()>> {
        let wanted = self.limits.wait_replicas;
        let answers = conn.wait_each(keys, wanted, self.limits.wait_timeout).await;
        metrics::counter!(crate::telemetry::REDIS_WAITS).increment(1);
        let out: Vec<Result<()>> = answers
            .into_iter()
            .map(|r| match r {
                Ok(got) if got < wanted => Err(EngineError::NotReplicated { got, wanted }),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            })
            .collect();
        if out
            .iter()
            .any(|r| matches!(r, Err(EngineError::NotReplicated { .. })))
        {
            metrics::counter!(crate::telemetry::NOT_REPLICATED).increment(1);
        }
        out
    }

    /// Appends `body` to `players` (distinct, in delivery order): on one
    /// Redis in one script call; on a cluster in one call per slot, run
    /// concurrently. Every call that succeeded stays appended even if
    /// another failed: the error is answered (503) and a retry with the same
    /// dedupe key appends nothing twice and fills in the rest.
    ///
    /// The appends are announced live: a `room` publish once, on the room's
    /// channel, with every member's sequence number (by the script on one
    /// Redis; by the engine after the calls on a cluster, where the room's
    /// channel lives on another slot), anything else on each player's own
    /// channel (by the script). With WAIT, only once replicas confirmed.
    pub(super) async fn append_all(
        &self,
        players: &[String],
        body: &EventBody,
        dedupe_key: Option<&str>,
        room: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        let channel = room.map(keys::live_room);
        let how = Announce {
            early: !self.waits() || deliver_unconfirmed(),
            by_engine: room.is_some() && self.conns.is_cluster(),
            channel: channel.as_deref().unwrap_or(""),
        };
        let groups: Vec<Vec<&String>> = if self.conns.is_cluster() {
            let mut by_slot: HashMap<u16, Vec<&String>> = HashMap::new();
            for p in players {
                by_slot.entry(keys::slot(p.as_bytes())).or_default().push(p);
            }
            by_slot.into_values().collect()
        } else {
            vec![players.iter().collect()]
        };
        // With WAIT, every group is written through one connection of its
        // own, so that the `WAIT` of each group, on that same connection,
        // covers the group's writes to its master.
        let mut own = if self.waits() {
            Some(self.conns.own().await?)
        } else {
            None
        };
        let calls = groups.iter().map(|g| {
            let conn = own.as_ref().map(Own::handle);
            async move {
                let mut conn = match conn {
                    Some(Some(c)) => c,
                    Some(None) => return Err(pool_err("connection discarded")),
                    None => self.shared().await?,
                };
                self.append_group(&mut conn, g, body, dedupe_key, &how)
                    .await
            }
        });
        let mut done = Vec::with_capacity(groups.len());
        let mut failed = None;
        for r in join_all(calls).await {
            match r {
                Ok(ds) => done.push(ds),
                Err(e) => failed = Some(e),
            }
        }
        if how.early && how.by_engine {
            // What was appended is announced, even if another group failed.
            self.announce(&how, done.iter(), body).await?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(own) = own.as_mut() {
            // Each slot group is confirmed on its own, as it was appended on
            // its own: a group whose replica confirmed becomes visible (its
            // members get the event, as on a healthy master without WAIT),
            // one whose replica did not stays invisible until the retry.
            let firsts: Vec<String> = done
                .iter()
                .filter_map(|group| group.first().map(|(p, _)| keys::events(p)))
                .collect();
            let confirmed = self.wait_each(own, &firsts).await;
            let flags = flags_of(body);
            let mut failed = None;
            let mut visible = Vec::with_capacity(done.len());
            for (group, c) in done.iter().zip(confirmed) {
                match c {
                    Ok(()) => visible.push(group),
                    Err(e) => failed = Some(e),
                }
            }
            // The connection may be discarded by now: the confirmations go
            // out on a shared one (`confirm.lua` is an ordinary write).
            let calls = visible.iter().map(|group| {
                let how = &how;
                async move {
                    let mut conn = self.shared().await?;
                    self.make_visible(&mut conn, group, body, flags, how).await
                }
            });
            join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()?;
            if how.by_engine {
                self.announce(&how, visible.into_iter(), body).await?;
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let seqs: HashMap<&str, u64> = done.into_iter().flatten().collect();
        players
            .iter()
            .map(|p| {
                let sequence_number = *seqs
                    .get(p.as_str())
                    .ok_or_else(|| EngineError::Corrupt("append.lua skipped a member".into()))?;
                Ok(Delivery {
                    player_id: p.clone(),
                    sequence_number,
                })
            })
            .collect()
    }

    /// Announces a room publish's appends itself (see [`Announce`]): one
    /// `SPUBLISH` on the room's channel with every member of `groups` (dedupe
    /// hits included: a first attempt may have failed before announcing;
    /// readers drop what they have).
    async fn announce<'g>(
        &self,
        how: &Announce<'_>,
        groups: impl Iterator<Item = &'g Vec<(&'g str, u64)>>,
        body: &EventBody,
    ) -> Result<()> {
        let targets: Vec<(&str, u64)> = groups.flatten().copied().collect();
        if targets.is_empty() {
            return Ok(());
        }
        let _: u64 = redis::cmd(self.publish)
            .arg(how.channel)
            .arg(live::encode(&targets, body))
            .query_async(&mut self.shared().await?)
            .await?;
        Ok(())
    }

    /// One `append.lua` call for `players` (all of one slot on a cluster).
    async fn append_group<'p>(
        &self,
        conn: &mut Shared<'_>,
        players: &[&'p String],
        body: &EventBody,
        dedupe_key: Option<&str>,
        how: &Announce<'_>,
    ) -> Result<Vec<(&'p str, u64)>> {
        if players.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.append.prepare_invoke();
        for p in players {
            inv.key(keys::events(p)).key(keys::meta(p));
            if let Some(k) = dedupe_key {
                inv.key(keys::dedupe(p, k));
            }
        }
        let flags = flags_of(body);
        inv.arg(players.len())
            .arg(dedupe_key.map_or(0, |_| ms(self.limits.dedupe_window)))
            .arg(self.limits.max_backlog)
            .arg(ms(self.limits.max_backlog_age))
            .arg(flags)
            .arg(&body.event_type)
            .arg(&body.timestamp)
            .arg(body.data.get())
            .arg(body.room_id.as_deref().unwrap_or(""))
            .arg(body.id.as_deref().unwrap_or(""))
            .arg(if how.early && !how.by_engine {
                self.publish
            } else {
                ""
            })
            .arg(if how.by_engine { "" } else { how.channel })
            .arg(self.visibility());
        for p in players {
            inv.arg(p.as_str());
        }
        let out: Vec<u64> = inv.invoke_async(conn).await?;
        if out.len() != players.len() * 2 {
            return Err(EngineError::Corrupt("append.lua answered short".into()));
        }
        Ok(players
            .iter()
            .zip(out.chunks_exact(2))
            .map(|(p, r)| (p.as_str(), r[0]))
            .collect())
    }

    /// With `MYTHOS_REDIS_WAIT_REPLICAS` ≥ 1 readers see only what replicas
    /// confirmed: `confirm.lua` moves each player's `confirmed` mark up to
    /// its event and announces it (see the script's header).
    async fn make_visible(
        &self,
        conn: &mut Shared<'_>,
        seqs: &[(&str, u64)],
        body: &EventBody,
        flags: &str,
        how: &Announce<'_>,
    ) -> Result<()> {
        let mut inv = self.scripts.confirm.prepare_invoke();
        for (p, _) in seqs {
            inv.key(keys::meta(p));
        }
        inv.arg(seqs.len())
            .arg(if how.by_engine { "" } else { self.publish })
            .arg(flags)
            .arg(&body.event_type)
            .arg(&body.timestamp)
            .arg(body.room_id.as_deref().unwrap_or(""))
            .arg(body.id.as_deref().unwrap_or(""))
            .arg(body.data.get())
            .arg(how.channel);
        for (p, seq) in seqs {
            inv.arg(*p).arg(*seq);
        }
        let _: u64 = inv.invoke_async(conn).await?;
        Ok(())
    }
}

/// How one append is announced live.
#[derive(Clone, Copy)]
struct Announce<'a> {
    /// At append time (no WAIT, or the `deliver_unconfirmed` defect); else
    /// once replicas confirmed (`confirm.lua`).
    early: bool,
    /// By the engine, after the scripts: a room publish on a cluster.
    by_engine: bool,
    /// The room's live channel ('' when not a room publish).
    channel: &'a str,
}
