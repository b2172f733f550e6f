-- Delete a lease (KEYS[1]), only while run ARGV[1] holds it, with its entry in the
-- holders hash (KEYS[2], optional). With KEYS[3] and ARGV[2], the holder is known to
-- have died (its process is gone): the death is counted in that hash's field.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if KEYS[2] then redis.call('HDEL', KEYS[2], KEYS[1]) end
if KEYS[3] then redis.call('HINCRBY', KEYS[3], ARGV[2], 1) end
return redis.call('DEL', KEYS[1])
