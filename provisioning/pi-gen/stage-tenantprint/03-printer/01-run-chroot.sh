#!/bin/bash -e
# The firmware runs its own cupsd per session, in RAM, on localhost:631. The system cupsd that
# cups-daemon brings would take that port (every session's cupsd would then fail to bind) and
# spool to the SD card: masked, so neither a socket, a path unit nor a package upgrade starts it.
systemctl disable cups.service cups.socket cups.path
systemctl mask cups.service cups.socket cups.path
# cups-browsed is purged in 00-packages; masked too in case a later install brings it back.
systemctl mask cups-browsed.service

# avahi-daemon: masked rather than only told not to publish. Nothing here needs it: ipp-usb with
# dns-sd = disable never talks to it (it works without avahi, see ipp-usb(8)), the firmware
# reaches a printer by its URI (ipp-usb's localhost port or a configured ipp:// address), and
# the per-session cupsd does not browse. A running avahi would still listen on udp 5353 on every
# interface; masked (which overrides the enabling its package did), nothing of it runs.
# ipp-usb.service only Wants= it, so ipp-usb starts regardless.
systemctl mask avahi-daemon.service avahi-daemon.socket
