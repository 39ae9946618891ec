#!/usr/bin/env bash
# Load test of the request path with wrk (Debian package), 64 connections, against a
# release build of the API with every service co-located on this machine.
# Usage: benches/http/run.sh [seconds] [scenarios]   (prints wrk's reports; see BENCHMARKS.md)
# scenarios: any of "new replay status" (default: all three, in that order).
# ARTEFATOS_BIN=path runs that binary instead of building this checkout (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN="${1:-15}"
SCENARIOS="${2:-new replay status}"
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
command -v wrk >/dev/null || apt-get install -y wrk
scripts/services.sh >/dev/null
if [ -z "${ARTEFATOS_BIN:-}" ]; then
    cargo build --release --bin artefatos
fi
BIN="${ARTEFATOS_BIN:-${CARGO_TARGET_DIR:-target}/release/artefatos}"

RUN_ID="b$(date +%s)"
export RUN_ID
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/artefatos_bench_$RUN_ID"
export ARTEFATOS_NAMESPACE="bench_$RUN_ID"
# A vhost of its own, deleted afterwards with every message the run queued: a
# run leaves nothing behind that would slow the next one down.
VHOST="bench_$RUN_ID"
rabbitmqctl add_vhost "$VHOST" >/dev/null
rabbitmqctl set_permissions -p "$VHOST" guest ".*" ".*" ".*" >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export ARTEFATOS_LISTEN="127.0.0.1:18080"
ARTEFATOS_STORAGE_DIR="$(mktemp -d)"
export ARTEFATOS_STORAGE_DIR
export RUST_LOG=warn
"$BIN" api &
APP=$!
cleanup() {
    kill "$APP" 2>/dev/null || true
    wait "$APP" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS artefatos_bench_$RUN_ID WITH (FORCE)" || true
    rabbitmqctl delete_vhost "$VHOST" >/dev/null || true
    rm -rf "$ARTEFATOS_STORAGE_DIR"
    redis-cli --scan --pattern "$ARTEFATOS_NAMESPACE:*" | xargs -r -n 5000 redis-cli unlink >/dev/null || true
}
trap cleanup EXIT
until curl -sf "http://$ARTEFATOS_LISTEN/health/ready" >/dev/null; do sleep 0.2; done
ARTEFATOS_KEY="$("$BIN" keys create "bench-$RUN_ID" | tail -n1)"
export ARTEFATOS_KEY
# One key sends everything, with no worker: lift its per-client limits.
"$BIN" keys limits "bench-$RUN_ID" --rate 1000000 --max-unfinished-jobs 100000000 >/dev/null
URL="http://$ARTEFATOS_LISTEN"

if wants new; then
    echo "== new jobs (POST /generate, a new key per request)"
    wrk -t2 -c64 -d"${SECONDS_PER_RUN}s" --latency -s benches/http/post_new.lua "$URL"
    committed=$(psql -h 127.0.0.1 -U postgres -d "artefatos_bench_$RUN_ID" -qAtc "SELECT count(*) FROM jobs")
    echo "jobs committed in PostgreSQL: $committed"
fi

if wants replay || wants status; then
    # Both read an existing job: make sure there is one.
    wrk -t1 -c1 -d1s -s benches/http/post_replay.lua "$URL" >/dev/null
fi
if wants replay; then
    echo "== idempotent replays (POST /generate, one key)"
    wrk -t2 -c64 -d"${SECONDS_PER_RUN}s" --latency -s benches/http/post_replay.lua "$URL"
fi

if ! wants status; then exit 0; fi
JOB_ID=$(psql -h 127.0.0.1 -U postgres -d "artefatos_bench_$RUN_ID" -qAtc "SELECT id FROM jobs LIMIT 1")
export JOB_ID
echo "== cached status (GET /status/{id})"
wrk -t2 -c64 -d"${SECONDS_PER_RUN}s" --latency -s benches/http/status.lua "$URL"
