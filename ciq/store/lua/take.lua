-- Take the lease of one chunk of a sharded commit, and extend the plan's hold on the
-- commit (so that the commit is not queued again while its chunks still start).
-- KEYS: chunk lease, report, plan, chunks started, commit lease, holders.
-- ARGV: run id, ttl (ms), member:i, i, commit ttl (ms), prefix of the plan's holder, the
-- name of the holder's Redis connection ('' for none; see lua/acquire.lua).
-- -1: nothing to do (reported, plan gone, chunk done); 0: a live run holds the chunk;
-- else the attempt number.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[3], 'r:' .. ARGV[4]) == 1 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[4], ARGV[3])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[6], KEYS[1], ARGV[1] .. ' ' .. ARGV[7] .. ' ' .. KEYS[3] .. ' d:' .. ARGV[4])
end
local lease = redis.call('GET', KEYS[5])
if lease and string.sub(lease, 1, #ARGV[6]) == ARGV[6] then
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
return redis.call('HINCRBY', KEYS[3], 'a:' .. ARGV[4], 1)
