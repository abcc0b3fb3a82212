"""The gateway's own Redis client: everything that knows the wire, and nothing of rate limits.

It owns the URL forms of `redis.url` (endpoint.py), the RESP encoding of commands (resp.py),
one pipelined connection with hiredis parsing and a deadline per call (connection.py), master
discovery by Sentinel (sentinel.py) and slot routing on a Cluster (cluster.py). It imports
nothing of the gateway but gateway.loop_turns.
"""
