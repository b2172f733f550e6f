-- Store the result of one chunk, once.
-- KEYS: plan, chunk lease, chunks started, holders. ARGV: i, result (JSON), member:i, run id.
-- 0: dropped (the plan is gone, the chunk has a result, or another run holds its
-- lease); 1: stored; 2: stored, and it
-- was the last one missing.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
-- Fenced: a run whose chunk lease another run holds now is stale (Redis stalled
-- longer than the lease); its result is refused, the current holder's will come.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 0 end
if redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[4], KEYS[2])
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n >= tonumber(redis.call('HGET', KEYS[1], 'k')) then return 2 end
return 1
