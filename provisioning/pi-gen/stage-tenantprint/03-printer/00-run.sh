#!/bin/bash -e
# The printer path's settings: ipp-usb serves a USB printer on loopback and announces nothing;
# avahi (installed as ipp-usb's dependency) publishes nothing.
install -d -m 0755 "${ROOTFS_DIR}/etc/ipp-usb" "${ROOTFS_DIR}/etc/avahi"
install -m 0644 files/ipp-usb.conf "${ROOTFS_DIR}/etc/ipp-usb/ipp-usb.conf"
install -m 0644 files/avahi-daemon.conf "${ROOTFS_DIR}/etc/avahi/avahi-daemon.conf"
