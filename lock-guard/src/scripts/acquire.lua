-- Take the lock if it is free (or handed over to us), and issue a fencing token.
-- KEYS[1] lock key, KEYS[2] fencing counter key, KEYS[3] queue of waiting processes
-- ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] lifetime of the fencing counter in ms,
-- ARGV[4] 'w' when more waiters of this process queue behind the caller, else '-'
-- ARGV[5] '-' not to register the caller in the queue when the lock is held; anything else to
--         register it (the value is not used: the queue is ordered by arrival at the server)
-- ARGV[6] 'q' when the caller may already be in the queue (take it out once it has the lock)
-- ARGV[7] the least fencing token the caller wants, or '-' (Redlock: one value every node of a
--         majority can agree on, so no write-back is needed)
-- ARGV[8] (optional) 'r' when this request is sent again after a dead connection (the first one
--         may have gone through)
-- Returns {1, fencing token} when taken, {0, remaining lease of the holder in ms} when held.
--
-- The lock's value is the owner's token, followed by '+' once somebody waits for it: only then
-- does the release announce itself (an uncontended acquire + release stays five commands). Waiting
-- processes register in the queue, oldest first; a release hands the lock to the oldest as
-- `claim:<its token>` for a short time, so processes take turns instead of racing.

local function fence()
  -- Above every token issued before, even when the counter is missing (a new key, an expired
  -- counter, a restart that lost it) or stale (a restart from an older snapshot, a replica that
  -- lagged was promoted): the server's clock in microseconds has moved past every token handed out
  -- before (tokens are issued at most one per acquisition, far less than one per microsecond), and
  -- the counter covers a clock that stepped back while it lives. SET … GET stores and reads it in one
  -- command; the counter lives for a fixed time after the last acquisition, which bounds memory.
  local now = redis.call('TIME')
  local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if ARGV[7] ~= '-' and tonumber(ARGV[7]) > token then
    token = tonumber(ARGV[7])
  end
  local last = tonumber(redis.call('SET', KEYS[2], string.format('%.0f', token), 'PX', ARGV[3], 'GET'))
  if last and last >= token then
    token = last + 1
    redis.call('SET', KEYS[2], string.format('%.0f', token), 'PX', ARGV[3])
  end
  return token
end

local mark = ''
if ARGV[4] == 'w' then
  mark = '+'
end
if redis.call('SET', KEYS[1], ARGV[1] .. mark, 'NX', 'PX', ARGV[2]) then
  if ARGV[6] == 'q' then
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
  return {1, fence()}
end
local held = redis.call('GET', KEYS[1])
if held == 'claim:' .. ARGV[1] then
  -- Handed over to us by the last release, which took us out of the queue. Hand-overs happen
  -- under contention: mark it awaited, so its release looks at the queue.
  redis.call('SET', KEYS[1], ARGV[1] .. '+', 'PX', ARGV[2])
  return {1, fence()}
end
if ARGV[8] == 'r' and (held == ARGV[1] or held == ARGV[1] .. '+') then
  -- Ours already: the first request went through. Its token is the counter's value.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
if held and string.sub(held, -1) ~= '+' and string.sub(held, 1, 6) ~= 'claim:' then
  -- Mark the lock as awaited (APPEND keeps the expiry), so its release wakes the waiters.
  redis.call('APPEND', KEYS[1], '+')
end
if ARGV[5] ~= '-' then
  -- In order of arrival at this server, whatever the callers' clocks say: one past the newest
  -- registration (NX: a caller already registered keeps its place).
  local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2]
  if redis.call('ZADD', KEYS[3], 'NX', (tonumber(newest) or 0) + 1, ARGV[1]) == 1 then
    -- The queue outlives its last registration by a minute (entries of waiters that died go with
    -- it).
    redis.call('PEXPIRE', KEYS[3], 60000)
  end
end
return {0, redis.call('PTTL', KEYS[1])}
