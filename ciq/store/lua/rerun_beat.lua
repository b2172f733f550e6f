-- A taker's heartbeat on a rerun request (KEYS[1]): only while ARGV[1] holds it and the
-- run that asked still holds its lease (KEYS[2]); otherwise 0 and the taker
-- stops (its reruns would be evidence for nobody). With ARGV[2], the result (JSON) is
-- written as well, once.
if redis.call('HGET', KEYS[1], 'taker') ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) ~= redis.call('HGET', KEYS[1], 'run') then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'beat', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if ARGV[2] then redis.call('HSETNX', KEYS[1], 'result', ARGV[2]) end
return 1
