-- KEYS: cooldown key, state hash.  ARGV: cooldown length (us), the channel
-- that announces cooldowns, the publishing client's id.
-- Publishes a cooldown (only ever extended) and drains the buckets until it
-- ends: the server just said its own bucket is empty.  A longer cooldown is
-- also announced on the channel ("<cooldown key> <end us> <Redis now us>
-- <client id>"), so processes sending on claimed stretches of the pace
-- schedule hear of it at once, not at their next claim.  Returns the end (us).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ends = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if ends > current then
  redis.call('SET', KEYS[1], string.format('%.0f', ends), 'PX',
    math.ceil(tonumber(ARGV[1]) / 1000) + 1)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    for _, name in ipairs({'rpm', 'tpm', 'rpd', 'tpd'}) do
      local level = redis.call('HGET', KEYS[2], 'lvl:' .. name)
      if level and tonumber(level) > 0 then
        redis.call('HSET', KEYS[2], 'lvl:' .. name, '0')
      end
    end
    local last = tonumber(redis.call('HGET', KEYS[2], 'ts') or '0')
    redis.call('HSET', KEYS[2], 'ts', string.format('%.0f', math.max(last, ends)))
  end
  redis.call('PUBLISH', ARGV[2], KEYS[1] .. ' ' .. string.format('%.0f', ends) .. ' ' ..
    string.format('%.0f', now) .. ' ' .. ARGV[3])
  return string.format('%.0f', ends)
end
return string.format('%.0f', current)
