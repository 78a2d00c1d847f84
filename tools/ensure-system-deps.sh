#!/usr/bin/env bash
# Make sure the system packages the agent and its tests need are present:
# python3-venv (to create .venv), mosquitto (the tests' real broker) and faketime
# (libfaketime: the tests that step the daemon's wall clock).
# Installs them with apt-get when missing and permitted (root, or sudo without
# a password, and PATROL_NO_APT unset); otherwise says exactly what to install.
set -euo pipefail

missing=()
PY=${PY:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed as '$PY' (Debian bookworm: apt-get install python3)" >&2
    exit 1
fi
tmp=$(mktemp -d)
if ! "$PY" -m venv --without-pip "$tmp/v" >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
rm -rf "$tmp"
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing+=(mosquitto)
fi
faketime_lib=no
for lib in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
    [ -e "$lib" ] && faketime_lib=yes
done
if [ "$faketime_lib" = no ]; then
    missing+=(faketime)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(none); fi
fi
if [ -n "${PATROL_NO_APT:-}" ] || ! command -v apt-get >/dev/null 2>&1 || [ "${as_root[*]:-}" = none ]; then
    echo "error: missing system packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
