-- Free a lease whose holder's Redis connection is gone (its process died: the kernel
-- closed its sockets), if the holders hash still says what the caller saw, and count
-- the death where the entry says (poison commits are given up after a few).
-- KEYS: lease, holders, counter hash. ARGV: the holders entry seen, its run id, the
-- counter's field. 1: freed.
if redis.call('HGET', KEYS[2], KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], KEYS[1])
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
