-- resume.lua: opens a reader for a player at a resume point.
--
-- KEYS: 1 mythos:player:{p}:events   2 mythos:player:{p}:meta
-- ARGV: 1 after (the resume point)   2 max_backlog   3 max_backlog_age in ms
--       4 the player id   5 the timestamp for a `resync_required` event
-- Returns {last, acked, oldest, after, resync_seq, oldest_available}: the
-- cursor afterwards, where to read from (exclusive), and, when the resume
-- point fell before the oldest retained event, the sequence number of the
-- `resync_required` event appended now (0 when none) with its
-- data.oldest_available.
--
-- Rules (those of the memory engine): apply the caps; after = min(after, last);
-- if after + 1 < oldest, append `resync_required` with data
-- {"oldest_available":S}, S the oldest event that survives that append (announced on `mythos:live` like any append)
-- and read from oldest - 1. Atomic because Redis runs a script alone: nothing
-- is appended or trimmed between computing `oldest` and the resync append.

local events, meta = KEYS[1], KEYS[2]
local max_backlog, max_age_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
enforce_caps(events, meta, max_backlog, max_age_ms, now)
local last, acked, oldest = cursor(events, meta)
local after = math.min(tonumber(ARGV[1]) or 0, last)
if after + 1 >= oldest then
  return { last, acked, oldest, after, 0, 0 }
end
-- Appending the resync event may push one more event out under the count
-- cap: name the oldest event that stays.
oldest = math.max(oldest, last + 2 - tonumber(max_backlog))
local data = '{"oldest_available":' .. int(oldest) .. '}'
local fields = event_fields('', 'resync_required', ARGV[5], data, '', '')
local seq = append_one(events, meta, fields, max_backlog, max_age_ms, now)
announce({ frame(ARGV[4]) .. frame(int(seq)) }, '', 'resync_required', ARGV[5], data, '', '')
local l, a, o = cursor(events, meta)
return { l, a, o, oldest - 1, seq, oldest }
