-- Renew a lease (KEYS[1]) for ARGV[2] ms while run ARGV[1] holds it. With ARGV[3] = '1'
-- a lease that expired meanwhile (Redis stalled or restarted longer than its lifetime)
-- is taken back when no other run took it: the run goes on, and a run that finds the
-- lease in other hands (0) stops at once. That one step keeps two runs from ever going
-- on together, whatever Redis did in between.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
