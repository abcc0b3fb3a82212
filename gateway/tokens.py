"""The bottom layer: the grammar every other layer shares (RFC 9110 tokens, methods).

Written once here; settings, readers and decisions import it and nothing below it exists.
"""

from __future__ import annotations

import re

# RFC 9110 5.1 field-name (and method) token
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# CONNECT would make the gateway a tunnel; TRACE/TRACK echo credentials (cross-site tracing):
# refused at admission, and never allowed by a CORS policy
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
