-- leases.lua (lib.lua prepended): node leases of presence, on one clock
-- (this script's Redis TIME, the master of mythos:presence:leases).
--
-- KEYS: 1 mythos:presence:leases (sorted set: member -> expiry, ms)
-- ARGV: 1 op: beat | claim | release
--   beat:    2 node  3 lease in ms
--   claim:   2 claim in ms  3 most leases to claim
--   release: 2 node
-- Returns:
--   beat: 0 when the node's lease was live (now renewed); 1 when it was
--     absent or expired (not renewed: the node must take a new lease name
--     and re-assert its players, because a reaper may be taking the old
--     name's players away — see docs/presence.md).
--   claim: the nodes whose lease expired (or whose reaper's claim expired),
--     each now held as 'reaping:<node>' until now + claim.
--   release: 1 when the reaper's claim was removed.
--
-- A claim renames the member, so the node, should it come back, finds its
-- lease absent (beat answers 1) rather than a score a reaper wrote. Atomic
-- because Redis runs a script alone: two reapers never claim the same lease,
-- and a beat never renews a lease a reaper holds.

local key, op = KEYS[1], ARGV[1]
local now = now_ms()
local REAPING = 'reaping:'

if op == 'beat' then
  local s = redis.call('ZSCORE', key, ARGV[2])
  if s and tonumber(s) > now then
    redis.call('ZADD', key, int(now + tonumber(ARGV[3])), ARGV[2])
    return 0
  end
  if not s then
    -- A new name (or one the store lost): start it.
    redis.call('ZADD', key, int(now + tonumber(ARGV[3])), ARGV[2])
  end
  return 1
elseif op == 'claim' then
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  local out = {}
  for _, m in ipairs(due) do
    local node = m
    if string.sub(m, 1, #REAPING) == REAPING then
      node = string.sub(m, #REAPING + 1)
    end
    redis.call('ZREM', key, m)
    redis.call('ZADD', key, int(now + tonumber(ARGV[2])), REAPING .. node)
    out[#out + 1] = node
  end
  return out
elseif op == 'release' then
  return redis.call('ZREM', key, REAPING .. ARGV[2])
end
return redis.error_reply('leases.lua: unknown op ' .. tostring(op))
