#!/bin/bash -e
# Never on a device: vpcd (virtual smart-card reader) listens on all interfaces; cups-browsed
# would announce and adopt queues on the coworking LAN. avahi-daemon stays installed (ipp-usb
# depends on it; purging it purges ipp-usb) but is masked and publishes nothing: see 03-printer.
# So does strongswan-starter (strongswan-charon depends on it), masked: see 01-tenantprint.
apt-get purge -y vsmartcard-vpcd cups-browsed
apt-get autoremove -y
