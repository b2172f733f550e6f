-- A delivered notification event goes. KEYS: due, inflight, events, progress. ARGV: id.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return redis.call('HDEL', KEYS[3], ARGV[1])
