-- Keep a commit's first failure once, and queue its `first-failure` notification event.
-- KEYS: commit hash, commit lease, report, events, due, plan.
-- ARGV: the failure (JSON), run id, event id, event (JSON, completed here with branch,
-- subject, author, worker), due (ms), prefix of the chunk leases, prefix of a plan's
-- lease holder. -1: a stale run (reported, or another run holds the commit): nothing
-- stored; 0: the commit has its first failure already; 1: stored, with its event if the
-- commit is on a branch (as for reports, no branch means no event).
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local holder = redis.call('GET', KEYS[2])
local ours = holder == ARGV[2]
if not holder then
  -- The lease lapsed (Redis stalled): ours if no other run took the commit since.
  ours = redis.call('HGET', KEYS[1], 'run_id') == ARGV[2]
elseif not ours and string.sub(holder, 1, #ARGV[7]) == ARGV[7] then
  -- A sharded commit: the run holds one of its chunks.
  local k = tonumber(redis.call('HGET', KEYS[6], 'k')) or 0
  for i = 0, k - 1 do
    if redis.call('GET', ARGV[6] .. i) == ARGV[2] then ours = true; break end
  end
end
if not ours then return -1 end
if redis.call('HSETNX', KEYS[1], 'first_failure', ARGV[1]) == 0 then return 0 end
local meta = redis.call('HMGET', KEYS[1], 'branch', 'subject', 'author', 'worker')
if not meta[1] or meta[1] == '' then return 1 end
local event = string.sub(ARGV[4], 1, -2) .. ',"branch":' .. cjson.encode(meta[1])
  .. ',"subject":' .. cjson.encode(meta[2] or '') .. ',"author":'
  .. cjson.encode(meta[3] or '') .. ',"worker":' .. cjson.encode(meta[4] or '') .. '}'
redis.call('HSET', KEYS[4], ARGV[3], event)
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[3])
return 1
