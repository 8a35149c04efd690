"""Daemons the lab runs on its hosts, in start order.

A service is an object with `name`, `start(lab)`, `stop(lab)` and `status(lab) -> dict`. `start`
is idempotent (a running service is left alone); processes go through `lab.procs` so that they are
stopped by PID only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lab.lab import Lab


class Service(Protocol):
    name: str

    def start(self, lab: "Lab") -> None: ...

    def stop(self, lab: "Lab") -> None: ...

    def status(self, lab: "Lab") -> dict: ...


def default_services() -> list[Service]:
    """The services `lab up` starts, in order (stopped in reverse)."""
    return []
