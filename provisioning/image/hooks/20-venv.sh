#!/bin/bash -e
# In the image's chroot (build-image): the firmware in its own venv at /opt/tenantprint/venv, from
# the wheel build-image put in /var/tmp/tp-wheels, with its dependencies from PyPI at the versions
# pyproject.toml pins.
#
# Why not a venv with --system-site-packages on Debian's python3-pyscard, python3-cups, python3-evdev,
# python3-cryptography: bookworm has pyscard 2.0.5, pycups 2.0.1, evdev 1.6.1 and cryptography 38,
# and the firmware pins pyscard 2.3.1, pycups 2.0.4, evdev 2.0.0 and needs cryptography >= 44, so
# pip would install its own over them anyway; and the device should run exactly the versions the
# test suite ran. pyscard, pycups and evdev have no wheel on PyPI: they are compiled here once
# (packages/build-deps, purged afterwards) and build-image keeps the wheels (<cache>/wheels/<arch>),
# so the next build installs offline from them and installs no compiler at all.
# Only ever in the image's root, started by build-image (which sets TP_IMAGE_BUILD and stages the
# same token in /var/tmp/tp-hooks/IMAGE-ROOT): on the build machine these lines would wreck it.
if [[ -z ${TP_IMAGE_BUILD:-} || "$(cat /var/tmp/tp-hooks/IMAGE-ROOT 2>/dev/null)" != "$TP_IMAGE_BUILD" ]]; then
    echo "${0##*/}: not started by build-image in the image's root: refusing" >&2
    exit 1
fi
set -o pipefail
W=/var/tmp/tp-wheels
venv=/opt/tenantprint/venv
wheel=$(echo "$W"/tenantprint-*.whl)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# the build machine's CA bundle (build-image copies it in for the build only)
if [[ -f $W/build-ca.crt ]]; then
    export PIP_CERT=$W/build-ca.crt
fi
python3 -m venv "$venv"
if "$venv/bin/pip" install --quiet --no-index --find-links "$W/deps" "$wheel" 2>/dev/null; then
    echo "20-venv: installed offline from the wheel cache"
else
    echo "20-venv: compiling the dependencies PyPI has no wheel for (build deps: $TP_BUILD_DEPS)"
    dpkg-query -W -f '${Package}\n' | sort > /var/tmp/tp-packages-before
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $TP_BUILD_DEPS
    "$venv/bin/pip" wheel --quiet --use-pep517 --wheel-dir "$W/deps" --find-links "$W/deps" "$wheel"
    "$venv/bin/pip" install --quiet --no-index --find-links "$W/deps" "$wheel"
    # Every package the build deps brought, purged again: the image's package set is the same as
    # when the wheels come from the cache (an autoremove alone kept the compiler: something in the
    # image suggests it, and apt keeps what is suggested).
    dpkg-query -W -f '${Package}\n' | sort | comm -13 /var/tmp/tp-packages-before - > /var/tmp/tp-packages-added
    # shellcheck disable=SC2046
    DEBIAN_FRONTEND=noninteractive apt-get purge -y $(cat /var/tmp/tp-packages-added)
fi
find "$venv" -name __pycache__ -prune -exec rm -rf {} +
# Byte-compiled once here: the root is read-only on the device, where Python could not write them.
"$venv/bin/python" -m compileall -q "$venv/lib" > /dev/null || true

# The shipped firmware.toml must load.
"$venv/bin/tenantprint" firmware --config /etc/tenantprint/firmware.toml --dump-config > /dev/null
