"""Rate limiting: policy (config.py), pure arithmetic (algorithms.py), request keys (keys.py),
backends (memory.py, redis_backend.py; Redis reached through redis_endpoint.py, the parsed
`redis.url`, redis_connection.py, one pipelined connection, and resp.py, the wire format), the
limiter facade (limiter.py) and response headers (headers.py)."""
