-- After a sharded commit's report is stored: the plan, its leases and its place in the
-- sharded set go. KEYS: plan, commit lease, sharded, chunk leases...
-- ARGV: member, prefix of the plan's holder.
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 1, #ARGV[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
