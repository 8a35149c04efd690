#!/bin/bash -e
# No swap on the SD card: the session tmpfs and the firmware's memory hold org data.
if dpkg -s dphys-swapfile > /dev/null 2>&1; then
	dphys-swapfile swapoff || true
	dphys-swapfile uninstall || true
	apt-get purge -y dphys-swapfile
fi
rm -f /var/swap
systemctl mask swap.target

# SSH: keys only, no root, no forwarding. Host keys are made on first boot (no identity in the image).
systemctl enable ssh.service
rm -f /etc/ssh/ssh_host_*
systemctl enable regenerate_ssh_host_keys.service
rm -f /etc/machine-id /var/lib/dbus/machine-id
touch /etc/machine-id

# No core dumps anywhere (a dump of the firmware would hold org secrets).
systemctl mask systemd-coredump.socket || true
