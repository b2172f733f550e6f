-- Claim a commit: record it as seen, once, with its metadata and its place in history.
-- KEYS: commit hash, index, unsent, repos, broker queue (or ciq:none), sent, the
-- repository's metrics hash, the branch's live set (ciq:none: no branch).
-- ARGV: flat fields (JSON), now (µs), sha, member, rid, repo, message ('' for none),
-- the branch's supersede policy (ciq.supersede), prefix of the commit hashes, the
-- claim's time (ISO 8601).
-- With a message (the broker is this same Redis) the claim and the broker message are
-- one atomic step; without, the commit waits in the unsent set until the caller has
-- sent it. Index scores only grow, so commits claimed in the same microsecond keep
-- their order (an observer claims a push's commits in a loop). 1: claimed; 0: before.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[1])))
local score = tonumber(ARGV[2])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
redis.call('ZADD', KEYS[2], string.format('%d', score), ARGV[3])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[7])
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[4])
  redis.call('HSET', KEYS[1], 'queue', KEYS[5])
else
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
end
-- Superseded commits (ciq.supersede): under `cancel`, every older commit of the branch
-- without a report (queued or running) is marked in this same step, so no worker can
-- start one after this claim without seeing the mark; a later claim marks them again,
-- so the reason names the newest commit. The live set is what finish.lua leaves.
if KEYS[8] ~= 'ciq:none' then
  local at = string.format('%d', score)
  if ARGV[8] == 'cancel' then
    for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', '(' .. at)) do
      redis.call('HSET', ARGV[9] .. old, 'superseded_by', ARGV[3], 'superseded_at', ARGV[10])
    end
  end
  redis.call('ZADD', KEYS[8], at, ARGV[3])
  redis.call('HSET', KEYS[1], 'supersede', ARGV[8])
end
-- Metrics (ciq.store.metrics): commits enqueued, counted in the step that claims them.
if KEYS[7] then redis.call('HINCRBY', KEYS[7], 'c:enqueued', 1) end
return 1
