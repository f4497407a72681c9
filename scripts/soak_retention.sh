#!/usr/bin/env bash
# Retention soak (issue 15): no-op jobs through one coordinator whose succeeded retention is one minute.
# Prints the jobs table's size, live and dead tuples, and a drain (claim-rate) bench at the start and the end.
#   scripts/soak_retention.sh [TOTAL_JOBS=1000000] [CHUNK=100000]
# Needs FAULTLINE_TEST_DSN (a Postgres server it may create a database on) and .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-1000000}
CHUNK=${2:-100000}
ADMIN=${FAULTLINE_TEST_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}
DB=faultline_soak_$$
PORT=${SOAK_PORT:-50971}
psql "$ADMIN" -qc "CREATE DATABASE $DB"
DSN="${ADMIN%/*}/$DB"
DATABASE_URL=$DSN FAULTLINE_GRPC_ADDR=127.0.0.1:$PORT FAULTLINE_METRICS_ADDR=off \
  FAULTLINE_RETENTION_SUCCEEDED_MS=60000 FAULTLINE_RETENTION_INTERVAL_MS=5000 \
  .venv/bin/python -m coordinator > "/tmp/soak-coordinator-$$.log" 2>&1 &
COORD=$!
trap 'kill $COORD 2>/dev/null || true; wait $COORD 2>/dev/null || true; psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB" || true' EXIT
for _ in $(seq 50); do .venv/bin/faultline queues --addr 127.0.0.1:$PORT >/dev/null 2>&1 && break; sleep 0.2; done
stats() {
  psql "$DSN" -Atc "SELECT '$1', now()::time(0), pg_size_pretty(pg_total_relation_size('faultline_jobs')),
    pg_total_relation_size('faultline_jobs'), n_live_tup, n_dead_tup,
    (SELECT count(*) FROM faultline_jobs), (SELECT pg_total_relation_size('faultline_attempts'))
    FROM pg_stat_user_tables WHERE relname = 'faultline_jobs'"
}
drain() { .venv/bin/faultline bench --addr 127.0.0.1:$PORT --drain --jobs 20000 --idle-jobs 20 2>&1 | tail -1; }
echo "phase|time|jobs size|bytes|live|dead|rows|attempts bytes"
stats start
echo "drain at start: $(drain)"
done_jobs=20000
while [ "$done_jobs" -lt "$TOTAL" ]; do
  echo "load: $(.venv/bin/faultline bench --addr 127.0.0.1:$PORT --jobs "$CHUNK" --idle-jobs 20 2>&1 | tail -1)"
  done_jobs=$((done_jobs + CHUNK + 20))
  stats "after $done_jobs"
done
echo "drain at end: $(drain)"
stats end
grep -c "finished jobs pruned" "/tmp/soak-coordinator-$$.log" | sed 's/^/pruner passes that deleted: /'
