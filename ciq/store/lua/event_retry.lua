-- A notification event that a target did not take: due again later, or given up on.
-- KEYS: due, inflight, events, progress, dead. ARGV: id, progress (JSON), due (ms),
-- give up (1/0), dead entry (JSON), dead cap. 0: the event is gone (another worker,
-- after our claim expired, delivered it); 1: rescheduled; 2: given up on.
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('LPUSH', KEYS[5], ARGV[5])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[6]) - 1)
  return 2
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
