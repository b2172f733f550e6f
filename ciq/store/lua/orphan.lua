-- A started commit whose run is gone (no report, no live lease) moves from the started
-- set to the unsent set, due at once, in one step: whoever then sends it, a crash in
-- between loses nothing.
-- KEYS: report, lease, started, unsent. ARGV: member. 1: it was an orphan.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SREM', KEYS[3], ARGV[1]); return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
return 1
