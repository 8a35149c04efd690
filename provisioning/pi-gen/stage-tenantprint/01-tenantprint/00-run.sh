#!/bin/bash -e
# Host side: copy what provisioning/build-wheel.sh put into files/ into the image.
# files/wheels/*.whl   the tenantprint wheel (and optionally arm64 wheels of its dependencies)
# files/systemd/       the repository's systemd/ folder (units, sysctl.d)
# files/doc/           RASPBERRY-PI.md
F=files
if ! compgen -G "${F}/wheels/tenantprint-*.whl" > /dev/null; then
	echo "no tenantprint wheel in $(pwd)/${F}/wheels: run provisioning/build-wheel.sh first" >&2
	exit 1
fi

install -d -m 0755 "${ROOTFS_DIR}/opt/tenantprint/wheels" "${ROOTFS_DIR}/opt/tenantprint/libexec"
install -m 0644 "${F}"/wheels/*.whl "${ROOTFS_DIR}/opt/tenantprint/wheels/"
install -m 0755 "${F}/systemd/libexec/tenantprint-first-boot" "${F}/systemd/libexec/tenantprint-reader-setup" \
	"${ROOTFS_DIR}/opt/tenantprint/libexec/"

for unit in "${F}"/systemd/*.service; do
	install -m 0644 "${unit}" "${ROOTFS_DIR}/etc/systemd/system/"
done

# Forwarding for the sandboxes' doors only, without a router's habits (no redirects, no source
# routing), strict ARP and reverse path: applied at boot (after tenantprint-boot-guard.service has
# made the kernel drop everything it would forward), and again by the firmware's unit before each
# start (ExecStartPre).
install -m 0644 "${F}/systemd/sysctl.d/90-tenantprint.conf" "${ROOTFS_DIR}/etc/sysctl.d/90-tenantprint.conf"

# The operation panel: its accounts (01-run-chroot.sh creates them), the kiosk's PAM session and
# the kiosk browser's managed policy (only the panel's URL, no devtools).
install -d -m 0755 "${ROOTFS_DIR}/etc/sysusers.d" "${ROOTFS_DIR}/etc/pam.d" "${ROOTFS_DIR}/etc/chromium/policies/managed"
install -m 0644 "${F}/systemd/sysusers.d/tenantprint.conf" "${ROOTFS_DIR}/etc/sysusers.d/tenantprint.conf"
install -m 0644 "${F}/systemd/pam.d/tenantprint-kiosk" "${ROOTFS_DIR}/etc/pam.d/tenantprint-kiosk"
install -m 0644 "${F}/systemd/chromium/tenantprint-kiosk.json" \
	"${ROOTFS_DIR}/etc/chromium/policies/managed/tenantprint-kiosk.json"

install -d -m 0755 "${ROOTFS_DIR}/etc/tenantprint" "${ROOTFS_DIR}/opt/tenantprint/share/doc"
install -m 0644 "${F}/firmware.toml" "${ROOTFS_DIR}/etc/tenantprint/firmware.toml"
install -m 0644 "${F}/doc/RASPBERRY-PI.md" "${ROOTFS_DIR}/opt/tenantprint/share/doc/"
