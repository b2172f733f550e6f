-- Free a lease whose holder's Redis connection is gone (its process died: the kernel
-- closed its sockets), if the holders hash still says what the caller saw.
-- KEYS: lease, holders. ARGV: the holders entry seen, its run id. 1: freed.
if redis.call('HGET', KEYS[2], KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], KEYS[1])
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
