"""Rate limiting: pure arithmetic (algorithms.py), request keys (keys.py), backends (memory.py;
redis_backend.py with its Lua scripts check.lua and heartbeat.lua, the only module here that
uses the Redis client, gateway.redis.client), the limiter facade (limiter.py) and response
headers (headers.py). The policies themselves are settings (gateway.settings.ratelimit)."""
