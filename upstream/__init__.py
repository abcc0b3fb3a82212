"""The sample application ("operator demo" API) that the gateway fronts.

It owns its data (PostgreSQL), its schema (Alembic migrations in `upstream/migrations`) and its
backups (`upstream/backup`). It imports nothing from `gateway`: the gateway is a separate
program in front of it.
"""

__version__ = "1.0.0"
