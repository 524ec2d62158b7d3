-- presence.lua (lib.lua prepended): one step of a player's presence machine (src/engine/presence.rs
-- `Book` is the same machine in memory; the conformance suite holds both to it).
--
-- KEYS: 1 mythos:player:{p}:presence        hash: state, since, until, why, seq
--       2 mythos:player:{p}:presence:nodes  set of nodes holding a connection
--       3 (one Redis only) the player's partition of mythos:presence, where a
--         fact is appended in this script; on a cluster the stream lives on
--         another slot and the engine appends the returned fact itself
-- ARGV: 1 op: connect | disconnect | logout | expire
--       2 the player   3 the node recording the step
--       4 grace in ms (disconnect)   5 why (disconnect): timeout | node_lost
--       6 the facts stream's MAXLEN ~
-- Returns {state, until, fact_seq, fact_state, fact_reason, now}: the state
-- afterwards, the linkdead deadline (0 unless linkdead), and the fact this
-- step produced (fact_seq 0: none). `now` is this Redis's clock (TIME, ms).
--
-- connect: the node joins the set; offline -> online is a fact (reason
--   connect); linkdead -> online is not.
-- disconnect: the node leaves the set; the last one gone while online ->
--   linkdead until now + grace (grace 0: offline at once, a fact).
-- logout: every node leaves; anything but offline -> offline (reason logout).
-- expire: linkdead, no node, deadline passed -> offline (reason: the why
--   recorded at disconnect). Anything else is answered unchanged.
-- Atomic because Redis runs a script alone: two nodes connecting and
-- disconnecting the same player at once see each other's set, so a player
-- with three tabs is one join and one leave, and a fact's seq is dense.

local now = now_ms()
local h, nodes = KEYS[1], KEYS[2]
local op, player, node = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', h, 'state') or 'offline'

local function fact(new_state, reason)
  local seq = redis.call('HINCRBY', h, 'seq', 1)
  redis.call('HSET', h, 'state', new_state, 'since', int(now), 'until', '0')
  if KEYS[3] then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*',
      'player_id', player, 'seq', seq, 'state', new_state, 'reason', reason,
      'at', int(now), 'node', node)
  end
  return { new_state, 0, seq, new_state, reason, now }
end

local function unchanged()
  return { state, tonumber(redis.call('HGET', h, 'until') or '0') or 0, 0, '', '', now }
end

if op == 'connect' then
  redis.call('SADD', nodes, node)
  if state == 'offline' then
    return fact('online', 'connect')
  end
  if state == 'linkdead' then
    redis.call('HSET', h, 'state', 'online', 'since', int(now), 'until', '0')
    state = 'online'
  end
  return unchanged()
elseif op == 'disconnect' then
  if redis.call('SREM', nodes, node) == 0 or redis.call('SCARD', nodes) > 0
      or state ~= 'online' then
    return unchanged()
  end
  local grace = tonumber(ARGV[4]) or 0
  if grace <= 0 then
    return fact('offline', ARGV[5])
  end
  redis.call('HSET', h, 'state', 'linkdead', 'since', int(now),
    'until', int(now + grace), 'why', ARGV[5])
  return { 'linkdead', now + grace, 0, '', '', now }
elseif op == 'logout' then
  redis.call('DEL', nodes)
  if state == 'offline' then
    return unchanged()
  end
  return fact('offline', 'logout')
elseif op == 'expire' then
  local deadline = tonumber(redis.call('HGET', h, 'until') or '0') or 0
  if state ~= 'linkdead' or deadline > now or redis.call('SCARD', nodes) > 0 then
    return unchanged()
  end
  return fact('offline', redis.call('HGET', h, 'why') or 'timeout')
end
return redis.error_reply('presence.lua: unknown op ' .. tostring(op))
