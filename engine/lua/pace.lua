-- KEYS: pace key, cooldown key.  ARGV: length of the stretch wanted (us), key
-- expiry beyond the stretch's end (ms).
-- The shared pace schedule: one cursor per group, the end of the last stretch
-- handed out.  A stretch starts at the latest of now, the cursor and a
-- published cooldown's end, so processes pacing on it never send into the same
-- slot, and none sends before a cooldown another saw is over.
-- Returns: start (us), Redis time (us), cooldown end (us, or "").
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cursor = tonumber(redis.call('GET', KEYS[1]) or '0')
local cooldown = redis.call('GET', KEYS[2]) or ''
local start = math.max(now, cursor, tonumber(cooldown) or 0)
local ends = start + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', ends), 'PX',
  math.ceil((ends - now) / 1000) + tonumber(ARGV[2]))
return {string.format('%.0f', start), string.format('%.0f', now), cooldown}
