-- Read one lock's state for inspection; changes nothing.
-- KEYS[1] lock key, KEYS[2] fencing counter, KEYS[3] queue of waiting processes
-- Returns {PTTL of the lock (-2: none), the lock's value (owner token, token + '+' when awaited,
-- or 'claim:<token>' while reserved for a hand-over) or false, the counter or false,
-- the number of waiting processes}.
return {
  redis.call('PTTL', KEYS[1]),
  redis.call('GET', KEYS[1]) or false,
  redis.call('GET', KEYS[2]) or false,
  redis.call('ZCARD', KEYS[3]),
}
