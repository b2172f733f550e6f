-- A taker's heartbeat on probe ARGV[1] of a culprit search (KEYS[1]), whose lease is
-- KEYS[2]: only while ARGV[2] holds the lease and the search still waits for the probe;
-- otherwise 0 and the taker stops. Extends the lease to ARGV[3] ms; with ARGV[4], writes
-- the probe's result (JSON) once and lets the lease go.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'p:' .. ARGV[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
if ARGV[4] then
  redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[4])
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
