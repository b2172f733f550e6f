-- Take the lease of a commit for a run.
-- KEYS: lease, report, commit hash, started, holders, sent. ARGV: run id, ttl (ms),
-- member, worker, started_at, the name of the holder's Redis connection ('' for none).
-- The holders entry says where a death of the holder is counted: the commit's hash.
-- -1: the report exists; 0: another run holds the lease; else the attempts.
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREM', KEYS[6], ARGV[3]); return -1
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[5], KEYS[1], ARGV[1] .. ' ' .. ARGV[6] .. ' ' .. KEYS[3] .. ' deaths') end
redis.call('HSET', KEYS[3], 'run_id', ARGV[1], 'worker', ARGV[4], 'started_at', ARGV[5])
return redis.call('HINCRBY', KEYS[3], 'attempts', 1)
