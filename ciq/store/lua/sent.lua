-- A commit's message went to the broker's queue KEYS[4]: it leaves the unsent set for
-- the sent set (where the reconciler finds one that no run ever took), in one step.
-- KEYS: unsent, sent, commit hash, queue. ARGV: member, now (µs).
-- 1: it was unsent (so two reconcilers never both send it); 0: it was not.
local was = redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return was end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], 'queue', KEYS[4])
return was
