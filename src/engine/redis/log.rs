//! A player's log on Redis: reading events (only replica-confirmed ones
//! with `MYTHOS_REDIS_WAIT_REPLICAS`), acknowledging and the cursor
//! (`ack.lua`, `cursor.lua`, which apply the retention caps), and this
//! node's live interest in the player ([`super::live`]).
//!
//! Owns: the [`EventLog`] capability of the Redis engine. Must not touch:
//! appends (see [`super::append`]).

use async_trait::async_trait;
use redis::{Script, Value};

use super::decode::{cursor_of, event_of};
use super::{deliver_unconfirmed, keys, ms, stream, RedisEngine};
use crate::engine::{Cursor, EngineError, EventLog, Result};
use crate::protocol::Event;

impl RedisEngine {
    /// Runs a script over one player's events and meta keys, answering a cursor first.
    async fn player_script(
        &self,
        script: &Script,
        player: &str,
        args: &[String],
    ) -> Result<Vec<u64>> {
        let mut inv = script.prepare_invoke();
        inv.key(keys::events(player)).key(keys::meta(player));
        for a in args {
            inv.arg(a.as_str());
        }
        let out: Vec<u64> = inv.invoke_async(&mut self.shared().await?).await?;
        if out.len() < 3 {
            return Err(EngineError::Corrupt("script answered short".into()));
        }
        Ok(out)
    }
}

#[async_trait]
impl EventLog for RedisEngine {
    async fn read(&self, player: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut xrange = redis::cmd("XRANGE");
        xrange
            .arg(keys::events(player))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        let mut conn = self.shared().await?;
        if !self.waits() || deliver_unconfirmed() {
            let v: Value = xrange.query_async(&mut conn).await?;
            return stream::entries(v)?.into_iter().map(event_of).collect();
        }
        // Only what replicas confirmed (absent mark: everything, see lib.lua).
        let (confirmed, v): (Option<u64>, Value) = redis::pipe()
            .cmd("HGET")
            .arg(keys::meta(player))
            .arg("confirmed")
            .add_command(xrange)
            .query_async(&mut conn)
            .await?;
        let upto = confirmed.unwrap_or(u64::MAX);
        let events: Result<Vec<Event>> = stream::entries(v)?.into_iter().map(event_of).collect();
        let mut events = events?;
        events.retain(|e| e.sequence_number <= upto);
        Ok(events)
    }

    async fn ack(&self, player: &str, seq: u64) -> Result<Cursor> {
        let args = [seq.to_string(), self.visibility().to_string()];
        let v = self.player_script(&self.scripts.ack, player, &args).await?;
        Ok(cursor_of(&v))
    }

    async fn cursor(&self, player: &str) -> Result<Cursor> {
        let args = [
            self.limits.max_backlog.to_string(),
            ms(self.limits.max_backlog_age).to_string(),
            self.visibility().to_string(),
        ];
        let v = self
            .player_script(&self.scripts.cursor, player, &args)
            .await?;
        Ok(cursor_of(&v))
    }

    /// The player's channel first, so that its `+room` / `-room` notices
    /// reach this node from then on; then the rooms it is in, read after
    /// (a join before the read is in the set, one after it comes as a
    /// notice; both at once are one room).
    async fn watch(&self, player: &str) -> Result<()> {
        self.live.watch(player).await?;
        let rooms = crate::engine::Rooms::rooms_of(self, player).await?;
        self.live.watch_rooms(player, rooms).await
    }

    fn unwatch(&self, player: &str) {
        self.live.unwatch(player);
    }
}
