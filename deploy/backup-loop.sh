#!/bin/sh
# The scheduled backup of the demo API's database (the compose `backup` service; Kubernetes uses
# a CronJob instead): right away, then every BACKUP_INTERVAL_SECONDS (default 86400, a day),
# `backup create --verify` (to BACKUP_DIR, and to AWS_S3_BUCKET when set) then `backup prune`
# (RETENTION_DAYS, BACKUP_KEEP_LAST). After each success it touches $BACKUP_DIR/.last-success,
# which the service's health check reads. A failed run is logged and retried at the next tick;
# the UpstreamNoVerifiedBackup alert fires when none succeeded for 26 hours. SIGTERM stops it
# between runs or while it waits.
set -eu
interval="${BACKUP_INTERVAL_SECONDS:-86400}"
case "$interval" in
  '' | *[!0-9]* | 0)
    echo "backup-loop: BACKUP_INTERVAL_SECONDS must be a positive whole number of seconds, got '$interval'" >&2
    exit 2 ;;
esac
: "${BACKUP_DIR:?backup-loop: BACKUP_DIR must be set}"
trap 'exit 0' TERM INT
while :; do
  if python -m upstream backup create --verify && python -m upstream backup prune; then
    touch "$BACKUP_DIR/.last-success"
  else
    echo "backup-loop: this backup failed; the next try is in ${interval}s" >&2
  fi
  sleep "$interval" &
  wait $! || true
done
