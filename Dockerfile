# One image for the gateway, the demo API, its migrations and its backups: the command chooses.
#   gateway run --config policies/production.yaml      the gateway (the default CMD)
#   python -m upstream serve --host 0.0.0.0 --port 8000 the demo API
#   python -m upstream migrate upgrade                  its migrations (a one-shot job)
#   python -m upstream backup create --verify           a backup (deploy/backup-loop.sh on a schedule)
# docker-compose.yml and deploy/k8s/ run it these four ways; docs/deploy.md explains the choices.

# --- build: a virtual environment from the hash-locked dependencies --------------------------
FROM python:3.12-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# requirements.lock: `uv pip compile pyproject.toml ... --generate-hashes` (its header has the
# whole command); tests/test_deploy_image.py fails when it no longer matches pyproject.toml.
# --require-hashes refuses any file whose SHA-256 the lock does not name, --only-binary keeps
# compilers out (every locked package ships manylinux wheels for CPython 3.12).
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --only-binary=:all: --no-deps \
         -r /tmp/requirements.lock

# The project itself, without dependencies (all of them came from the lock above).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY upstream ./upstream
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -c "import gateway, upstream"

# --- runtime: the venv, the policies and nothing to build with -------------------------------
FROM python:3.12-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BACKUP_DIR=/var/lib/upstream/backups \
    UPSTREAM_DATA_DIR=/var/lib/upstream/data

# A system user with a fixed uid (Kubernetes' runAsUser and volume ownership refer to it);
# the only writable places are the backup and data folders (volumes) and /tmp.
RUN useradd --system --no-create-home --uid 10001 --user-group gateway \
    && mkdir -p /var/lib/upstream/backups /var/lib/upstream/data \
    && chown -R 10001:10001 /var/lib/upstream

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Policies are baked in and read-only: mount a volume (or a ConfigMap) over /app/policies, or a
# file that `extends: /app/policies/production.yaml`, to change them without a new image.
COPY alembic.ini ./
COPY policies ./policies
COPY deploy/healthcheck.py deploy/backup-loop.sh ./deploy/

USER 10001:10001

# 8080 public; 9090 admin (/health /ready /metrics: keep it private, set
# GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 for probes and Prometheus from outside the container);
# 8000 the demo API.
EXPOSE 8080 9090 8000

# SIGTERM starts the gateway's drain (readiness fails, in-flight requests finish within
# server.timeouts.shutdown); give the container at least that long to stop (compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# The gateway's admin /health (another command overrides it: the API's is on :8000).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "http://127.0.0.1:9090/health"]

# production.yaml needs UPSTREAM_URL, FRONTEND_URL, PRODUCTION_URL and TRUSTED_PROXIES.
CMD ["gateway", "run", "--config", "policies/production.yaml"]
