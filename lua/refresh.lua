-- refresh.lua: a refresh-token family (the web terminal's "stay logged in").
--
-- KEYS: 1 mythos:refresh:{<family>}   (hash: player, role, hash)
-- ARGV: 1 the operation: 'create' | 'rotate' | 'revoke'
--   create: 2 player   3 role   4 hash of the first token's secret   5 time to live in ms
--   rotate: 2 hash of the presented secret   3 hash of the next secret   4 time to live in ms
--   revoke: nothing more
-- Returns:
--   create: 1 (a family id is 128 random bits: an existing one is replaced, never expected)
--   rotate: {'rotated', player, role} when ARGV[2] was the current hash: it is now
--           ARGV[3] and the time to live starts again;
--           {'reused', player, role} when the family exists and ARGV[2] is not its
--           current hash (a token already rotated, or a forged secret): the family is
--           deleted, so its newest token stops working too;
--           {'unknown'} when there is no such family (never made, expired, revoked).
--   revoke: {player, role} of the deleted family, or {} when there was none.
--
-- Only hashes (SHA-256, hex) of secrets are stored, never a token. Atomic because
-- Redis runs a script alone: of two requests presenting the same token at once,
-- exactly one rotates, and the other finds a stale hash and revokes the family.

local key, op = KEYS[1], ARGV[1]
if op == 'create' then
  redis.call('DEL', key)
  redis.call('HSET', key, 'player', ARGV[2], 'role', ARGV[3], 'hash', ARGV[4])
  redis.call('PEXPIRE', key, ARGV[5])
  return 1
elseif op == 'rotate' then
  local f = redis.call('HMGET', key, 'player', 'role', 'hash')
  if not f[1] or not f[3] then return { 'unknown' } end
  if f[3] ~= ARGV[2] then
    redis.call('DEL', key)
    return { 'reused', f[1], f[2] or 'player' }
  end
  redis.call('HSET', key, 'hash', ARGV[3])
  redis.call('PEXPIRE', key, ARGV[4])
  return { 'rotated', f[1], f[2] or 'player' }
elseif op == 'revoke' then
  local f = redis.call('HMGET', key, 'player', 'role')
  if not f[1] then return {} end
  redis.call('DEL', key)
  return { f[1], f[2] or 'player' }
end
return redis.error_reply('refresh.lua: unknown operation')
