-- Release the lock if we still own it, and wake one waiter per process if anyone waits (S9).
-- KEYS[1] lock key, KEYS[2] release channel
-- ARGV[1] owner token
-- Returns 1 when released, 0 when the lock was no longer ours.
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if held == ARGV[1] .. '+' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], '')
  return 1
end
return 0
