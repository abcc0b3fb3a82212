"""Talking to the upstream: connection pool, streaming forwarder, WebSocket relay, error mapping."""
