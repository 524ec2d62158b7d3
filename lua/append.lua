-- append.lua: appends one event to the logs of N players (a fan-out) in one call.
--
-- KEYS, per member i, in order:
--   mythos:player:{p}:events   the log (stream, entry id '<seq>-0')
--   mythos:player:{p}:meta     hash: seq (last sequence number), acked
--   mythos:player:{p}:dedupe:<key>   only when ARGV[2] > 0: the dedupe marker
-- ARGV:
--   1 n (members)   2 dedupe window in ms (0: no dedupe key, 2 KEYS per member)
--   3 max_backlog   4 max_backlog_age in ms
--   5 flags ('r': room_id present, 'i': id present)
--   6 event_type    7 timestamp (stamped by the broker)   8 data (JSON text)
--   9 room_id ('' when absent)   10 id ('' when absent)
--   11 the live announcement's command: PUBLISH (one Redis) or SPUBLISH
--      (cluster); '' announces nothing here (the engine does: after WAIT
--      with confirm.lua, or for a room on a cluster, whose channel lives on
--      another slot)
--   12 the room's live channel for a room publish ('' otherwise): one
--      announcement there for every member instead of one per member
--   13 'c' with MYTHOS_REDIS_WAIT_REPLICAS >= 1 (readers see only what
--      replicas confirmed): a meta without `confirmed` gets it set to the
--      events before this append (they predate WAIT: readers keep seeing
--      them); '' otherwise
--   13+i: member i's player id
-- Returns a flat array: for each member, its sequence number and 1 if the
-- event was appended now, 0 if the dedupe key returned an earlier one.
--
-- Atomic because Redis runs a script alone: every member gets the event
-- exactly once, the sequence numbers stay dense, a dedupe hit can't race a
-- concurrent append, and the fresh appends are announced right after them
-- (lib.lua `announce`). Each member touches only its own hash-tagged keys;
-- on a Redis Cluster the engine calls this once per slot (all members of a
-- call share a slot), and the calls of one fan-out run concurrently.
--
-- Per member: HINCRBY and XADD (with its MAXLEN trim); on one append in 16
-- of a player the age cap's HGET (lib.lua AGE_EVERY); plus GET/SET with a
-- dedupe key and HEXISTS with WAIT. The event's fields and its announcement
-- body are built once per call, each target's frames in one concatenation
-- (docs/benchmarks.md, "Redis CPU per member": what each costs).

local n = tonumber(ARGV[1])
local dedupe_ms = tonumber(ARGV[2])
local max_backlog = ARGV[3]
local max_age_ms = tonumber(ARGV[4])
local flags, event_type, timestamp, data = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local room_id, id, publish, channel = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local confirmed_only = ARGV[13] == 'c'
local stride = 2
if dedupe_ms > 0 then stride = 3 end

local fields = event_fields(flags, event_type, timestamp, data, room_id, id)
local now = now_ms()
local out = {}
local players, seqs, fresh = {}, {}, 0
for i = 1, n do
  local k = (i - 1) * stride
  local events, meta = KEYS[k + 1], KEYS[k + 2]
  local seq, appended = nil, 0
  -- GET answers false for a missing marker, and tonumber(false) is nil
  if dedupe_ms > 0 then seq = tonumber(redis.call('GET', KEYS[k + 3])) end
  if not seq then
    if confirmed_only and redis.call('HEXISTS', meta, 'confirmed') == 0 then
      redis.call('HSET', meta, 'confirmed', redis.call('HGET', meta, 'seq') or '0')
    end
    local s
    seq, s = append_one(events, meta, fields, max_backlog, max_age_ms, now)
    if dedupe_ms > 0 then
      redis.call('SET', KEYS[k + 3], s, 'PX', dedupe_ms)
    end
    appended = 1
    fresh = fresh + 1
    players[fresh] = ARGV[13 + i]
    seqs[fresh] = s
  end
  out[2 * i - 1] = seq
  out[2 * i] = appended
end
announce(publish, channel, players, seqs, flags, event_type, timestamp, data, room_id, id)
return out
