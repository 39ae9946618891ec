#!/usr/bin/env bash
# End to end: jobs posted through the API, rendered by the workers, stored in a local S3
# server (s3s-fs), and counted done in PostgreSQL — with every service on this machine and
# the service at its default settings (`artefatos all`, as scripts/quickstart.sh runs it).
#
# Usage: benches/e2e/run.sh [xlsx|pdf] [seconds] [scenarios]
#   burst: wrk posts 3-row documents with 64 connections for [seconds], then the queue drains;
#          prints jobs/s from the first POST to the last `done` and CPU ms per job per process.
#   light: ~50 jobs/s (1 connection, 20 ms between requests) for [seconds]; POST → done p50/p99.
#   fair:  a 100,000-row document of the same format, then `light` while it renders; the small
#          jobs' POST → done p50/p99 and the big job's own time.
# Default scenarios: "burst light fair". ARTEFATOS_BIN=path runs that binary instead of building.
set -euo pipefail
cd "$(dirname "$0")/../.."
FORMAT="${1:-xlsx}"
SECONDS_PER_RUN="${2:-10}"
SCENARIOS="${3:-burst light fair}"
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
command -v wrk >/dev/null || apt-get install -y wrk
scripts/services.sh >/dev/null
scripts/install-s3s.sh >/dev/null
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ -z "${ARTEFATOS_BIN:-}" ]; then
    cargo build --release --bin artefatos
fi
BIN="${ARTEFATOS_BIN:-${CARGO_TARGET_DIR:-target}/release/artefatos}"

RUN_ID="e$(date +%s)"
export RUN_ID FORMAT
DB="artefatos_bench_$RUN_ID"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export ARTEFATOS_NAMESPACE="bench_$RUN_ID"
VHOST="bench_$RUN_ID"
rabbitmqctl add_vhost "$VHOST" >/dev/null
rabbitmqctl set_permissions -p "$VHOST" guest ".*" ".*" ".*" >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export ARTEFATOS_LISTEN="127.0.0.1:18081"
S3_PORT=19081
export S3_ENDPOINT="http://127.0.0.1:$S3_PORT" S3_BUCKET="bench" AWS_REGION="us-east-1"
export AWS_ACCESS_KEY_ID="bench" AWS_SECRET_ACCESS_KEY="bench-secret"
WORK="$(mktemp -d)"
mkdir -p "$WORK/s3"
export RUST_LOG=warn
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
S3_PID=$!
until (exec 3<>/dev/tcp/127.0.0.1/$S3_PORT) 2>/dev/null; do sleep 0.1; done
"$BIN" all >"$WORK/service.log" 2>&1 &
APP=$!
cleanup() {
    kill "$APP" 2>/dev/null || true
    wait "$APP" 2>/dev/null || true
    kill "$S3_PID" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    rabbitmqctl delete_vhost "$VHOST" >/dev/null || true
    redis-cli --scan --pattern "$ARTEFATOS_NAMESPACE:*" | xargs -r -n 5000 redis-cli unlink >/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
until curl -sf "http://$ARTEFATOS_LISTEN/health/ready" >/dev/null; do sleep 0.2; done
ARTEFATOS_KEY="$("$BIN" keys create "bench-$RUN_ID" | tail -n1)"
export ARTEFATOS_KEY
# One key sends everything: lift its per-client limits (builds without them
# have no such command, hence `|| true`).
"$BIN" keys limits "bench-$RUN_ID" --rate 1000000 --max-unfinished-jobs 100000000 >/dev/null 2>&1 || true
URL="http://$ARTEFATOS_LISTEN"
sql() { psql -h 127.0.0.1 -U postgres -d "$DB" -qAtF ' ' -c "$1"; }

# CPU time (clock ticks) used so far by a set of processes.
ticks() { for pid in "$@"; do awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'; }
pids_of() {
    case "$1" in
        service) echo "$APP" ;;
        postgres) pgrep -u postgres -x postgres | tr '\n' ' ' ;;
        rabbitmq) pgrep -f 'beam.smp|erl_child_setup|inet_gethost|epmd' | tr '\n' ' ' ;;
        redis) pgrep -x redis-server | tr '\n' ' ' ;;
        s3) echo "$S3_PID" ;;
    esac
}
PROCESSES="service postgres rabbitmq redis s3"
declare -A BEFORE
cpu_start() { for p in $PROCESSES; do BEFORE[$p]=$(ticks $(pids_of "$p")); done; }
cpu_report() { # $1 = jobs
    local hz line="" total=0
    hz=$(getconf CLK_TCK)
    for p in $PROCESSES; do
        local used=$(( $(ticks $(pids_of "$p")) - BEFORE[$p] ))
        total=$(( total + used ))
        line+="$(awk -v t="$used" -v hz="$hz" -v n="$1" -v p="$p" 'BEGIN {printf "%s %.3f  ", p, t * 1000 / hz / n}')"
    done
    line+="$(awk -v t="$total" -v hz="$hz" -v n="$1" 'BEGIN {printf "| all %.3f", t * 1000 / hz / n}')"
    echo "CPU ms per job: $line"
}

# Waits until every job of a phase is final.
drain() { # $1 = phase
    while :; do
        read -r final all < <(sql "SELECT count(*) FILTER (WHERE status IN ('done','failed')), count(*) FROM jobs WHERE filename = '$1.$FORMAT'")
        [ "$all" -gt 0 ] && [ "$final" -eq "$all" ] && return
        sleep 0.2
    done
}
latency() { # $1 = phase
    sql "SELECT count(*), count(*) FILTER (WHERE status = 'failed'),
           round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000)::numeric, 1),
           round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000)::numeric, 1),
           round((max(extract(epoch FROM finished_at - created_at)) * 1000)::numeric, 1)
         FROM jobs WHERE filename = '$1.$FORMAT'" |
        awk '{printf "jobs %d (failed %d), POST -> done p50 %s ms, p99 %s ms, max %s ms\n", $1, $2, $3, $4, $5}'
}

if wants burst; then
    echo "== burst: $FORMAT, 3 rows, 64 connections for ${SECONDS_PER_RUN}s, then drain"
    cpu_start
    PHASE=burst DELAY_MS=0 wrk -t2 -c64 -d"${SECONDS_PER_RUN}s" -s benches/e2e/post_small.lua "$URL" | grep -E 'Requests/sec|requests in'
    drain burst
    read -r jobs failed span < <(sql "SELECT count(*), count(*) FILTER (WHERE status = 'failed'), extract(epoch FROM max(finished_at) - min(created_at)) FROM jobs WHERE filename = 'burst.$FORMAT'")
    awk -v n="$jobs" -v f="$failed" -v s="$span" 'BEGIN {printf "jobs %d (failed %d) in %.2f s from the first POST to the last done: %.0f jobs/s end to end\n", n, f, s, n / s}'
    cpu_report "$jobs"
fi

if wants light; then
    echo "== light: $FORMAT, ~50 jobs/s for ${SECONDS_PER_RUN}s"
    PHASE=light DELAY_MS=20 wrk -t1 -c1 -d"${SECONDS_PER_RUN}s" -s benches/e2e/post_small.lua "$URL" | grep -E 'Requests/sec'
    drain light
    latency light
fi

if wants fair; then
    echo "== fair: one 100,000-row $FORMAT document, then ~50 small jobs/s for ${SECONDS_PER_RUN}s"
    python3 - "$FORMAT" "$RUN_ID" >"$WORK/big.json" <<'PY'
import json, sys
fmt, run = sys.argv[1], sys.argv[2]
cols = [{"title": f"C{i}", "type": "number" if i % 2 else "text"} for i in range(10)]
sys.stdout.write('{"format":"%s","idempotency_key":"big-%s","filename":"big","document":{"title":"Big","sheets":[{"name":"Big","columns":%s,"rows":[' % (fmt, run, json.dumps(cols)))
for r in range(100_000):
    row = [r * 1.5 + i if i % 2 else f"row {r} col {i}" for i in range(10)]
    sys.stdout.write(("," if r else "") + json.dumps(row))
sys.stdout.write("]}]}}")
PY
    curl -sf -o /dev/null -X POST "$URL/generate" -H "Authorization: Bearer $ARTEFATOS_KEY" \
        -H 'Content-Type: application/json' --data-binary @"$WORK/big.json"
    PHASE=fair DELAY_MS=20 wrk -t1 -c1 -d"${SECONDS_PER_RUN}s" -s benches/e2e/post_small.lua "$URL" | grep -E 'Requests/sec'
    drain fair
    latency fair
    drain big
    sql "SELECT status, round((extract(epoch FROM finished_at - created_at) * 1000)::numeric) FROM jobs WHERE filename = 'big.$FORMAT'" |
        awk '{printf "the big job: %s, POST -> %s %s ms\n", $1, $1, $2}'
    read -r overlap < <(sql "SELECT count(*) FROM jobs s, jobs b WHERE s.filename = 'fair.$FORMAT' AND b.filename = 'big.$FORMAT' AND s.finished_at < b.finished_at")
    echo "small jobs finished while the big one was still rendering: $overlap"
fi
