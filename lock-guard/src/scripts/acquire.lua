-- Take the lock if it is free, and issue a fencing token (S9, S11).
-- KEYS[1] lock key, KEYS[2] fencing counter key
-- ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] lifetime of a new fencing counter in ms,
-- ARGV[4] 'w' when more waiters of this process queue behind the caller, else '-'
-- ARGV[5] (optional) 'r' when this request is sent again after a dead connection (the first one
--         may have gone through)
-- Returns {1, fencing token} when taken, {0, remaining lease of the holder in ms} when held.
--
-- The lock's value is the owner's token, followed by '+' once somebody waits for it: only then
-- does the release publish a message (an uncontended release stays two commands).
local value = ARGV[1]
if ARGV[4] == 'w' then
  value = value .. '+'
end
if redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  if token == 1 then
    -- No counter: a new key, an expired counter, or a restart that lost it. Start from the
    -- server's clock in microseconds, which is past every token issued before (tokens are issued
    -- at most one per acquisition, far less than one per microsecond). The counter lives for a
    -- fixed time from here, which bounds memory; INCR keeps that expiry.
    local now = redis.call('TIME')
    token = tonumber(now[1]) * 1000000 + tonumber(now[2])
    redis.call('SET', KEYS[2], string.format('%.0f', token), 'PX', ARGV[3])
  end
  return {1, token}
end
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  if ARGV[5] == 'r' then
    -- Ours already: the first request went through. Its token is the counter's value.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(redis.call('GET', KEYS[2]))}
  end
end
if held and string.sub(held, -1) ~= '+' then
  -- Mark the lock as awaited (APPEND keeps the expiry), so its release wakes the waiters.
  redis.call('APPEND', KEYS[1], '+')
end
return {0, redis.call('PTTL', KEYS[1])}
