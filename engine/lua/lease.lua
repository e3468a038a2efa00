-- KEYS: state hash, leases hash, cooldown key.
-- ARGV: client, lease_us, rejoin (1: this client saw the bucket before), ask
-- requests, ask tokens, unused requests, unused tokens (what the client still
-- holds), limits rpm, tpm, rpd, tpd (0: unknown), key ttl in ms, margin (us:
-- a new bucket starts refilling this much later, so requests that reach the
-- server sooner after their lease than the very first one did still fit),
-- the waiting request's cost in requests and tokens.
-- Returns: granted requests, granted tokens, Redis time (us), processes sharing,
-- cooldown end (us, or ""), limits rpm, tpm, rpd, tpd as stored, contended (1
-- when a bucket is left with less than was asked: capacity is scarce).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local client = ARGV[1]
local ask = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local unused = {tonumber(ARGV[6]), tonumber(ARGV[7])}
local need = {tonumber(ARGV[14]), tonumber(ARGV[15])}
local others = {0, 0}
local clients = 1
local records = redis.call('HGETALL', KEYS[2])
for i = 1, #records, 2 do
  if records[i] ~= client then
    local expires, r, tk = string.match(records[i + 1], '^(%S+) (%S+) (%S+)$')
    if tonumber(expires) <= now then
      redis.call('HDEL', KEYS[2], records[i])
    else
      clients = clients + 1
      others[1] = others[1] + tonumber(r)
      others[2] = others[2] + tonumber(tk)
    end
  end
end
local raw = redis.call('HGETALL', KEYS[1])
local fresh = #raw == 0
local s = {}
for i = 1, #raw, 2 do s[raw[i]] = raw[i + 1] end
local last = tonumber(s['ts'] or now)
local elapsed = now - last
local names = {'rpm', 'tpm', 'rpd', 'tpd'}
local windows = {60000000, 60000000, 86400000000, 86400000000}
local kinds = {1, 2, 1, 2}
local grant = {ask[1], ask[2]}
local levels = {}
local limits = {}
for i = 1, 4 do
  local limit = tonumber(ARGV[7 + i])
  if limit <= 0 then limit = tonumber(s['lim:' .. names[i]] or '0') end
  limits[i] = limit
  if limit > 0 then
    local k = kinds[i]
    local level = tonumber(s['lvl:' .. names[i]] or '')
    if level == nil then
      if fresh and ARGV[3] == '1' then level = 0 else level = limit end
      if fresh then last = now + tonumber(ARGV[13]) end
    elseif elapsed > 0 then
      local cap = limit - others[k] - unused[k]
      if level < cap then level = math.min(cap, level + elapsed * limit / windows[i]) end
    end
    levels[i] = level
    -- never below what the waiting request needs, or a large one could starve
    local share = math.max(limit / clients, need[k]) - unused[k]
    grant[k] = math.max(0, math.floor(math.min(grant[k], level, share)))
  end
end
local fields = {'ts', string.format('%.0f', math.max(now, last))}
for i = 1, 4 do
  if limits[i] > 0 then
    table.insert(fields, 'lvl:' .. names[i])
    table.insert(fields, string.format('%.17g', levels[i] - grant[kinds[i]]))
    table.insert(fields, 'lim:' .. names[i])
    table.insert(fields, string.format('%.17g', limits[i]))
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[12])
redis.call('HSET', KEYS[2], client, string.format('%.0f %.17g %.17g',
  now + tonumber(ARGV[2]), unused[1] + grant[1], unused[2] + grant[2]))
redis.call('PEXPIRE', KEYS[2], ARGV[12])
local cooldown = redis.call('GET', KEYS[3]) or ''
-- contended: some bucket is left with less than was asked of it
local contended = 0
for i = 1, 4 do
  if limits[i] > 0 and levels[i] - grant[kinds[i]] < ask[kinds[i]] then contended = 1 end
end
return {grant[1], grant[2], string.format('%.0f', now), clients, cooldown,
  string.format('%.17g', limits[1]), string.format('%.17g', limits[2]),
  string.format('%.17g', limits[3]), string.format('%.17g', limits[4]), contended}
