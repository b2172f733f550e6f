-- The branches of a repository as seen in its newest `walk` commits, newest branch
-- first: {branch, commits, head sha, head leased (0/1), head flat hash, sha of the
-- newest finished commit or ''}. One pass over hashes, no report bodies.
-- KEYS: index. ARGV: commit hash prefix, lease prefix, walk.
local commits, leases = ARGV[1], ARGV[2]
local shas = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local order, heads, counts, finished = {}, {}, {}, {}
for _, sha in ipairs(shas) do
  local f = redis.call('HMGET', commits .. sha, 'branch', 'status')
  local b = f[1] or ''
  if not heads[b] then heads[b] = sha; counts[b] = 0; order[#order + 1] = b end
  counts[b] = counts[b] + 1
  if f[2] and f[2] ~= '' and not finished[b] then finished[b] = sha end
end
local out = {}
for i, b in ipairs(order) do
  local sha = heads[b]
  out[i] = {b, counts[b], sha, redis.call('EXISTS', leases .. sha),
            redis.call('HGETALL', commits .. sha), finished[b] or ''}
end
return out
