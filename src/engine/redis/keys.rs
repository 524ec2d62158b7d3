//! The Redis key layout (see `docs/redis-layout.md`).
//!
//! Owns: the name of every key, stream and channel the broker uses. Every key
//! starts with `mythos:`, and every key of one player shares the hash tag
//! `{<player>}`, so one player's scripts run on one Redis Cluster slot. Must
//! not touch: Redis itself (these are pure functions).

/// The channel on which scripts announce fresh appends (also hard-coded in `lua/lib.lua`).
pub const LIVE_CHANNEL: &str = "mythos:live";
/// The upstream stream of player commands.
pub const COMMANDS: &str = "mythos:commands";
/// The stream game servers publish to (Redis-native publishing).
pub const PUBLISH: &str = "mythos:publish";
/// Where malformed `mythos:publish` entries are moved.
pub const PUBLISH_DEAD: &str = "mythos:publish:dead";

/// A player's log: a stream whose entry ids are `<seq>-0`.
pub fn events(player: &str) -> String {
    format!("mythos:player:{{{player}}}:events")
}

/// A player's hash: `seq` (last sequence number), `acked`.
pub fn meta(player: &str) -> String {
    format!("mythos:player:{{{player}}}:meta")
}

/// A player's set of rooms.
pub fn rooms(player: &str) -> String {
    format!("mythos:player:{{{player}}}:rooms")
}

/// A publish idempotency marker for one player: the sequence number it got.
pub fn dedupe(player: &str, key: &str) -> String {
    format!("mythos:player:{{{player}}}:dedupe:{key}")
}

/// A room publish's idempotency record: the deliveries its first publish
/// answered, `player seq player seq ...`.
pub fn room_dedupe(room: &str, key: &str) -> String {
    format!("mythos:room:{{{room}}}:dedupe:{key}")
}

/// A room's set of members.
pub fn members(room: &str) -> String {
    format!("mythos:room:{{{room}}}:members")
}

/// An account: hash `password_hash`, `role`.
pub fn user(name: &str) -> String {
    format!("mythos:user:{{{name}}}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(super::events("alice"), "mythos:player:{alice}:events");
        assert_eq!(super::dedupe("a", "k:1"), "mythos:player:{a}:dedupe:k:1");
        assert_eq!(super::members("tavern"), "mythos:room:{tavern}:members");
        assert_eq!(super::user("bob"), "mythos:user:{bob}");
    }
}
