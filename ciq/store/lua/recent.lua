-- The newest commits of one repository, for listings: {sha, lease held (0/1), flat
-- commit hash} each, newest first. No report bodies are read.
-- KEYS: index. ARGV: commit hash prefix, lease prefix, how many, how many to skip, a
-- branch ('' for every branch), how many of the newest commits a branch filter looks
-- through (so that one call never keeps Redis busy for long).
local commits, leases = ARGV[1], ARGV[2]
local limit, offset = tonumber(ARGV[3]), tonumber(ARGV[4])
local branch, walk = ARGV[5], tonumber(ARGV[6])
if limit <= 0 then return {} end
local shas = {}
if branch == '' then
  shas = redis.call('ZREVRANGE', KEYS[1], offset, offset + limit - 1)
else
  local seen, start = 0, 0
  while #shas < limit and start < walk do
    local chunk = redis.call('ZREVRANGE', KEYS[1], start, math.min(start + 499, walk - 1))
    if #chunk == 0 then break end
    for _, sha in ipairs(chunk) do
      if #shas >= limit then break end
      if redis.call('HGET', commits .. sha, 'branch') == branch then
        if seen >= offset then shas[#shas + 1] = sha end
        seen = seen + 1
      end
    end
    start = start + 500
  end
end
local out = {}
for i, sha in ipairs(shas) do
  out[i] = {sha, redis.call('EXISTS', leases .. sha), redis.call('HGETALL', commits .. sha)}
end
return out
