#!/usr/bin/env bash
# Installs s3s-fs, the S3-compatible server the integration tests start, unless it is already there.
set -euo pipefail

VERSION="0.14.1" # later versions need Rust 1.96

for candidate in "$(command -v s3s-fs 2>/dev/null || true)" "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version | grep -q "$VERSION"; then
        echo "s3s-fs $VERSION already installed at $candidate"
        exit 0
    fi
done

cargo install "s3s-fs@$VERSION" --locked --features binary
