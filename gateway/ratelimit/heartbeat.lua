-- One replica's heartbeat (limiter.py): ZADD this replica, ARGV[1], to the sorted set KEYS[1]
-- scored by Redis's clock (replicas' clocks may disagree), drop the entries older than ARGV[2]
-- ms, count; the set expires when every replica is gone. Returns {added (1: our entry was
-- missing), count}.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
redis.call('PEXPIRE', KEYS[1], stale * 2)
return {added, redis.call('ZCARD', KEYS[1])}
