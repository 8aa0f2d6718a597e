-- The multi-device rule, applied in Redis to the user's connections on every node: the fields
-- it removes are returned, so their nodes can be told to close them. Atomic per user, so of two
-- logins racing on two nodes the later in Redis's order wins.
local displaced = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local tab = string.find(value, '\t', 1, true)
  if tab then
    local device, platform = string.sub(value, 1, tab - 1), string.sub(value, tab + 1)
    local out = ARGV[4] == 'one' or device == ARGV[2]
      or (ARGV[4] == 'one_per_platform' and platform == ARGV[3])
    if out and field ~= ARGV[1] then
      displaced[#displaced + 1] = field
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\t' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return displaced
