"""Rate limiting: policy (config.py), pure arithmetic (algorithms.py), request keys (keys.py),
backends (memory.py, redis_backend.py), the limiter facade (limiter.py) and response headers
(headers.py)."""
