-- Take the lease of a commit for a run.
-- KEYS: lease, report, commit hash, started, holders, sent, the repository's metrics
-- hash, the branch's live set (ciq:none: none). ARGV: run id, ttl (ms), member, worker,
-- started_at, the name of the holder's Redis connection ('' for none), now (µs), the
-- queue wait's bucket bounds (JSON), prefix of the commit hashes, of the leases.
-- The holders entry says where a death of the holder is counted: the commit's hash.
-- -1: the report exists; 0: another run holds the lease; -2: the commit is superseded
-- (this run holds the lease, to store its `cancelled` report; nothing counted, and it
-- stays in the sent set until that report is stored); -3: move it to the backfill (no
-- lease kept; it stays in the sent set, the caller sends it); else the attempts.
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREM', KEYS[6], ARGV[3]); return -1
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
-- ciq.supersede: a superseded commit is reported at once; under `deprioritise`, one that
-- a newer commit of its branch waits behind (claimed, never started, no lease) goes to
-- the backfill, once: taken from there, it runs.
local flags = redis.call('HMGET', KEYS[3], 'superseded_by', 'supersede', 'backfill', 'commit')
if flags[1] then
  redis.call('HSET', KEYS[3], 'run_id', ARGV[1], 'worker', ARGV[4])
  return -2
end
if flags[2] == 'deprioritise' and not flags[3] and KEYS[8] ~= 'ciq:none' then
  local mine = redis.call('ZSCORE', KEYS[8], flags[4] or '')
  local newer = mine and redis.call('ZRANGEBYSCORE', KEYS[8], '(' .. mine, '+inf',
                                    'LIMIT', 0, 100) or {}
  for _, sha in ipairs(newer) do
    if redis.call('HEXISTS', ARGV[9] .. sha, 'started_at') == 0
        and redis.call('EXISTS', ARGV[10] .. sha) == 0 then
      redis.call('HSET', KEYS[3], 'backfill', '1')
      redis.call('DEL', KEYS[1])
      return -3
    end
  end
end
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[5], KEYS[1], ARGV[1] .. ' ' .. ARGV[6] .. ' ' .. KEYS[3] .. ' deaths') end
redis.call('HSET', KEYS[3], 'run_id', ARGV[1], 'worker', ARGV[4], 'started_at', ARGV[5])
local n = redis.call('HINCRBY', KEYS[3], 'attempts', 1)
if not KEYS[7] then return n end
-- Metrics (ciq.store.metrics): why this run starts, and a first run's queue wait. A
-- death is counted (dead.lua, release.lua) before its lease is free, so a rerun that
-- sees more deaths than the run before it saw follows a lost worker.
local reason = 'first'
if n > 1 then
  local deaths = redis.call('HGET', KEYS[3], 'deaths') or '0'
  local seen = redis.call('HGET', KEYS[3], 'deaths_seen') or '0'
  reason = deaths ~= seen and 'worker_lost' or 'lease_lapsed'
  redis.call('HSET', KEYS[3], 'deaths_seen', deaths)
end
redis.call('HINCRBY', KEYS[7], 'c:attempt:' .. reason, 1)
local enqueued = redis.call('HGET', KEYS[3], 'enqueued_us')
if n == 1 and enqueued then
  -- One bucket field (the first bound not passed; the reader makes them cumulative)
  -- and the sum. Hosts' clocks may disagree: a negative wait counts as 0.
  local wait = math.max(0, (tonumber(ARGV[7]) - tonumber(enqueued)) / 1e6)
  local le = '+Inf'
  for _, b in ipairs(cjson.decode(ARGV[8])) do
    if wait <= tonumber(b) then le = b; break end
  end
  redis.call('HINCRBY', KEYS[7], 'h:queue_wait:' .. le, 1)
  redis.call('HINCRBYFLOAT', KEYS[7], 'h:queue_wait:sum', string.format('%.6f', wait))
end
return n
