#!/usr/bin/env bash
# Peak RSS of the API while 8 clients post 16 MiB documents at once (issue 11):
# one number column, rows [0], four sheets of 1,040,000 rows (16.6 MB).
# Usage: benches/http/large_bodies.sh [rounds]   (default 3 rounds of 8 concurrent POSTs)
# ARTEFATOS_BIN=path runs that binary (default: this checkout's debug build,
# built if missing); extra ARTEFATOS_* variables (e.g.
# ARTEFATOS_MAX_LARGE_BODIES_IN_FLIGHT) pass through to the API.
# Prints the status codes seen and the API's peak RSS (VmHWM); see BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
scripts/services.sh >/dev/null
if [ -z "${ARTEFATOS_BIN:-}" ]; then
    cargo build --bin artefatos
fi
BIN="${ARTEFATOS_BIN:-${CARGO_TARGET_DIR:-target}/debug/artefatos}"

RUN_ID="lb$(date +%s)$$"
WORK="$(mktemp -d)"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/artefatos_bench_$RUN_ID"
export ARTEFATOS_NAMESPACE="bench_$RUN_ID"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export ARTEFATOS_LISTEN="127.0.0.1:$PORT"
export ARTEFATOS_STORAGE_DIR="$WORK/artifacts"
export RUST_LOG=error
"$BIN" api &
APP=$!
cleanup() {
    kill "$APP" 2>/dev/null || true
    wait "$APP" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS artefatos_bench_$RUN_ID WITH (FORCE)" || true
    redis-cli --scan --pattern "$ARTEFATOS_NAMESPACE:*" | xargs -r redis-cli unlink >/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
until curl -sf "http://$ARTEFATOS_LISTEN/health/live" >/dev/null; do sleep 0.2; done
KEY="$("$BIN" keys create "bench-$RUN_ID" | tail -n1)"

python3 - "$WORK/body.json" <<'EOF'
import sys
rows = ",".join(["[0]"] * 1_040_000)
sheet = '{"name":"S%d","columns":[{"title":"n","type":"number"}],"rows":[' + rows + "]}"
sheets = ",".join(sheet % i for i in range(4))
with open(sys.argv[1], "w") as f:
    f.write('{"format":"xlsx","document":{"sheets":[' + sheets + "]}}")
EOF
echo "body: $(stat -c %s "$WORK/body.json") bytes; API RSS before: $(grep VmRSS /proc/$APP/status)"

started=$(date +%s.%N)
for round in $(seq "$ROUNDS"); do
    for client in $(seq 8); do
        curl -s -o "$WORK/answer-$round-$client" -w '%{http_code}\n' -X POST "http://$ARTEFATOS_LISTEN/generate" \
            -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
            -H "Idempotency-Key: r$round-c$client" --data-binary "@$WORK/body.json" &
    done
    wait $(jobs -p | grep -v "^$APP$") 2>/dev/null || true
done >"$WORK/codes"
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
echo "status codes: $(sort "$WORK/codes" | uniq -c | tr '\n' ' ')"
echo "problem codes: $(cat "$WORK"/answer-* | grep -o '"code":"[a-z_]*"' | sort | uniq -c | tr '\n' ' ')"
echo "elapsed: ${elapsed}s for $((ROUNDS * 8)) POSTs"
echo "API peak RSS: $(grep VmHWM /proc/$APP/status | awk '{print $2/1024 " MiB"}')"
