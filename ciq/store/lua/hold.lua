-- Say who holds a lease the caller took in another step (chunk 0, taken with the
-- plan), for the watcher (see lua/acquire.lua): only while run ARGV[1] holds it.
-- KEYS: lease, holders. ARGV: run id, holders entry.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], KEYS[1], ARGV[2])
return 1
