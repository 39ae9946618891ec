#!/usr/bin/env bash
# The jobs table under constant load with short retentions: its rows and its size must
# level off instead of growing with every job (README § Retention). One `artefatos all`
# (API + workers, filesystem storage), wrk posting new small XLSX jobs at a paced rate,
# and a sample of the table every SAMPLE seconds.
# VACUUM_EACH_SAMPLE=1 (default) runs a plain VACUUM of the table before each sample, as
# autovacuum would: this machine's PostgreSQL runs with autovacuum off (conf.d/90-ci.conf),
# and without a vacuum no deleted or updated row's space is ever reused, retention or not.
# Usage: benches/retention/run.sh [seconds=600]   (prints one line per sample; see BENCHMARKS.md)
# ARTEFATOS_BIN=path runs that binary (default: this checkout's release build).
# POST_DELAY_MS (default 20) paces each of the 2 connections: about 100 jobs/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-600}"
SAMPLE="${SAMPLE:-15}"
command -v wrk >/dev/null || apt-get install -y wrk
scripts/services.sh >/dev/null
if [ -z "${ARTEFATOS_BIN:-}" ]; then
    cargo build --release --bin artefatos
fi
BIN="${ARTEFATOS_BIN:-${CARGO_TARGET_DIR:-target}/release/artefatos}"

RUN_ID="r$(date +%s)"
export RUN_ID
DB="artefatos_retention_$RUN_ID"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export ARTEFATOS_NAMESPACE="retention_$RUN_ID"
VHOST="retention_$RUN_ID"
rabbitmqctl add_vhost "$VHOST" >/dev/null
rabbitmqctl set_permissions -p "$VHOST" guest ".*" ".*" ".*" >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export ARTEFATOS_LISTEN="127.0.0.1:18081"
ARTEFATOS_STORAGE_DIR="$(mktemp -d)"
export ARTEFATOS_STORAGE_DIR
export ARTEFATOS_RETENTION=30s ARTEFATOS_JOB_RETENTION=60s ARTEFATOS_DLQ_REPLAY_WINDOW=30s
export RUST_LOG=warn
export POST_DELAY_MS="${POST_DELAY_MS:-20}"
"$BIN" all &
APP=$!
cleanup() {
    kill "${LOAD:-}" 2>/dev/null || true
    kill "$APP" 2>/dev/null || true
    wait "$APP" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    rabbitmqctl delete_vhost "$VHOST" >/dev/null || true
    rm -rf "$ARTEFATOS_STORAGE_DIR"
    redis-cli --scan --pattern "$ARTEFATOS_NAMESPACE:*" | xargs -r -n 5000 redis-cli unlink >/dev/null || true
}
trap cleanup EXIT
until curl -sf "http://$ARTEFATOS_LISTEN/health/ready" >/dev/null; do sleep 0.2; done
ARTEFATOS_KEY="$("$BIN" keys create "retention-$RUN_ID" | tail -n1)"
export ARTEFATOS_KEY

wrk -t2 -c2 -d"${DURATION}s" -s benches/http/post_new.lua "http://$ARTEFATOS_LISTEN" >/dev/null 2>&1 &
LOAD=$!
sql() { psql -h 127.0.0.1 -U postgres -d "$DB" -qAtF' ' -c "$1"; }
printf '%8s %10s %10s %10s %12s %12s\n' seconds created rows unfinished table_kB total_kB
start=$(date +%s)
while kill -0 "$LOAD" 2>/dev/null; do
    sleep "$SAMPLE"
    if [ "${VACUUM_EACH_SAMPLE:-1}" = 1 ]; then sql "VACUUM jobs"; fi
    read -r created rows unfinished table total < <(sql "
        SELECT (SELECT coalesce(max(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'jobs'),
               count(*), count(*) FILTER (WHERE status IN ('queued', 'processing')),
               pg_relation_size('jobs') / 1024, pg_total_relation_size('jobs') / 1024
        FROM jobs")
    printf '%8d %10d %10d %10d %12d %12d\n' $(( $(date +%s) - start )) \
        "$created" "$rows" "$unfinished" "$table" "$total"
done
