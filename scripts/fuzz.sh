#!/usr/bin/env bash
# Fuzzes the document parser and both renderers (fuzz/fuzz_targets/render.rs)
# for N seconds (first argument, default 60): whatever validates must render
# in both formats, whatever is refused must fail alike, never a panic, a
# timeout or more than 2 GiB. Installs cargo-fuzz if it is missing.
#
# Starts from the committed seeds in fuzz/corpus/render (read only); inputs it
# finds go to fuzz/target/corpus/render, crashes to fuzz/artifacts/render.
# Reproduce a crash with:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none render fuzz/artifacts/render/<file>
set -euo pipefail

seconds="${1:-60}"
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags to rustc; only a stable toolchain is
# installed here, and RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1

work=fuzz/target/corpus/render
mkdir -p "$work"
# No sanitizer: the renderer is safe Rust, and without ASan the build is
# quicker and the run several times faster; panics, timeouts and memory are
# still caught by libFuzzer.
# Its build (instrumented, release) lives apart from the project's own, so
# neither invalidates the other; FUZZ_TARGET_DIR moves it (CI keeps it
# outside the clone, to build it once per machine).
cargo fuzz run --sanitizer none --target-dir "${FUZZ_TARGET_DIR:-fuzz/target}" \
  render "$work" fuzz/corpus/render -- \
  -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=65536
