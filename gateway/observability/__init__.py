"""What the gateway tells operators: metrics (and, as they land, access logs and Sentry)."""
