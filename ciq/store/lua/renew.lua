-- Renew a lease (KEYS[1]) for ARGV[2] ms while run ARGV[1] holds it. With ARGV[3] = '1'
-- a lease that expired meanwhile (Redis stalled or restarted longer than its lifetime)
-- is taken back when no other run took it: the run goes on, and a run that finds the
-- lease in other hands (0) stops at once. That one step keeps two runs from ever going
-- on together, whatever Redis did in between. KEYS[2] (optional): the commit's hash,
-- which names the run that took the lease last; a run it does not name (another run
-- took the commit while this one was away, and may even have reported it) never takes
-- the lease back. 2 (renewed): a newer commit of its branch superseded this one
-- (``superseded_by`` in the commit's hash, set by claim.lua): the run stops and reports
-- `cancelled` (ciq.supersede); being data in Redis, the mark outlives any restart.
local function renewed()
  if KEYS[2] and redis.call('HEXISTS', KEYS[2], 'superseded_by') == 1 then return 2 end
  return 1
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then return 0 end
  return renewed()
end
if holder or ARGV[3] ~= '1' then return 0 end
if KEYS[2] and redis.call('HGET', KEYS[2], 'run_id') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return renewed()
