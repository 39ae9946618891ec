#!/usr/bin/env bash
# The quick start: the whole service (API and workers in one process) on this
# machine, storing artifacts in a local S3-compatible server (s3s-fs) so that
# downloads are real presigned URLs. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/install-s3s.sh >/dev/null
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

S3_PORT="${S3_PORT:-9000}"
export S3_ENDPOINT="${S3_ENDPOINT:-http://127.0.0.1:$S3_PORT}"
export S3_BUCKET="${S3_BUCKET:-artefatos}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-artefatos}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-artefatos-secret}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

mkdir -p .artefatos/s3
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" .artefatos/s3 >.artefatos/s3s.log 2>&1 &
S3_PID=$!
trap 'kill $S3_PID 2>/dev/null || true' EXIT

# Ctrl-C reaches the whole foreground group: the service drains and exits,
# then the trap stops the S3 server.
cargo run --release --bin artefatos -- all
