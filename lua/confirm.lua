-- confirm.lua: with MYTHOS_REDIS_WAIT_REPLICAS >= 1, makes events that
-- replicas confirmed (WAIT) visible to readers, and announces them live.
--
-- KEYS, per member i: mythos:player:{p}:meta
-- ARGV: 1 n (members)   2 PUBLISH, SPUBLISH (cluster), or '' (the engine
--   announces: a room on a cluster, whose channel lives on another slot)
--   3 flags   4 event_type   5 timestamp   6 room_id   7 id   8 data
--   9 the room's live channel for a room publish ('' otherwise: each
--   member's own channel; see lib.lua `announce`)
--   9 + 2i - 1: member i's player id   9 + 2i: its sequence number
-- Returns the number of members.
--
-- Readers never see an event before this runs (lib.lua cursor with
-- `confirmed_only`; the engine bounds log reads by `confirmed`), so a
-- failover that loses an unconfirmed event takes back nothing a client
-- saw. `confirmed` only grows: replication is one ordered stream per
-- master, so when WAIT confirms event N of a player, every earlier event of
-- that player (written before it, on the same master) is replicated too.
-- Members whose event was a dedupe hit are announced again: the first
-- attempt may have failed before its announcement (announcements are
-- hints, readers drop what they have). Atomic per call, like every script.

local n = tonumber(ARGV[1])
local players, seqs = {}, {}
for i = 1, n do
  local player, seq = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  local confirmed = tonumber(redis.call('HGET', KEYS[i], 'confirmed')) or 0
  if tonumber(seq) > confirmed then
    redis.call('HSET', KEYS[i], 'confirmed', seq)
  end
  players[i] = player
  seqs[i] = seq
end
announce(ARGV[2], ARGV[9], players, seqs, ARGV[3], ARGV[4], ARGV[5], ARGV[8], ARGV[6], ARGV[7])
return n
