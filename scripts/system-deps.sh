#!/usr/bin/env bash
# Install the system programs the tests and the demo start themselves, when missing:
# mosquitto (broker tests), chromium (dashboard test), promtool (metrics format check).
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${need[*]}; install them (tests that need them will be skipped)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# prometheus pulls a service; we only need its promtool binary, and never start the daemon.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts services it installs where it can; ours are started by the tests on free ports.
for svc in mosquitto prometheus; do
  if pgrep -x "$svc" >/dev/null 2>&1 && [ "$svc" = prometheus ]; then pkill -x prometheus || true; fi
done
