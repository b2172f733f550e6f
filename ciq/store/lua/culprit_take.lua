-- Take probe ARGV[1] of a culprit search (KEYS[1], a hash) for ARGV[2] (a worker's name
-- and run id): its lease (KEYS[2]) for ARGV[3] ms. Only while the search still waits
-- for the probe (field 'p:<id>', no 'r:<id>'); a lease held by another taker is theirs
-- until it lapses. Returns 1 when taken, 0 when another holds it, -1 when there is
-- nothing to take (the probe is done, or the search dropped it).
if redis.call('HEXISTS', KEYS[1], 'p:' .. ARGV[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[1]) == 1 then return -1 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 't:' .. ARGV[1], ARGV[2])
return 1
