"""`tenantprint <part> ...`: dispatch to the part's own CLI (lab, firmware, cloud, org, card)."""

from __future__ import annotations

import importlib
import sys

PARTS = {
    "lab": "lab.cli",
    "firmware": "firmware.cli",
    "cloud": "cloud.cli",
    "org": "org.cli",
    "card": "hal.card.cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in PARTS:
        print("usage: tenantprint {%s} ..." % ",".join(PARTS), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        module = importlib.import_module(PARTS[argv[0]])
    except ModuleNotFoundError as exc:
        if exc.name == PARTS[argv[0]]:
            print(f"tenantprint: '{argv[0]}' is not built yet", file=sys.stderr)
            return 2
        raise
    return int(module.main(argv[1:]) or 0)
