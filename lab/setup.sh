#!/usr/bin/env bash
# Installs what the lab and the tests need on a Debian 12 machine, as root:
# the Debian packages in lab/apt-packages.txt (and $APT_LISTS) and a .venv with the project and its test extras.
# Idempotent and quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-cloud,test,bench}
# The package lists to install (space-separated; `make image` adds provisioning/image/host-packages.txt)
APT_LISTS=${APT_LISTS:-lab/apt-packages.txt}

if [ "$(id -u)" != 0 ]; then
    echo "lab/setup.sh: run as root (the lab creates network namespaces and mounts)" >&2
    exit 1
fi

# shellcheck disable=SC2086  # a list of file names
mapfile -t wanted < <(grep -hvE '^\s*(#|$)' $APT_LISTS)
missing=()
for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps package scripts from starting system daemons: the lab starts its own.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stamp=.venv/.tenantprint-installed
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[${EXTRAS}]"
    touch "$stamp"
fi
