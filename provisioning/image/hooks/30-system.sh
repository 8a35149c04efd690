#!/bin/bash -e
# In the image's chroot (build-image), after the packages, the files (rootfs/, the units from the
# repository's systemd/) and the venv: which units run, the accounts, no identity, the initramfs.
# Only ever in the image's root, started by build-image (which sets TP_IMAGE_BUILD and stages the
# same token in /var/tmp/tp-hooks/IMAGE-ROOT): on the build machine these lines would wreck it.
if [[ -z ${TP_IMAGE_BUILD:-} || "$(cat /var/tmp/tp-hooks/IMAGE-ROOT 2>/dev/null)" != "$TP_IMAGE_BUILD" ]]; then
    echo "${0##*/}: not started by build-image in the image's root: refusing" >&2
    exit 1
fi
set -o pipefail

# Each session's charon is the firmware's own, in the session's sandbox (with a strongswan.conf it
# writes there): no charon in the device's domain, neither charon-systemd's nor the legacy
# starter's (strongswan-charon needs its package; ipsec.service is its other name).
systemctl mask strongswan.service strongswan-starter.service ipsec.service
# The firmware runs its own cupsd per session, in RAM, on localhost:631. The system cupsd would
# take that port and spool to the SD card: masked, so neither a socket, a path unit nor a package
# upgrade starts it. cups-browsed is purged (packages/purge); masked too should it come back.
systemctl disable cups.service cups.socket cups.path 2>/dev/null || true
systemctl mask cups.service cups.socket cups.path cups-browsed.service
# avahi-daemon: installed only because ipp-usb depends on it; masked (ipp-usb with dns-sd = disable
# never talks to it; a running avahi would listen on udp 5353 on every interface).
systemctl mask avahi-daemon.service avahi-daemon.socket

# The network: systemd-networkd (DHCP on every ethernet port, NTP servers from DHCP), resolved,
# timesyncd. Not systemd-time-wait-sync: the firmware starts without NTP ("clock not
# synchronised") and serves once the clock is good.
systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
systemctl enable ssh.service

# The boot guard's table (tenantprint-boot-guard.service loads it with nft before systemd-sysctl
# turns forwarding on): rendered here, so that no Python runs on the early-boot path.
install -d -m 0755 /usr/lib/tenantprint
/opt/tenantprint/venv/bin/python -c \
    'from hal.net.firewall import boot_guard; print(boot_guard(), end="")' \
    > /usr/lib/tenantprint/boot-guard.nft
chmod 0644 /usr/lib/tenantprint/boot-guard.nft
# The firmware's units (copied from the repository's systemd/ into /etc/systemd/system).
systemctl enable tenantprint-boot-guard.service
systemctl enable pcscd.socket
systemctl enable tenantprint-enrol.service tenantprint-firmware.service
# At boot, before udev's coldplug and pcscd.socket: keeps the kernel NFC drivers / pcscd off the reader.
systemctl enable tenantprint-reader-setup.service
# The operation panel: the panel socket's group and the kiosk's user, the web panel on loopback and
# the kiosk on tty1 (it replaces the login prompt there).
systemd-sysusers /etc/sysusers.d/tenantprint.conf
systemctl enable tenantprint-panel.service tenantprint-kiosk.service
# ssh host keys made on first boot on the state partition, the operator's keys from the boot partition.
systemctl enable tenantprint-ssh-setup.service
# The boot-time self-check (only with tenantprint.selfcheck=1 on the kernel command line).
systemctl enable tenantprint-selfcheck.service

# No swap: the session tmpfs and the firmware's memory hold org data.
systemctl mask swap.target
# No core dumps anywhere (a dump of the firmware would hold org secrets).
systemctl mask systemd-coredump.socket 2>/dev/null || true
# The machine id is made anew in /run at every boot (the root is read-only): each boot would be a
# "first boot", and systemd-firstboot would ask on the console for a locale and a root password.
systemctl mask systemd-firstboot.service

# The operator's account, admin (Debian has a system group "operator"): ssh with the keys from the
# boot partition (tenantprint-ssh-setup), sudo without a password (/etc/sudoers.d/tenantprint-admin),
# no password at all ('*': no login but by key).
useradd --create-home --shell /bin/bash --comment "tenantprint operator" admin
usermod -p '*' admin

# No identity in the image: no ssh host keys (made on first boot), no machine id (made at boot),
# no random seed shared by every device.
rm -f /etc/ssh/ssh_host_*
# ssl-cert's "snakeoil" key (made when a package pulls ssl-cert in): nothing here uses it, and it
# would be one private key shared by every device.
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
ln -sf /etc/machine-id /var/lib/dbus/machine-id

# Mount points of the read-only root (fstab).
install -d -m 0755 /boot/firmware /var/persist /var/ipp-usb /var/lib/systemd/timesync
install -d -m 0700 /var/lib/tenantprint
# systemd's units with a StateDirectory= fail to start when it is missing on a read-only root
# (logind's linger, seen on the twin): made here, with the mode the units ask for.
install -d -m 0755 /var/lib/systemd/linger /var/lib/systemd/backlight /var/lib/systemd/rfkill /var/lib/systemd/pstore

# The initramfs, once (update-initramfs was a no-op until now: see build-image's essential hook).
# MODULES=most (the default): the same image boots a Pi 3 and a Pi 4 (and QEMU's raspi3b and virt).
rm -f /usr/sbin/update-initramfs
dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
update-initramfs -c -k all
