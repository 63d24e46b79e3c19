-- Release the lock if we still own it; if anyone waits, hand it to the oldest waiting process and
-- wake one waiter per process.
-- KEYS[1] lock key, KEYS[2] release channel (the message: the token the lock is handed to, if any,
-- then a space and the token queued after it, if any), KEYS[3] queue of waiting processes
-- ARGV[1] owner token, ARGV[2] how long a hand-over stays reserved, in ms, ARGV[3] (optional) 'z'
-- to take the token out of the queue as well (the clean-up after an abandoned try)
-- Returns 1 when released, 0 when the lock was no longer ours.
if ARGV[3] == 'z' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if held == ARGV[1] .. '+' then
  local next = redis.call('ZPOPMIN', KEYS[3])[1]
  if next then
    -- Reserved for the oldest waiting process for a moment: if it is gone, the reservation
    -- expires and the others take the lock as usual.
    redis.call('SET', KEYS[1], 'claim:' .. next, 'PX', ARGV[2])
    -- The one after it is told too: it takes the lock when the reservation lapses unclaimed, so
    -- no other waiting process needs to look.
    local after = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if after then
      next = next .. ' ' .. after
    end
  else
    redis.call('DEL', KEYS[1])
  end
  redis.call('PUBLISH', KEYS[2], next or '')
  return 1
end
return 0
