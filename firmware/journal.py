"""Structured log lines for the journal: `event=... state=... org=...` key=value fields on stderr.

journald captures stderr of the unit; the fields make `journalctl -u tenantprint-firmware | grep org=acme`
useful. Nothing secret is ever passed here: card UIDs go through
`hal.card.mask_uid`, PINs never at all.
"""

from __future__ import annotations

import logging
import re
import sys

_SAFE = re.compile(r"^[A-Za-z0-9._:/@+-]*$")

log = logging.getLogger("tenantprint.firmware")


def _value(v: object) -> str:
    s = "-" if v is None else str(v)
    return s if _SAFE.match(s) else '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def fields(**kv: object) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in kv.items())


def record(what: str, /, *, level: int = logging.INFO, **kv: object) -> None:
    log.log(level, "%s %s", what, fields(**kv))


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("tenantprint")
    root.handlers[:] = [handler]
    root.setLevel(level)
