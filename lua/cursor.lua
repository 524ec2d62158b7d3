-- cursor.lua: where a player's log stands, after applying the retention caps.
--
-- KEYS: 1 mythos:player:{p}:events   2 mythos:player:{p}:meta
-- ARGV: 1 max_backlog   2 max_backlog_age in ms
--       3 'c': `last` is the newest replica-confirmed event (see lib.lua cursor)
-- Returns {last, acked, oldest}; an unknown player is {0, 0, 1}.
--
-- A script rather than plain reads because it first drops what the caps no
-- longer allow (like the memory engine), and the answer must not interleave
-- with a concurrent append or ack.

enforce_caps(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), now_ms())
return { cursor(KEYS[1], KEYS[2], ARGV[3] == 'c') }
