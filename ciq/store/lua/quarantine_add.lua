-- Quarantine a test of a repository, or renew its entry; at most `max` entries.
-- KEYS: the repository's quarantine hash. ARGV: test id, entry (JSON), max.
-- Returns 1 (new), 2 (an entry was there: replaced) or 0 (full: nothing written).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 2
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
