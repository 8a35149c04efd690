#!/bin/bash -e
# Build the tenantprint wheel and fill the pi-gen stage's files/ folder with everything the stage
# installs: the wheel, the systemd units, the Pi guide. Run from anywhere; needs the repo's .venv
# (or PYTHON=/path/to/python with pip). Then copy or link
# provisioning/pi-gen/stage-tenantprint into pi-gen and add it to STAGE_LIST (RASPBERRY-PI.md).
set -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
out=${1:-$repo/provisioning/pi-gen/stage-tenantprint/01-tenantprint/files}

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
# Build from a clean copy: no .venv, caches, tests or build litter in the wheel or the repo, and
# no lab/ (the testbed: virtual cards, lab orgs) on a device.
tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
    pyproject.toml README.md tenantprint firmware hal cloud org | tar -C "$src" -xf -

rm -rf "$out/wheels" "$out/systemd" "$out/doc"
mkdir -p "$out/wheels" "$out/doc"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out/wheels" "$src"
cp -r "$repo/systemd" "$out/systemd"
cp "$repo/docs/RASPBERRY-PI.md" "$out/doc/"
ls "$out"/wheels/tenantprint-*.whl
