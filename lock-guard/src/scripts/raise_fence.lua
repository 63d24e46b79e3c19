-- Raise a fencing counter to at least a token issued elsewhere (Redlock: the largest token of the
-- granting majority is written back to each of its nodes, so that the next acquisition, whose
-- majority shares at least one node with this one, issues a larger token).
-- KEYS[1] fencing counter key
-- ARGV[1] token, ARGV[2] lifetime of the counter in ms
-- Returns 1.
local last = tonumber(redis.call('GET', KEYS[1]))
if not last or last < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
