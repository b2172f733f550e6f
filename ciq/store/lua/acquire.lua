-- Take the lease of a commit for a run.
-- KEYS: lease, report, commit hash, started. ARGV: run id, ttl (ms), member, worker,
-- started_at. -1: the report exists; 0: another run holds the lease; else the attempts.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[3], 'run_id', ARGV[1], 'worker', ARGV[4], 'started_at', ARGV[5])
return redis.call('HINCRBY', KEYS[3], 'attempts', 1)
