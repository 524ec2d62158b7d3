-- ack.lua: a player's cumulative acknowledgement.
--
-- KEYS: 1 mythos:player:{p}:events   2 mythos:player:{p}:meta
-- ARGV: 1 the acknowledged sequence number N
--       2 'c': `last` is the newest replica-confirmed event (see lib.lua cursor)
-- Returns {last, acked, oldest}: the cursor afterwards.
--
-- acked becomes max(acked, min(N, last)): never backwards, never past the
-- last sequence number. Events 1..acked are trimmed (XTRIM MINID acked+1).
-- Atomic because Redis runs a script alone: the clamp reads the same `seq`
-- that a concurrent append increments, so an ack can't pass an append.

local confirmed_only = ARGV[2] == 'c'
local last, acked = cursor(KEYS[1], KEYS[2], confirmed_only)
local n = math.min(tonumber(ARGV[1]) or 0, last)
if n > acked then
  redis.call('HSET', KEYS[2], 'acked', int(n))
  redis.call('XTRIM', KEYS[1], 'MINID', int(n + 1))
end
return { cursor(KEYS[1], KEYS[2], confirmed_only) }
