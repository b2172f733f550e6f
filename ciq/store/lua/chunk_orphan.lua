-- Whether a started chunk lost its run (no result, no live lease): it then leaves the
-- started set and must be sent again; a chunk with nothing left to do leaves it too.
-- KEYS: report, plan, chunk lease, chunks started. ARGV: member:i, i. 1: an orphan.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 0
   or redis.call('HEXISTS', KEYS[2], 'r:' .. ARGV[2]) == 1 then
  redis.call('SREM', KEYS[4], ARGV[1]); return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SREM', KEYS[4], ARGV[1])
return 1
