#!/usr/bin/env bash
# Offline validation of deploy/: every YAML/JSON parses; the kustomize build validates
# against the Kubernetes schemas; compose follows the Compose spec; nginx -t passes
# (compose config and the local-cluster config); nginx behaves (request id, 413, POST
# retry) in front of echo backends; the numbers that matter hold (HPA 2-10 at 70 %,
# KEDA 1-10 at 10 per replica, grace periods, body sizes); every metric the dashboard
# and alerts name is exported by src/metrics.rs; promtool checks the rules and runs
# their unit tests (tests/deploy/alerts_test.yaml). The checks are tests/deploy/*.py.
#
# Installs what it needs: Debian's nginx (apt-get, when root), promtool (unpacked from
# Debian's prometheus package) and a Python venv with tests/deploy/requirements.txt,
# both under ${XDG_CACHE_HOME:-~/.cache}/artefatos/.
# Prints `N passed, N failed` last; exits non-zero on any failure.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
REQUIREMENTS="tests/deploy/requirements.txt"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/artefatos"
VENV="${ARTEFATOS_DEPLOY_VENV:-$CACHE/deploy-venv}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

setup_failed=0
say() { printf 'validate: %s\n' "$*" >&2; }

# --- nginx (Debian's package) -------------------------------------------------------
bash scripts/install-nginx.sh || say "nginx is missing; its checks will fail"
export PATH="$PATH:/usr/sbin"

# --- promtool (Debian's prometheus package, unpacked, never installed or started) ---
PROMTOOL="$(command -v promtool || true)"
if [[ -z "$PROMTOOL" ]]; then
  PROMTOOL="$CACHE/prometheus-deb/usr/bin/promtool"
  if [[ ! -x "$PROMTOOL" ]]; then
    say "fetching promtool (apt-get download prometheus)"
    mkdir -p "$CACHE/prometheus-deb" "$WORK/deb"
    ( cd "$WORK/deb" && { apt-get download prometheus >"$WORK/deb.log" 2>&1 \
        || { apt-get update -qq >>"$WORK/deb.log" 2>&1 && apt-get download prometheus >>"$WORK/deb.log" 2>&1; }; } \
      && dpkg-deb -x prometheus_*.deb "$CACHE/prometheus-deb" ) \
      || { say "could not fetch promtool:"; tail -5 "$WORK/deb.log" >&2; }
  fi
fi
export PROMTOOL

# --- Python venv --------------------------------------------------------------------
stamp="$(sha256sum "$REQUIREMENTS" | cut -c1-16)-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$(cat "$VENV/.artefatos-stamp" 2>/dev/null)" != "$stamp" ]]; then
  say "creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  if python3 -m venv --clear "$VENV" >"$WORK/venv.log" 2>&1 \
     && "$VENV/bin/pip" install --disable-pip-version-check -q -r "$REQUIREMENTS" >>"$WORK/venv.log" 2>&1; then
    echo "$stamp" >"$VENV/.artefatos-stamp"
  else
    say "could not install the Python requirements:"; tail -20 "$WORK/venv.log" >&2
    setup_failed=1
  fi
fi

if (( setup_failed )); then
  echo "0 passed, 1 failed"
  exit 1
fi

# --- the checks ---------------------------------------------------------------------
"$VENV/bin/python" -m pytest tests/deploy -q -p no:cacheprovider -rfEs \
  --junitxml="$WORK/junit.xml" >&2
rc=$?

read -r passed failed skipped < <("$VENV/bin/python" - "$WORK/junit.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1, 0); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
k = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - k, f, k)
PY
)
if (( rc != 0 && failed == 0 )); then failed=1; fi  # pytest broke before counting
if (( passed == 0 && failed == 0 )); then failed=1; fi  # no check ran: a failure, not a pass

if (( skipped > 0 )); then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
(( failed == 0 ))
