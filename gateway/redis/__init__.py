"""The gateway's own Redis client: everything that knows the wire, and nothing of rate limits.

It owns the URL forms of `redis.url` (endpoint.py), the RESP encoding of commands (resp.py),
one pipelined connection with hiredis parsing and a deadline per call (connection.py), master
discovery by Sentinel (sentinel.py), slot routing on a Cluster (cluster.py), and the face the
rest of the gateway uses (client.py): a RedisClient that runs Lua scripts (Script) and single
commands on whichever of these the URL names. What the scripts compute belongs to their
callers (gateway/ratelimit/redis_backend.py and its .lua files). It imports nothing of the
gateway but gateway.loop_turns.
"""
