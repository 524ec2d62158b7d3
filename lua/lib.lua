-- lib.lua: helpers shared by the mythos scripts.
--
-- Not a script on its own: the engine prepends this file to append.lua,
-- cursor.lua and ack.lua before loading them (`SCRIPT LOAD`), so
-- each loaded script is self-contained and its SHA covers these helpers too.
-- Everything here runs inside the calling script, hence atomically.

-- A number as an integer string: tostring() would print 1e+15 for big numbers.
local function int(n)
  return string.format('%d', n)
end

-- Milliseconds since the epoch of '2026-11-23T10:30:00.123Z' (RFC 3339, UTC);
-- nil when the text is not in that shape.
local function ts_ms(s)
  if type(s) ~= 'string' then return nil end
  local y, mo, d, h, mi, se, frac =
    string.match(s, '^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)%.?(%d*)')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from civil (H. Hinnant), valid for the proleptic Gregorian calendar
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  local ms = tonumber(string.sub(frac .. '000', 1, 3))
  return (((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60 + tonumber(se)) * 1000 + ms
end

-- The server's clock, in milliseconds (one clock for every node).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The sequence number of a stream entry id '<seq>-0'.
local function id_seq(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The `timestamp` field of an entry (stored second, after `event_type`).
local function entry_ts(fields)
  if fields[3] == 'timestamp' then return fields[4] end
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'timestamp' then return fields[i + 1] end
  end
  return nil
end

-- Drops the entries older than max_age_ms from the front of the log. Entries
-- are appended in time order, so the expired ones form a prefix.
--
-- The meta hash keeps `oldest_ms`, a lower bound of the oldest retained
-- entry's timestamp: while it is within the age cap nothing can have expired
-- and the log is not read at all (one HGET per append instead of reading and
-- parsing the oldest entry). Appends only add newer entries and trims only
-- remove the oldest, so the bound stays a lower bound until it is refreshed
-- here (timestamps are stamped by the broker before the script runs, so two
-- concurrent appends can land a few ms out of order: an entry can then
-- outlive the cap by that much). Only when it falls behind the cutoff (or is missing) is the front of
-- the log read, in batches, and the bound set to the oldest survivor's
-- timestamp. An entry whose timestamp cannot be read is kept, and stops the
-- trim; the bound is then set to `now`, so it is looked at again only after
-- another max_age_ms.
local function trim_age(events, meta, max_age_ms, now)
  local cutoff = now - max_age_ms
  local bound = tonumber(redis.call('HGET', meta, 'oldest_ms'))
  if bound and bound >= cutoff then return end
  local batch = 1
  while true do
    local old = redis.call('XRANGE', events, '-', '+', 'COUNT', batch)
    local expired = 0
    local survivor = nil
    for _, e in ipairs(old) do
      local t = ts_ms(entry_ts(e[2]))
      if t == nil or t >= cutoff then
        survivor = t or now
        break
      end
      expired = expired + 1
    end
    if expired > 0 then
      redis.call('XTRIM', events, 'MINID', int(id_seq(old[expired][1]) + 1))
    end
    if survivor then
      redis.call('HSET', meta, 'oldest_ms', int(survivor))
      return
    end
    if #old < batch then
      -- the log is empty now: the next call reads its first entry
      redis.call('HDEL', meta, 'oldest_ms')
      return
    end
    batch = 64
  end
end

-- Both caps, as the memory engine's enforce_caps: count, then age.
local function enforce_caps(events, meta, max_backlog, max_age_ms, now)
  redis.call('XTRIM', events, 'MAXLEN', '=', max_backlog)
  trim_age(events, meta, max_age_ms, now)
end

-- last, acked and oldest (the first retained sequence number, else last + 1).
-- With `confirmed_only` (MYTHOS_REDIS_WAIT_REPLICAS >= 1) `last` is the
-- newest event replicas confirmed (meta `confirmed`; absent: every event,
-- as before WAIT was turned on): what readers may see, so that no reader
-- ever sees an event a failover can take back.
local function cursor(events, meta, confirmed_only)
  local m = redis.call('HMGET', meta, 'seq', 'acked', 'confirmed')
  local last = tonumber(m[1]) or 0
  local acked = tonumber(m[2]) or 0
  if confirmed_only and m[3] then last = math.min(last, tonumber(m[3])) end
  local first = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
  local oldest = last + 1
  if first[1] then oldest = math.min(id_seq(first[1][1]), oldest) end
  return last, acked, oldest
end

-- The age cap is checked on one append in AGE_EVERY of a player (and by
-- every cursor read, cursor.lua), not on each: the check is an HGET and a
-- Lua call per member, a sixth of a room append's cost, for a cap measured
-- in days. An expired entry can then outlast the cap by up to AGE_EVERY - 1
-- appends of its player, never past a reader's cursor (which trims first).
local AGE_EVERY = 16

-- Appends one event (a flat field list) under the next sequence number and
-- enforces the caps; returns the sequence number and its text.
local function append_one(events, meta, fields, max_backlog, max_age_ms, now)
  -- '1' as text: a Lua number argument is printed with '%.17g' by Redis
  local seq = redis.call('HINCRBY', meta, 'seq', '1')
  local s = int(seq)
  redis.call('XADD', events, 'MAXLEN', '=', max_backlog, s .. '-0', unpack(fields))
  if seq % AGE_EVERY == 1 then trim_age(events, meta, max_age_ms, now) end
  return seq, s
end

-- The decimal text of 1..64 (ids are at most 64 bytes, a sequence number's
-- text at most 20), by table lookup: Lua turns a number into text with
-- sprintf('%.14g'), a floating-point print that was 8 % of a room append's
-- instructions in redis-server while every target's frame lengths went
-- through it (valgrind --tool=callgrind; docs/benchmarks.md).
local DEC = {
  '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12', '13', '14',
  '15', '16', '17', '18', '19', '20', '21', '22', '23', '24', '25', '26',
  '27', '28', '29', '30', '31', '32', '33', '34', '35', '36', '37', '38',
  '39', '40', '41', '42', '43', '44', '45', '46', '47', '48', '49', '50',
  '51', '52', '53', '54', '55', '56', '57', '58', '59', '60', '61', '62',
  '63', '64'
}

-- The decimal text of a length.
local function dec(n)
  return DEC[n] or string.format('%d', n)
end

-- A netstring-like frame: '<byte length>:<bytes>'.
local function frame(s)
  return dec(#s) .. ':' .. s
end

-- The stream fields of an event; flags holds 'r' when room_id is present and
-- 'i' when id is.
local function event_fields(flags, event_type, timestamp, data, room_id, id)
  local f = { 'event_type', event_type, 'timestamp', timestamp, 'data', data }
  if string.find(flags, 'r', 1, true) then
    f[#f + 1] = 'room_id'; f[#f + 1] = room_id
  end
  if string.find(flags, 'i', 1, true) then
    f[#f + 1] = 'id'; f[#f + 1] = id
  end
  return f
end

-- Announces appends live: `frame(n)`, then `frame(player) frame(seq)` per
-- target, then `frame(flags) frame(event_type) frame(timestamp)
-- frame(room_id) frame(id) frame(data)`, so that the nodes holding a
-- connection of a target (and only they) can hand the event on without
-- reading it back. With `channel` set (a room publish: the room's channel
-- `mythos:live:room:{<room>}`) that is ONE message carrying every target;
-- else one message per target on the player's own channel
-- `mythos:live:{<player>}` (same hash tag as the player's keys, so on a
-- cluster a shard channel of the slot this script runs on). `publish` is
-- PUBLISH on one Redis, SPUBLISH on a cluster; '' announces nothing (the
-- engine announces: after WAIT, or on a cluster, where the room's channel
-- lives on another slot). `players` and `seqs` (texts) are the targets, in
-- order; each target's two frames are one concatenation.
local function announce(publish, channel, players, seqs, flags, event_type, timestamp, data, room_id, id)
  local n = #players
  if n == 0 or publish == '' then return end
  local body = frame(flags) .. frame(event_type) .. frame(timestamp) .. frame(room_id)
    .. frame(id) .. frame(data)
  if channel ~= '' then
    local parts = { frame(int(n)) }
    for i = 1, n do
      local p, s = players[i], seqs[i]
      parts[i + 1] = dec(#p) .. ':' .. p .. dec(#s) .. ':' .. s
    end
    parts[n + 2] = body
    redis.call(publish, channel, table.concat(parts))
    return
  end
  for i = 1, n do
    local p, s = players[i], seqs[i]
    redis.call(publish, 'mythos:live:{' .. p .. '}', '1:1' .. dec(#p) .. ':' .. p .. dec(#s) .. ':' .. s .. body)
  end
end
