-- The newest finished commits (those with a report) among the newest `walk`, newest
-- first. KEYS: index. ARGV: commit hash prefix, how many, walk, branch ('' for any).
local commits, n, walk, branch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local shas = redis.call('ZREVRANGE', KEYS[1], 0, walk - 1)
local out = {}
for _, sha in ipairs(shas) do
  if #out >= n then break end
  local f = redis.call('HMGET', commits .. sha, 'branch', 'status')
  if f[2] and f[2] ~= '' and (branch == '' or f[1] == branch) then out[#out + 1] = sha end
end
return out
