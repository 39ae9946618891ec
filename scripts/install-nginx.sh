#!/usr/bin/env bash
# Installs Debian's nginx (for the scale-out test and deploy/validate.sh) unless it
# is already there, without letting the package start a daemon on port 80.
set -uo pipefail

if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then
  exit 0
fi
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install-nginx: nginx is missing and cannot be installed here (needs root and apt-get)" >&2
  exit 1
fi
echo "install-nginx: installing nginx (apt-get)" >&2
added_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
log="$(mktemp)"
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; } >"$log" 2>&1
status=$?
[[ $added_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
if [[ $status -ne 0 ]]; then
  echo "install-nginx: apt-get install nginx failed:" >&2
  tail -5 "$log" >&2
fi
rm -f "$log"
exit $status
