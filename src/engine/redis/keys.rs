//! The Redis key layout (see `docs/redis-layout.md`).
//!
//! Owns: the name of every key, stream and channel the broker uses. Every key
//! starts with `mythos:`, and every key of one player shares the hash tag
//! `{<player>}`, so one player's scripts run on one Redis Cluster slot. Must
//! not touch: Redis itself (these are pure functions).

/// Slots of a Redis Cluster (`CLUSTER KEYSLOT` answers below this).
const SLOTS: u16 = 16_384;

/// A player's live channel: scripts announce each fresh append of the player
/// there (`PUBLISH`, or `SPUBLISH` on a cluster; the name is also built in
/// `lua/lib.lua`). It carries the player's hash tag, so on a cluster it is a
/// shard channel of the player's own slot.
pub fn live(player: &str) -> String {
    format!("mythos:live:{{{player}}}")
}

/// The player a live channel name belongs to.
pub fn live_player(channel: &str) -> Option<&str> {
    channel.strip_prefix("mythos:live:{")?.strip_suffix('}')
}

/// A room's live channel: a room publish is announced there once, with
/// every member's sequence number (`lua/lib.lua` `announce`), and a node
/// subscribes to it while one of its followed players is in the room. It
/// carries the room's hash tag: on a cluster a shard channel of the room's
/// slot. Player ids cannot contain `:`, so it never names a player's channel.
pub fn live_room(room: &str) -> String {
    format!("mythos:live:room:{{{room}}}")
}

/// The room a room's live channel name belongs to.
pub fn live_room_of(channel: &str) -> Option<&str> {
    channel
        .strip_prefix("mythos:live:room:{")?
        .strip_suffix('}')
}

/// Partition `i` of `n` of a Redis-native stream named `base`: `base`
/// itself when `n` is 1 (today's names), else `base:{<i>.<k>}`, with `k` the
/// smallest number that puts partition `i` in the `i`-th of `n` equal slot
/// ranges, so the partitions spread over a cluster's masters as evenly as
/// its slots do.
pub fn partition(base: &str, i: usize, n: usize) -> String {
    if n <= 1 {
        return base.to_string();
    }
    let n16 = u32::try_from(n).unwrap_or(u32::MAX);
    let i32_ = u32::try_from(i).unwrap_or(0);
    let lo = u32::from(SLOTS) * i32_ / n16;
    let hi = u32::from(SLOTS) * (i32_ + 1) / n16;
    let k = (0u32..)
        .find(|k| {
            let s = u32::from(slot(format!("{i}.{k}").as_bytes()));
            (lo..hi.max(lo + 1)).contains(&s)
        })
        .unwrap_or(0);
    format!("{base}:{{{i}.{k}}}")
}

/// The upstream stream of player commands.
pub const COMMANDS: &str = "mythos:commands";
/// The stream game servers publish to (Redis-native publishing).
pub const PUBLISH: &str = "mythos:publish";

/// Where malformed entries of a `mythos:publish` partition are moved:
/// `mythos:publish:dead`, or `<partition>:dead` (same slot).
pub fn dead(stream: &str) -> String {
    format!("{stream}:dead")
}

/// The partition (of `n`) that holds `player`'s commands: its
/// `CLUSTER KEYSLOT` modulo `n` (CRC16-XMODEM of the name, mod 16384).
pub fn partition_of(player: &str, n: usize) -> usize {
    usize::from(slot(player.as_bytes())) % n.max(1)
}

/// Redis Cluster's key slot of a hash tag's text.
pub fn slot(tag: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS
}

/// A player's log: a stream whose entry ids are `<seq>-0`.
pub fn events(player: &str) -> String {
    format!("mythos:player:{{{player}}}:events")
}

/// A player's hash: `seq` (last sequence number), `acked`.
pub fn meta(player: &str) -> String {
    format!("mythos:player:{{{player}}}:meta")
}

/// A player's presence: hash `state`, `since`, `until`, `why`, `seq`
/// (`lua/presence.lua`).
pub fn presence(player: &str) -> String {
    format!("mythos:player:{{{player}}}:presence")
}

/// The nodes holding a connection of the player (a set).
pub fn presence_nodes(player: &str) -> String {
    format!("mythos:player:{{{player}}}:presence:nodes")
}

/// The stream of presence facts, partitioned like `mythos:commands`.
pub const PRESENCE: &str = "mythos:presence";

/// Node leases: a sorted set, node → lease expiry (ms, Redis's clock).
pub const PRESENCE_LEASES: &str = "mythos:presence:leases";

/// `linkdead` players: a sorted set, player → grace deadline (ms).
pub const PRESENCE_LINKDEAD: &str = "mythos:presence:linkdead";

/// The players a node holds connections of (a set; for reaping).
pub fn presence_held(node: &str) -> String {
    format!("mythos:presence:node:{{{node}}}:players")
}

/// A room whose members get `player_entered` / `player_left` on presence
/// changes (a string `1`; absent: off).
pub fn room_presence(room: &str) -> String {
    format!("mythos:room:{{{room}}}:presence_events")
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

/// A refresh-token family: hash `player`, `role`, `hash` (SHA-256 of the
/// current token's secret, never the token), with a time to live. The
/// family id is its own hash tag: a family is one key on one slot.
pub fn refresh(family: &str) -> String {
    format!("mythos:refresh:{{{family}}}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn partitions_spread_over_the_slots() {
        assert_eq!(super::partition("mythos:commands", 0, 1), "mythos:commands");
        for n in [2usize, 3, 4, 16] {
            for i in 0..n {
                let key = super::partition("mythos:commands", i, n);
                let tag = &key[key.find('{').unwrap() + 1..key.len() - 1];
                let s = usize::from(super::slot(tag.as_bytes()));
                assert!(
                    (16384 * i / n..16384 * (i + 1) / n).contains(&s),
                    "{key} {s}"
                );
            }
        }
        // Redis's own CLUSTER KEYSLOT for "alice" (and for "{alice}...").
        assert_eq!(super::slot(b"alice"), 749);
        assert_eq!(super::live_player("mythos:live:{alice}"), Some("alice"));
        assert_eq!(super::live_room_of(&super::live_room("hall")), Some("hall"));
        assert_eq!(super::live_player(&super::live_room("hall")), None);
        assert_eq!(super::live_room_of(&super::live("alice")), None);
    }

    #[test]
    fn layout() {
        assert_eq!(super::events("alice"), "mythos:player:{alice}:events");
        assert_eq!(super::dedupe("a", "k:1"), "mythos:player:{a}:dedupe:k:1");
        assert_eq!(super::members("tavern"), "mythos:room:{tavern}:members");
        assert_eq!(super::user("bob"), "mythos:user:{bob}");
        assert_eq!(super::refresh("f-1"), "mythos:refresh:{f-1}");
    }
}
