-- How many commits wait for a run (claimed or sent, no lease taken yet), and since when
-- the longest-waiting one has (µs; -1: none): since the later of its claim (enqueued_us)
-- and its last return to the queue (requeued_us, set when its run was lost), else its
-- score (a commit claimed before ciq kept those). Sent scores alone would not do: the
-- reconciler moves a sent commit's score up each time it sees it still queued. Members
-- the reconciler has not cleared yet (reported, pruned, or running: a live lease) do not
-- wait; members past the first ARGV[3] of a set are counted as they are, unread.
-- KEYS: sent, unsent. ARGV: prefix of the commit hashes, of the leases, members to read.
local count, oldest = 0, -1
for i = 1, 2 do
  local found = redis.call('ZRANGE', KEYS[i], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
  count = count + redis.call('ZCARD', KEYS[i]) - #found / 2
  for j = 1, #found, 2 do
    local t = redis.call('HMGET', ARGV[1] .. found[j], 'repo', 'status', 'enqueued_us',
                         'requeued_us')
    if t[1] and not t[2] and redis.call('EXISTS', ARGV[2] .. found[j]) == 0 then
      count = count + 1
      local since = math.max(tonumber(t[3]) or 0, tonumber(t[4]) or 0)
      if since == 0 then since = tonumber(found[j + 1]) end
      if since > 0 and (oldest < 0 or since < oldest) then oldest = since end
    end
  end
end
return {count, string.format('%d', oldest)}
