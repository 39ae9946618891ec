#!/usr/bin/env bash
# Peak RSS of `artefatos api` while it refuses gzip bombs (BENCHMARKS.md,
# "Compressed bodies"). Needs PostgreSQL, Redis and RabbitMQ on loopback.
# Usage: scripts/bench-gzip-bomb.sh [path/to/artefatos] [document limit bytes]
set -euo pipefail
BIN=${1:-target/release/artefatos}
LIMIT=${2:-67108864}
PORT=18480
DIR=$(mktemp -d)
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/artefatos_bench_gzip
export ARTEFATOS_NAMESPACE=benchgzip ARTEFATOS_LISTEN=127.0.0.1:$PORT
export ARTEFATOS_STORAGE_DIR=$DIR/artifacts ARTEFATOS_MAX_DOCUMENT_BYTES=$LIMIT
KEY=$("$BIN" keys create "bench-$(date +%s%N)" 2>/dev/null | tail -1)
"$BIN" api >"$DIR/api.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health/live" >/dev/null && break; sleep 0.1; done
python3 - "$PORT" "$KEY" "$PID" "$LIMIT" <<'PY'
import gzip, sys, time, urllib.request, urllib.error
port, key, pid, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def hwm():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield line.split()[1]
def post(body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "Content-Encoding": "gzip"})
    t = time.monotonic()
    try:
        code = urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        code = e.code
    return code, time.monotonic() - t
print("before: VmHWM %s kB, VmRSS %s kB" % tuple(hwm()))
member = gzip.compress(b" " * (1 << 20), 9)
for gib in (1, 4):
    bomb = member * (1024 * gib)
    code, took = post(bomb)
    print(f"bomb {len(bomb)/2**20:.1f} MiB gzip -> {gib} GiB inflated, limit {limit/2**20:.0f} MiB: "
          f"HTTP {code} in {took:.2f} s; VmHWM %s kB, VmRSS %s kB" % tuple(hwm()))
PY
