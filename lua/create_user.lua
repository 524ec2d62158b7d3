-- create_user.lua: stores an account unless the name is taken.
--
-- KEYS: 1 mythos:user:{<name>}   (hash: password_hash, role)
-- ARGV: 1 password_hash (argon2id PHC string)   2 role
-- Returns 1 when created, 0 when the name exists.
--
-- Atomic because Redis runs a script alone: of two concurrent creations of one
-- name exactly one wins, and no half-written account is ever visible.

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[1], 'role', ARGV[2])
return 1
