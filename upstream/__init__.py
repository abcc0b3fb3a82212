"""The sample upstream application ("operator demo" API) that the gateway fronts.

For now an in-memory stand-in with the demo's endpoints; the PostgreSQL-backed application with
its migrations and backups replaces it in its own issue.
"""
