-- Take a rerun request (KEYS[1], a hash) for ARGV[1] (a worker's name and rerun id)
-- while the run that asked (its field 'run') still holds its lease (KEYS[2]: the
-- commit's, or its chunk's).
-- A request another taker holds is taken over only when it has no result and its
-- taker's last beat is older than ARGV[2] ms (0: never). Returns 1 when taken, 0 when
-- another holds it, -1 when there is nothing to take (no request, or its run is gone).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('GET', KEYS[2]) ~= redis.call('HGET', KEYS[1], 'run') then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taker = redis.call('HGET', KEYS[1], 'taker')
if taker and taker ~= ARGV[1] then
  if redis.call('HEXISTS', KEYS[1], 'result') == 1 or ARGV[2] == '0' then return 0 end
  local beat = tonumber(redis.call('HGET', KEYS[1], 'beat') or '0')
  if now - beat < tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'taker', ARGV[1], 'beat', now)
return 1
