-- Delete long-expired quarantine entries, each only if it is still the one that was read
-- (an operator may have renewed it meanwhile).
-- KEYS: the repository's quarantine hash. ARGV: test id, entry (JSON) as read, ...
local gone = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    gone = gone + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return gone
