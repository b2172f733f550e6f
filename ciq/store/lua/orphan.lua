-- A started commit whose run is gone (no report, no live lease) moves from the started
-- set to the unsent set, due at once, in one step: whoever then sends it, a crash in
-- between loses nothing.
-- KEYS: report, lease, started, unsent, commit hash (optional). ARGV: member, now (µs).
-- The commit hash keeps when it went back (requeued_us): it waits from then on (metrics).
-- 1: it was an orphan.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SREM', KEYS[3], ARGV[1]); return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
if KEYS[5] then redis.call('HSET', KEYS[5], 'requeued_us', ARGV[2]) end
return 1
