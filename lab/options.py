"""How a lab was brought up (`lab up` flags), remembered in its state directory so that later
commands (`status`, `tap`, `down`) see the same lab."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

BACKENDS = ("auto", "kernel", "libipsec")
TRUSTS = ("psk", "cert")  # how the MFP proves itself to the orgs (`lab up --trust`, issue 18)
ENGINES = ("pdf", "pwg-only", "urf-only")  # what the lab's print engine takes (lab/services/engine.py)
MFP_KINDS = ("netns", "vm")  # the MFP on the office host itself, or a QEMU guest booted from the twin image
PANEL_ACTIONS = ("screen", "choose-next", "print", "delete", "logout", "pin-cancel")  # `lab panel` (lab/actions.py)


@dataclass(frozen=True)
class LabOptions:
    wan_rtt_ms: float = 0.0
    tunnel_backend: str = "auto"
    combined: bool = False  # acme's profile uses combined mode (one tap connects and authenticates)
    ldap: tuple[str, ...] = ()  # orgs whose users their slapd checks instead of their FreeRADIUS
    engine: str = "pdf"  # the print engine's formats: one of ENGINES
    extra_orgs: int = 0  # contracted orgs beyond acme and globex, each with its gateway (lab/orgs.py EXTRA_ORGS)
    # cert: the MFP's own certificate from the space's CA opens the orgs' tunnels, RadSec and an LDAP
    # org's directory (SASL EXTERNAL); the profiles hold no org secret
    trust: str = "cert"
    # the MFP's device key inside a TPM 2.0 (swtpm behind tpm2-abrmd on office, lab/services/swtpm.py)
    tpm: bool = False
    # netns: the firmware runs on the office host; vm: the MFP is a QEMU guest booted from the amd64
    # twin image, the firmware the image's systemd service (lab/services/mfp_vm.py)
    mfp: str = "netns"

    def __post_init__(self):
        from lab.orgs import CONTRACTED, contracted

        contracted(self.extra_orgs)  # raises ValueError out of range
        object.__setattr__(self, "ldap", tuple(sorted(set(self.ldap))))  # as saved and loaded
        for org in self.ldap:
            if org not in CONTRACTED:
                raise ValueError(f"--ldap {org}: not one of the lab's organizations ({', '.join(CONTRACTED)})")
        if self.tunnel_backend not in BACKENDS:
            raise ValueError(f"tunnel backend must be one of {', '.join(BACKENDS)}")
        if self.trust not in TRUSTS:
            raise ValueError(f"trust must be one of {', '.join(TRUSTS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.mfp not in MFP_KINDS:
            raise ValueError(f"mfp must be one of {', '.join(MFP_KINDS)}, not {self.mfp!r}")
        if self.mfp == "vm" and self.tpm:
            raise ValueError("--tpm is not built for --mfp vm (the guest has no TPM)")
        if self.mfp == "vm" and self.tunnel_backend == "libipsec":
            raise ValueError("--mfp vm runs the kernel tunnel backend (the lab layer's firmware.toml)")
        if not 0 <= self.wan_rtt_ms <= 2000:
            raise ValueError("wan-rtt-ms must be between 0 and 2000")

    def save(self, root: Path) -> None:
        (root / "options.json").write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, root: Path) -> "LabOptions":
        try:
            return cls(**json.loads((root / "options.json").read_text()))
        except (OSError, ValueError, TypeError):
            return cls()
