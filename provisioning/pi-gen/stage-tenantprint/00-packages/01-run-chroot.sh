#!/bin/bash -e
# Never on a device: vpcd (virtual smart-card reader) listens on all interfaces; the
# avahi/cups-browsed pair would announce queues on the coworking LAN; the legacy ipsec starter
# would start a second charon.
apt-get purge -y vsmartcard-vpcd cups-browsed avahi-daemon strongswan-starter
apt-get autoremove -y
