-- Claim one notification event for delivery: the oldest whose claim expired (its worker
-- died), else the first due one; it moves to the in-flight set, scored by a deadline.
-- KEYS: due, inflight, events, progress. ARGV: now (ms), deadline (ms).
-- {id, event, progress ('' for none)}, or nothing.
local id = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1)[1]
if not id then id = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)[1] end
if not id then return nil end
redis.call('ZREM', KEYS[1], id)
local event = redis.call('HGET', KEYS[3], id)
if not event then redis.call('ZREM', KEYS[2], id); return nil end
redis.call('ZADD', KEYS[2], ARGV[2], id)
return {id, event, redis.call('HGET', KEYS[4], id) or ''}
