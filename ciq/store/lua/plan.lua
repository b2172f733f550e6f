-- Shard a commit: store its plan, hand the commit's lease to the plan, take chunk 0 for
-- the planning run, and queue the other chunks (when the broker is this Redis) in the
-- same step, so a plan never exists without its chunks on the queue. The planning run
-- must still hold the commit's lease.
-- KEYS: commit lease, report, plan, chunk 0 lease, sharded, chunks started, queue.
-- ARGV: run id, plan (JSON), commit ttl (ms), chunk ttl (ms), member, chunk count, meta
-- (JSON), the plan's lease holder, messages... -1: reported; 0: lease lost; 1: planned.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'plan', ARGV[2], 'meta', ARGV[7], 'k', ARGV[6], 'n', 0, 'a:0', 1)
redis.call('SET', KEYS[1], ARGV[8], 'PX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('SADD', KEYS[6], ARGV[5] .. ':0')
for i = 9, #ARGV do redis.call('RPUSH', KEYS[7], ARGV[i]) end
return 1
