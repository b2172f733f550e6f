-- Store the result of one chunk, once.
-- KEYS: plan, chunk lease, chunks started. ARGV: i, result (JSON), member:i, run id.
-- 0: dropped (the plan is gone or the chunk has a result); 1: stored; 2: stored, and it
-- was the last one missing.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n >= tonumber(redis.call('HGET', KEYS[1], 'k')) then return 2 end
return 1
