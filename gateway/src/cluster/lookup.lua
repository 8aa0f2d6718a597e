-- The registry hashes of the users named in ARGV, in their order (see registry.rs).
local out = {}
for i, key in ipairs(ARGV) do out[i] = redis.call('HGETALL', key) end
return out
