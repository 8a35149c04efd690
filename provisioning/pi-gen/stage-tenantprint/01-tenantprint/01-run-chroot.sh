#!/bin/bash -e
# The firmware in its own venv. Dependencies come from files/wheels when build-wheel.sh put
# arm64 wheels there, otherwise from PyPI; pyscard and pycups then compile here.
BUILD_DEPS="build-essential python3-dev swig libpcsclite-dev libcups2-dev"
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends ${BUILD_DEPS}
python3 -m venv /opt/tenantprint/venv
/opt/tenantprint/venv/bin/pip install --no-cache-dir --find-links /opt/tenantprint/wheels \
	/opt/tenantprint/wheels/tenantprint-*.whl
rm -rf /opt/tenantprint/wheels
# shellcheck disable=SC2086
apt-get purge -y ${BUILD_DEPS}
apt-get autoremove -y

# The boot guard's table (tenantprint-boot-guard.service loads it with nft before systemd-sysctl
# turns forwarding on): rendered here, so that no Python runs on the early-boot path.
install -d -m 0755 /usr/lib/tenantprint
/opt/tenantprint/venv/bin/python -c \
	'from hal.net.firewall import boot_guard; print(boot_guard(), end="")' \
	> /usr/lib/tenantprint/boot-guard.nft
chmod 0644 /usr/lib/tenantprint/boot-guard.nft
/opt/tenantprint/venv/bin/tenantprint firmware --config /etc/tenantprint/firmware.toml --dump-config > /dev/null

# Each session's charon is the firmware's own, in the session's sandbox (with a strongswan.conf it
# writes there): no charon in the device's domain, neither charon-systemd's nor the legacy
# starter's (strongswan-charon needs its package; ipsec.service is its other name).
systemctl mask strongswan.service strongswan-starter.service ipsec.service
systemctl enable tenantprint-boot-guard.service
systemctl enable pcscd.socket
# No RTC on a Pi: TLS to the cloud needs the clock set, so time-sync.target must wait for NTP.
systemctl enable systemd-time-wait-sync.service
systemctl enable tenantprint-enrol.service tenantprint-firmware.service
# At boot, before udev's coldplug and pcscd.socket: keeps the kernel NFC drivers / pcscd off the reader.
systemctl enable tenantprint-reader-setup.service
# The operation panel: the panel socket's group and the kiosk's user (00-run.sh put the file there),
# the web panel on loopback and the kiosk on tty1 (it replaces the login prompt there).
systemd-sysusers /etc/sysusers.d/tenantprint.conf
systemctl enable tenantprint-panel.service tenantprint-kiosk.service
# The system cupsd stays masked: 03-printer.
