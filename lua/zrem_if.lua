-- zrem_if.lua: removes a sorted-set member only if its score is still the
-- one the caller saw (a compare-and-delete).
--
-- KEYS: 1 the sorted set (mythos:presence:linkdead)
-- ARGV: 1 the member   2 the score the caller read
-- Returns 1 if removed, 0 if the member is gone or its score changed.
--
-- Atomic because Redis runs a script alone: a player whose deadline moved
-- (linkdead again) between the caller's read and this removal keeps it.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
