"""Settings: the loaded policy as frozen, validated objects (what `gateway.config` builds).

This layer imports nothing of the gateway except `gateway.tokens` and `gateway.units`: the
policy reader above it builds these objects, the compiled decisions and the I/O above that
read them (docs/architecture.md).
"""
