//! Rooms on Redis: membership (the room's set and the player's, in one
//! transaction on a single Redis; room first on a cluster, where the two
//! live on different slots; each change announced on the player's live
//! channel) and publishing to a room (announced once, on the room's live
//! channel, with every member's sequence number), whose repeat with the
//! same id reaches exactly the players its first publish reached (its record
//! `mythos:room:{r}:dedupe:<id>`).
//!
//! Owns: the [`Rooms`] capability and room fan-out's member list. Must not
//! touch: the appends themselves ([`super::append`]).

use async_trait::async_trait;

use super::{decode, keys, live, ms, RedisEngine};
use crate::engine::{Result, Rooms};
use crate::protocol::{Delivery, EventBody};

impl RedisEngine {
    /// A room publish. With an id, the players are those its first publish
    /// reached (its record `mythos:room:{r}:dedupe:<id>`), so a repeat —
    /// after a member left or joined, or after a partial failure — reaches
    /// exactly them: their own dedupe keys answer the sequence numbers
    /// already given and appends happen only where one is missing.
    pub(super) async fn publish_room(
        &self,
        room: &str,
        body: &EventBody,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        let record = match dedupe_key {
            Some(k) => {
                let r: Option<String> = redis::cmd("GET")
                    .arg(keys::room_dedupe(room, k))
                    .query_async(&mut self.shared().await?)
                    .await?;
                r
            }
            None => None,
        };
        let players = match &record {
            Some(r) => decode::room_deliveries(r)?
                .into_iter()
                .map(|d| d.player_id)
                .collect(),
            None => self.sorted_set(&keys::members(room)).await?,
        };
        let out = self
            .append_all(&players, body, dedupe_key, Some(room))
            .await?;
        if let (Some(k), None) = (dedupe_key, record) {
            // NX: of two racing first publishes, the record of the one that
            // stored first stands (both reached each member once, by the
            // members' dedupe keys).
            let _: Option<String> = redis::cmd("SET")
                .arg(keys::room_dedupe(room, k))
                .arg(decode::encode_room_deliveries(&out))
                .arg("PX")
                .arg(ms(self.limits.dedupe_window))
                .arg("NX")
                .query_async(&mut self.shared().await?)
                .await?;
        }
        Ok(out)
    }

    /// The members of a set, sorted.
    async fn sorted_set(&self, key: &str) -> Result<Vec<String>> {
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut self.shared().await?)
            .await?;
        m.sort_unstable();
        Ok(m)
    }

    /// Adds or removes `player` in `room` (both sets) and announces it on
    /// the player's live channel (`+room` / `-room`: the nodes following
    /// the player follow the room's channel accordingly); answers whether
    /// it changed and the room's members after. On one Redis a transaction,
    /// the notice included, so it is published after the sets changed and
    /// in order with every room announcement; on a cluster the two sets live
    /// on different slots, so the room's set (the one publishes read) is
    /// written first, then the player's, then the notice (on the player's
    /// slot): a node that reads the player's rooms after the notice sees it.
    async fn membership(&self, room: &str, player: &str, add: bool) -> Result<(bool, Vec<String>)> {
        let (members, rooms) = (keys::members(room), keys::rooms(player));
        let cmd = if add { "SADD" } else { "SREM" };
        let notice = live::notice(add, room);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd(cmd).arg(&members).arg(player);
        if !self.conns.is_cluster() {
            pipe.cmd(cmd).arg(&rooms).arg(room).ignore();
            pipe.cmd(self.publish)
                .arg(keys::live(player))
                .arg(&notice)
                .ignore();
        }
        pipe.cmd("SMEMBERS").arg(&members);
        let mut conn = self.shared().await?;
        let (changed, mut list): (u64, Vec<String>) = pipe.query_async(&mut conn).await?;
        if self.conns.is_cluster() {
            // The player's set and channel share the player's slot: one
            // round trip, the notice after the set.
            let _: () = redis::pipe()
                .cmd(cmd)
                .arg(&rooms)
                .arg(room)
                .ignore()
                .cmd(self.publish)
                .arg(keys::live(player))
                .arg(&notice)
                .ignore()
                .query_async(&mut conn)
                .await?;
        }
        list.sort_unstable();
        Ok((changed == 1, list))
    }
}

#[async_trait]
impl Rooms for RedisEngine {
    async fn join(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let (added, mut members) = self.membership(room, player, true).await?;
        if !added {
            return Ok(None);
        }
        members.retain(|m| m != player);
        Ok(Some(members))
    }

    async fn leave(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let (removed, members) = self.membership(room, player, false).await?;
        Ok(removed.then_some(members))
    }

    async fn members(&self, room: &str) -> Result<Vec<String>> {
        self.sorted_set(&keys::members(room)).await
    }

    async fn rooms_of(&self, player: &str) -> Result<Vec<String>> {
        self.sorted_set(&keys::rooms(player)).await
    }
}
