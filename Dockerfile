# One image for the gateway and the demo API (docker-compose.yml runs both from it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first, so that policy edits do not reinstall them.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install .

COPY upstream ./upstream
COPY alembic.ini ./
COPY policies ./policies

RUN useradd --system --no-create-home --uid 10001 gateway \
    && mkdir -p /app/.data /app/backups && chown gateway /app/.data /app/backups
# The demo API's embedded PostgreSQL (no DATABASE_URL) keeps its files in /app/.data; its
# backups go to /app/backups. Mount volumes there to keep them.
USER gateway

# 8080 public, 9090 admin (/metrics; set GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 to reach it from
# outside the container, and keep that port private), 8000 the demo API.
EXPOSE 8080 9090 8000

# production.yaml needs UPSTREAM_URL, FRONTEND_URL, PRODUCTION_URL and TRUSTED_PROXIES.
CMD ["gateway", "run", "--config", "policies/production.yaml"]
