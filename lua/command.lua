-- command.lua: appends a player's command to the upstream stream, once.
--
-- KEYS: 1 mythos:player:{p}:cmd:<id>   the dedupe marker (string: entry id)
--       2 mythos:commands               the stream game servers read
-- ARGV: 1 dedupe window in ms   2 player_id   3 session_id   4 type   5 id
--       6 payload (JSON text)   7 cap: the stream keeps about this many entries
--       (MAXLEN ~), so it cannot grow without bound while no game server reads
-- Returns {entry id, 1} for a new command, {earlier entry id, 0} for a
-- repeat of (player, id) inside the window.
--
-- Atomic because Redis runs a script alone: two connections sending the same
-- command id at once append it once. It touches two hash slots (the player's
-- and the stream's), so under Redis Cluster it needs a commands stream per
-- slot; this is a documented limitation (single Redis or Sentinel only).

local old = redis.call('GET', KEYS[1])
if old then return { old, 0 } end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'player_id', ARGV[2], 'session_id', ARGV[3],
  'type', ARGV[4], 'id', ARGV[5], 'payload', ARGV[6])
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return { id, 1 }
