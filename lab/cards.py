"""The lab's registered UID-only cards: card id -> (org, user).

A card known only by its UID reaches the firmware as a card id (`card-<uid hex>`, see
`hal.directory.CARD_ID_RE`); the lab's cloud registers each of these to its org in the lab's space
(`lab.services.cloud.seed`), and the org's auth server maps it to the user. UIDs are not secrets:
such a card always needs the user's PIN.
"""

from __future__ import annotations

LAB_CARDS: dict[str, tuple[str, str]] = {
    "card-04c0ffee5a1e01": ("acme", "bob"),  # bob's staff card (7-byte NFC UID)
    "card-20260042": ("acme", "bob"),        # bob's proximity badge, read by the wedge reader
    "card-04beef00cafe02": ("globex", "heidi"),  # heidi's staff card (globex: RADIUS or its LDAP)
}
