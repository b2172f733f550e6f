-- Keep the durations of a report's tests for the next plan.
-- KEYS: durations. ARGV: how many tests there are now, then test id, seconds... A hash
-- much larger than the tests of the report has tests that are gone: it starts afresh.
-- Written 1,000 tests at a time: unpack() of a whole large suite would overflow Lua's
-- stack (about 8,000 values), and the durations of such suites are the ones that matter.
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
local n = #ARGV
for i = 2, n, 2000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 1999, n)))
end
return (n - 1) / 2
