"""hal/panel: the operation panel, what a person at the MFP sees and touches.

The firmware shows one *screen document* at a time and takes the person's actions through the
panel socket (`firmware/panel_api.py`; the protocol is documented there): a narrow local API, not
the root control socket. Implementations, chosen by config (`panel.kind`, a comma list):

- `web` (`hal/panel/web.py`): an unprivileged service on the device's loopback that renders the
  screen for a kiosk browser (`systemd/tenantprint-kiosk.service`: cage + chromium) and relays the
  person's touches (PIN digits, choose, delete, print all, log out, language) to the panel socket;
- `keypad` (`hal/panel/keypad.py`): a USB numeric keypad read through evdev, grabbed, for PIN
  entry on devices without a touchscreen; it runs inside the firmware and hands PINs over directly.

A panel process holds no org data beyond what the current screen shows.
"""
