"""Where the lab keeps its things, and what it names them.

Every lab object carries the prefix (default `tp`, `TP_LAB_PREFIX`), so that `down` can find all of
them and nothing else: namespaces `<prefix>-<host>`, one state directory (`TP_LAB_DIR`, default
`/var/tmp/tenantprint-lab/<prefix>`) holding every host's /run and /tmp, every log, pid record,
generated config and key of the lab.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")


@dataclass(frozen=True)
class LabLayout:
    prefix: str
    root: Path

    @classmethod
    def from_env(cls) -> "LabLayout":
        prefix = os.environ.get("TP_LAB_PREFIX", "tp")
        if not _PREFIX.match(prefix):
            raise ValueError("TP_LAB_PREFIX must be 1-6 lowercase letters/digits, starting with a letter")
        base = Path(os.environ.get("TP_LAB_DIR", "/var/tmp/tenantprint-lab"))
        return cls(prefix=prefix, root=base / prefix)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    def run_dir(self, host: str) -> Path:
        """The directory a host sees as /run."""
        return self.host_dir(host) / "run"

    def tmp_dir(self, host: str) -> Path:
        """The directory a host sees as /tmp."""
        return self.host_dir(host) / "tmp"

    @property
    def mnt_dir(self) -> Path:
        """Holds the persistent mount-namespace handles of the hosts (a private bind mount)."""
        return self.root / "mnt"

    def mnt_handle(self, host: str) -> Path:
        return self.mnt_dir / host

    @property
    def procs_dir(self) -> Path:
        return self.root / "procs"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def data_dir(self, part: str) -> Path:
        """Generated configuration and state of one lab part (engine, cloud, gateway-acme, ...)."""
        return self.root / "data" / part
