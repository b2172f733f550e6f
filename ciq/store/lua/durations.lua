-- Keep the durations of a report's tests for the next plan.
-- KEYS: durations. ARGV: how many tests there are now, then test id, seconds... A hash
-- much larger than the tests of the report has tests that are gone: it starts afresh.
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
return redis.call('HSET', KEYS[1], unpack(ARGV, 2))
