#!/bin/bash -e
# Never on a device: vpcd (virtual smart-card reader) listens on all interfaces; cups-browsed
# would announce and adopt queues on the coworking LAN; the legacy ipsec starter would start a
# second charon. avahi-daemon stays installed (ipp-usb depends on it; purging it purges ipp-usb)
# but is masked and publishes nothing: see 03-printer.
apt-get purge -y vsmartcard-vpcd cups-browsed strongswan-starter
apt-get autoremove -y
