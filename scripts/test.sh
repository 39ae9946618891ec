#!/usr/bin/env bash
# The test command: makes sure every service the tests talk to is there (starting
# what is down, installing the S3 test server if missing), then runs every test.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/install-s3s.sh >/dev/null
# The scale-out test puts nginx in front of two APIs.
scripts/install-nginx.sh || echo "test.sh: without nginx the scale-out test will fail" >&2
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Test databases and queues of earlier runs (each test makes its own).
psql -h 127.0.0.1 -U postgres -qAtc \
    "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\" WITH (FORCE);' FROM pg_database WHERE datname LIKE 'artefatos_t_%'" \
    | psql -h 127.0.0.1 -U postgres -q >/dev/null 2>&1 || true

# Test queues (namespace `t` + 32 hex digits) are deleted by the broker once
# unused for 15 minutes; a policy, so it also reaps queues of earlier runs.
rabbitmqctl set_policy artefatos-test-expiry '^t[0-9a-f]{32}\.' '{"expires":900000}' \
    --apply-to queues >/dev/null 2>&1 || echo "test.sh: could not set the test-queue expiry policy" >&2

# Each test boots an app and an S3 server and mostly waits on I/O: more
# threads than cores keeps two cores busy.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}"
cargo test --all-features "$@"
