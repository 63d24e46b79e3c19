-- Take the lock if it is free, and issue a fencing token (S9, S11).
-- KEYS[1] lock key, KEYS[2] fencing counter key
-- ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] retention of the fencing counter in ms,
-- ARGV[4] (optional) "retry": this request is sent again after a dead connection, and the first
--         one may have taken the lock already
-- Returns {1, fencing token} when taken, {0, remaining lease of the holder in ms} when held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- The token is the larger of the stored counter + 1 and the server's clock in microseconds, so it
  -- keeps increasing after a restart that lost the counter; the counter itself expires once the key
  -- has been idle for the retention, which keeps memory bounded.
  local now = redis.call('TIME')
  local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', KEYS[2]))
  if last and last >= token then
    token = last + 1
  end
  redis.call('SET', KEYS[2], string.format('%.0f', token), 'PX', ARGV[3])
  return {1, token}
end
if ARGV[4] == 'retry' and redis.call('GET', KEYS[1]) == ARGV[1] then
  -- Ours already: the first request went through. Its token is the counter's value.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('GET', KEYS[2]))}
end
return {0, redis.call('PTTL', KEYS[1])}
