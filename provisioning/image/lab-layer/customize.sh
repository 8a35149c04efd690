#!/bin/bash -e
# LAB ONLY: the twin's lab layer, run by provisioning/image/build-image --layer in the image's root
# (chroot) after the overlay is copied. Nothing here ever reaches the Raspberry Pi image.
#   packages   vsmartcard-vpcd (the virtual reader), mtools (the boot disk read before its mount)
#   overlay/   the lab's firmware.toml (its engine on the office LAN, its management address), an
#              sshd drop-in (root with the lab's key, local forwards), tenantprint-lab-ssh.service
#              (that key, from the boot disk), the enrolment ordered after the boot disk's mount.
#              The network is the image's own (DHCP from the office's dnsmasq, which names the NTP
#              server the image's systemd-timesyncd asks)
# The guest's boot disk (FAT, label RASPIFIRM) is made by lab/services/mfp_vm.py: the operator's
# enrolment files (tenantprint/) and the lab's (tenantprint-lab/).
systemctl enable tenantprint-lab-ssh.service
