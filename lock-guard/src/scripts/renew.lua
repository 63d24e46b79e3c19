-- Extend the lease if we still own the lock (the watchdog).
-- KEYS[1] lock key
-- ARGV[1] owner token, ARGV[2] lease in ms
-- Returns 1 when renewed, 0 when the lock was no longer ours.
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
