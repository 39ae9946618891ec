#!/usr/bin/env bash
# Schema fuzzing (issue 11): schemathesis (PyPI, in a venv of its own) sends
# requests generated from openapi.json to the whole service (`artefatos all`,
# S3 storage in s3s-fs) with a valid API key, on free ports, in a database,
# namespace, vhost and bucket directory of its own. Fails on any 5xx, counted
# by the service's own request metrics, or if fewer than MIN_REQUESTS were sent.
# Usage: scripts/schemathesis.sh [max examples per operation, default 200]
# ARTEFATOS_BIN=path fuzzes that binary instead of this checkout's debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES="${1:-200}"
MIN_REQUESTS="${MIN_REQUESTS:-1000}"
VERSION="4.32.5"

VENV="${SCHEMATHESIS_VENV:-.artefatos/schemathesis-venv}"
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi
scripts/services.sh >/dev/null
scripts/install-s3s.sh >/dev/null
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ -z "${ARTEFATOS_BIN:-}" ]; then
    cargo build --bin artefatos
fi
BIN="${ARTEFATOS_BIN:-${CARGO_TARGET_DIR:-target}/debug/artefatos}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RUN_ID="st$(date +%s)$$"
WORK="$(mktemp -d)"
S3_PORT="$(free_port)"
API_PORT="$(free_port)"
export S3_ENDPOINT="http://127.0.0.1:$S3_PORT" S3_BUCKET="fuzz" AWS_REGION="us-east-1"
export AWS_ACCESS_KEY_ID="fuzz" AWS_SECRET_ACCESS_KEY="fuzz-secret"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/artefatos_fuzz_$RUN_ID"
export ARTEFATOS_NAMESPACE="fuzz_$RUN_ID"
export ARTEFATOS_LISTEN="127.0.0.1:$API_PORT"
export RUST_LOG="${RUST_LOG:-warn}"
rabbitmqctl add_vhost "$ARTEFATOS_NAMESPACE" >/dev/null
rabbitmqctl set_permissions -p "$ARTEFATOS_NAMESPACE" guest ".*" ".*" ".*" >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$ARTEFATOS_NAMESPACE"

mkdir -p "$WORK/s3"
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
S3_PID=$!
"$BIN" all >"$WORK/artefatos.log" 2>&1 &
APP=$!
cleanup() {
    kill "$APP" 2>/dev/null || true
    wait "$APP" 2>/dev/null || true
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS artefatos_fuzz_$RUN_ID WITH (FORCE)" || true
    rabbitmqctl delete_vhost "$ARTEFATOS_NAMESPACE" >/dev/null || true
    redis-cli --scan --pattern "$ARTEFATOS_NAMESPACE:*" | xargs -r redis-cli unlink >/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
URL="http://$ARTEFATOS_LISTEN"
for _ in $(seq 300); do
    curl -sf "$URL/health/ready" >/dev/null && break
    sleep 0.2
done
KEY="$("$BIN" keys create "fuzz-$RUN_ID" | tail -n1)"

# Sum of artefatos_http_requests_total over the series whose labels match $1.
requests() {
    curl -sf "$URL/metrics" | { grep '^artefatos_http_requests_total{' || true; } |
        { grep -E "$1" || true; } | awk '{ sum += $NF } END { printf "%d\n", sum }'
}
status=0
"$VENV/bin/st" run openapi.json --url "$URL" -H "Authorization: Bearer $KEY" \
    --checks not_a_server_error --max-examples "$EXAMPLES" --seed "${SEED:-11}" \
    --no-color --suppress-health-check all || status=$?

sent="$(requests '.')"
server_errors="$(requests 'status="5')"
echo "schemathesis: $sent requests served, $server_errors answered 5xx (schemathesis exit $status)"
if [ "$server_errors" -ne 0 ]; then
    curl -sf "$URL/metrics" | grep '^artefatos_http_requests_total{' | grep 'status="5'
    grep -E "ERROR|WARN" "$WORK/artefatos.log" | tail -20
    exit 1
fi
if [ "$sent" -lt "$MIN_REQUESTS" ]; then
    echo "schemathesis: fewer than $MIN_REQUESTS requests" >&2
    exit 1
fi
exit "$status"
