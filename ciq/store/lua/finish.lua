-- Store the final report of a commit, once (compare-and-set), and what follows from it.
-- KEYS: report, commit hash, started, index, branch state, events, due, lease, holders,
-- sent, the repository's metrics hash (optional), the branch's live set (optional).
-- ARGV: report meta (JSON), member, status, summary fields (a flat JSON list), branch,
-- sha, event id, event (JSON), due (ms), score of a commit missing from the index (now,
-- µs), finished_at, run id ('' for a merge of chunks), what to count of the report (JSON,
-- see ciq.store.metrics.finish_args). 1: stored; 0: a report was there already; -1:
-- another run holds the commit's lease (this run's is stale: fenced out).
--
-- The summary goes into the commit's hash too, so that listing history never reads
-- whole reports. A report on a branch then moves the branch's state and makes a
-- notification event (broken, still-failing, fixed, passed) in the same atomic step, so
-- a report stored once is an event made once. A report of a commit seen before the one
-- the branch's state comes from (its index score is lower: an older commit that
-- finished late, e.g. rerun after its worker died) changes neither: it is old news, and
-- would otherwise flip the branch back. Which events are sent, and where, is decided
-- when they are delivered (the `on` setting and the targets, read then).
if ARGV[12] ~= '' then
  local holder = redis.call('GET', KEYS[8])
  if holder and holder ~= ARGV[12] then return -1 end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[3], unpack(cjson.decode(ARGV[4])))
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[10], ARGV[2])
redis.call('HDEL', KEYS[9], KEYS[8])
if KEYS[11] then
  -- Metrics (ciq.store.metrics), counted once as the report is stored once: counters,
  -- observations and the time to report (now less the claim). A histogram gets one
  -- bucket field (the first bound not passed; the reader makes them cumulative) and its
  -- sum; hosts' clocks may disagree, so a negative time counts as 0.
  local m = cjson.decode(ARGV[13])
  local function observe(name, value, bounds)
    value = math.max(0, value)
    local le = '+Inf'
    for _, b in ipairs(bounds) do
      if value <= tonumber(b) then le = b; break end
    end
    redis.call('HINCRBY', KEYS[11], 'h:' .. name .. ':' .. le, 1)
    redis.call('HINCRBYFLOAT', KEYS[11], 'h:' .. name .. ':sum', string.format('%.6f', value))
  end
  for _, c in ipairs(m.count) do redis.call('HINCRBY', KEYS[11], 'c:' .. c, 1) end
  for _, o in ipairs(m.observe) do observe(o[1], o[2], o[3]) end
  local enqueued = redis.call('HGET', KEYS[2], 'enqueued_us')
  if enqueued then
    local since = (tonumber(ARGV[10]) - tonumber(enqueued)) / 1e6
    observe('time_to_report', since, m.time_to_report)
    for _, o in ipairs(m.before_report or {}) do observe(o[1], since - o[2], o[3]) end
  end
end
if KEYS[12] then redis.call('ZREM', KEYS[12], ARGV[6]) end
-- A `cancelled` report (superseded, ciq.supersede) is no news about the branch: it
-- neither moves the branch's state nor makes a notification event.
if ARGV[5] == '' or ARGV[3] == 'cancelled' then return 1 end
local score = redis.call('ZSCORE', KEYS[4], ARGV[6]) or ARGV[10]
local raw = redis.call('HGET', KEYS[5], ARGV[5])
local prev = false
if raw then  -- a damaged state must not fail the script: the report is written already
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then prev = decoded end
end
if prev and (tonumber(prev.score) or 0) > tonumber(score) then return 1 end
redis.call('HSET', KEYS[5], ARGV[5], cjson.encode(
  {status = ARGV[3], commit = ARGV[6], score = score, finished_at = ARGV[11]}))
-- `flaky` ("passed with flakes") keeps a branch green: no "broken" event for it.
local function green(status) return status == 'passed' or status == 'flaky' end
local was_red = prev and not green(prev.status)
local kind
if green(ARGV[3]) then
  kind = was_red and 'fixed' or 'passed'
else
  kind = was_red and 'still-failing' or 'broken'
end
local previous = 'null'
if prev then
  previous = cjson.encode({status = prev.status, commit = prev.commit,
                           finished_at = prev.finished_at})
end
local meta = redis.call('HMGET', KEYS[2], 'subject', 'author')
local event = string.sub(ARGV[8], 1, -2) .. ',"kind":' .. cjson.encode(kind)
  .. ',"previous":' .. previous .. ',"subject":' .. cjson.encode(meta[1] or '')
  .. ',"author":' .. cjson.encode(meta[2] or '') .. '}'
redis.call('HSET', KEYS[6], ARGV[7], event)
redis.call('ZADD', KEYS[7], ARGV[9], ARGV[7])
return 1
