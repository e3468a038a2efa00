-- KEYS: state hash, leases hash.  ARGV: client, unused requests, unused tokens.
-- Hands unused capacity back and removes the client's lease record.
redis.call('HDEL', KEYS[2], ARGV[1])
local give = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local names = {'rpm', 'tpm', 'rpd', 'tpd'}
local kinds = {1, 2, 1, 2}
for i = 1, 4 do
  local level = redis.call('HGET', KEYS[1], 'lvl:' .. names[i])
  local limit = redis.call('HGET', KEYS[1], 'lim:' .. names[i])
  if level and limit and give[kinds[i]] > 0 then
    local refilled = math.min(tonumber(limit), tonumber(level) + give[kinds[i]])
    redis.call('HSET', KEYS[1], 'lvl:' .. names[i], string.format('%.17g', refilled))
  end
end
return 1
