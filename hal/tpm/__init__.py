"""hal/tpm: the device's IKE/TLS key inside a TPM 2.0 (issue 18).

Where the Pi has a TPM 2.0 (a TPM HAT; the kernel's resource manager `/dev/tpmrm0`), the device's
P-256 certificate key is made inside it and never leaves. What lies on the SD card is a *key
reference file* (`TpmKeyRef`) at the path the rest of the firmware passes around as "the key"
(`<state_dir>/ike.key`):

    TPM key of tenantprint: the private part below is wrapped by the TPM that made it
    TPM-Handle: 0x81010002
    TPM-TCTI: device:/dev/tpmrm0
    TPM-DBus: unix:path=...          (only with the `tabrmd` TCTI: the bus its broker is on)
    -----BEGIN TSS2 PRIVATE KEY-----
    ...
    -----END TSS2 PRIVATE KEY-----

- the PEM block is the key's TSS2 blob (the format of tpm2-openssl and tpm2-tss-engine) under the
  TPM's storage key at `srk_handle`: its private part is encrypted by that TPM's storage seed, so
  the file is useless on another machine or another TPM; OpenSSL with the `tpm2` provider loads it
  (`openssl ... -provider tpm2 -key ike.key`, Python's `ssl` through `hal.tpm.openssl`); the lines
  before it are RFC 7468 explanatory text, which PEM readers skip;
- `TPM-Handle` is the same key made persistent in the TPM: what charon's `tpm` plugin signs with
  (VICI `load-token` with that handle), since charon cannot load a TSS2 blob;
- `TPM-TCTI` (and `TPM-DBus`) say how to reach the TPM (TSS2 TCTI syntax `name:conf`), so a
  reader of the file alone (the RadSec client in the secret keeper) reaches it; the device's config
  says it too (`device.tpm_tcti`, `device.tpm_dbus`) for the charons, which need it at start.
  Only the TCTIs charon 5.9.8's `tpm` plugin accepts are taken: `device` (the kernel's resource
  manager, the Pi), `tabrmd` (tpm2-abrmd, the lab's broker in front of swtpm) and `mssim`; it
  refuses any other name ("is not a valid TCTI library name"; measured with `cmd`).

Modules: `hal.tpm.keys` (make the key, its public key, a CSR: tpm2-tools and openssl's `tpm2`
provider as programs), `hal.tpm.openssl` (the `tpm2` provider in this process, for `ssl`).

What does not work with Debian 12's packages and how it is worked around is said where it is met
(tpm2-tools 5.4's `tpm2_encodeobject -p` is inverted; tpm2-openssl 1.1.1 writes a NULL parameter in
ECDSA signature algorithm identifiers, which `cryptography` refuses; OpenSSL 3.0 signs with the
default provider's ECDSA a key the `tpm2` provider holds unless the `tpm2` provider is preferred).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TCTI = "device:/dev/tpmrm0"  # the kernel's resource manager: many processes at once
SRK_HANDLE = 0x81000001   # the TCG's storage root key handle (owner hierarchy), made if absent
KEY_HANDLE = 0x81010002   # the device key's persistent handle (owner range 0x81000000-0x817fffff)
TCTI_NAMES = ("device", "tabrmd", "mssim")  # what charon 5.9.8's tpm plugin accepts
HEADER = "TPM key of tenantprint: the private part below is wrapped by the TPM that made it"
PEM_BEGIN = "-----BEGIN TSS2 PRIVATE KEY-----"
PEM_END = "-----END TSS2 PRIVATE KEY-----"
_HANDLE = re.compile(r"^0x81[0-7][0-9a-f]{5}$")


class TpmError(Exception):
    """Anything about the TPM; messages name the step and the cause, never key material."""


class TpmUnavailable(TpmError):
    """The TPM cannot be reached (no device, no broker, no tool or provider installed)."""


class TpmKeyError(TpmError):
    """The key reference file is not one, or its key is not in the TPM (another TPM, evicted)."""


def check_tcti(tcti: str) -> str:
    """A TCTI config string `name[:conf]` of a TCTI this module knows; ValueError otherwise."""
    name = tcti.split(":", 1)[0]
    if name not in TCTI_NAMES or "\n" in tcti:
        raise ValueError(f"must be a TCTI config `name:conf` with name one of {', '.join(TCTI_NAMES)}")
    return tcti


def check_dbus(address: str) -> str:
    """A D-Bus address for the `tabrmd` TCTI's session bus (`unix:path=/abs/path`), or ""."""
    if address and not re.match(r"^unix:path=/[^\s,;]+$", address):
        raise ValueError("must be a D-Bus address unix:path=/an/absolute/path, or empty")
    return address


def check_handle(handle: str) -> int:
    """A persistent handle of the owner hierarchy (`0x81000000`-`0x817fffff`) as an int."""
    if not _HANDLE.match(handle.lower()):
        raise ValueError("must be a persistent handle 0x81000000-0x817fffff, e.g. 0x81010002")
    return int(handle, 16)


@dataclass(frozen=True)
class TpmConfig:
    """How the device reaches its TPM and where its key lives there."""

    tcti: str = DEFAULT_TCTI
    key_handle: int = KEY_HANDLE
    srk_handle: int = SRK_HANDLE
    # the `tabrmd` TCTI's session bus (the lab's private one); "": the TCTI needs no bus
    dbus_address: str = ""

    def __post_init__(self):
        check_tcti(self.tcti)
        check_dbus(self.dbus_address)
        for h in (self.key_handle, self.srk_handle):
            check_handle(f"0x{h:08x}")
        if self.key_handle == self.srk_handle:
            raise ValueError("the key and the storage key need two handles")

    def env(self) -> dict[str, str]:
        """The environment tpm2-tools and openssl's `tpm2` provider find the TPM with."""
        return {"TPM2TOOLS_TCTI": self.tcti, "TPM2OPENSSL_TCTI": self.tcti, **self.charon_env()}

    def charon_env(self) -> dict[str, str]:
        """What charon's environment needs besides its strongswan.conf (the broker's bus)."""
        return {"DBUS_SESSION_BUS_ADDRESS": self.dbus_address} if self.dbus_address else {}

    def charon_plugin(self) -> str:
        """The `tpm` plugin's section of a strongswan.conf (inside `charon.plugins`): the TCTI
        (strongSwan 5.9.8 reads `tcti.name`/`tcti.opts` once, when the plugin loads), and the
        TPM is not charon's random source."""
        name, _, opts = self.tcti.partition(":")
        quoted = opts.replace("\\", "\\\\").replace('"', '\\"')
        return (f"    tpm {{\n      use_rng = no\n      tcti {{\n        name = {name}\n"
                f"        opts = \"{quoted}\"\n      }}\n    }}\n")


@dataclass(frozen=True)
class TpmKeyRef:
    """What a key reference file says (see the module docstring)."""

    path: Path
    handle: int
    tcti: str
    dbus_address: str = ""

    @property
    def config(self) -> TpmConfig:
        return TpmConfig(tcti=self.tcti, key_handle=self.handle, dbus_address=self.dbus_address)

    @property
    def token_handle(self) -> str:
        """The handle as VICI `load-token` takes it (hex, no 0x)."""
        return f"{self.handle:08x}"


def render_ref(config: TpmConfig, pem: str) -> str:
    """The text of a key reference file for the key at `config.key_handle`."""
    if PEM_BEGIN not in pem:
        raise TpmKeyError("not a TSS2 private key blob")
    bus = f"TPM-DBus: {config.dbus_address}\n" if config.dbus_address else ""
    return f"{HEADER}\nTPM-Handle: 0x{config.key_handle:08x}\nTPM-TCTI: {config.tcti}\n{bus}{pem.strip()}\n"


def parse_ref(text: str, path: Path | str = "") -> TpmKeyRef | None:
    """The reference in `text`, None when `text` holds no TSS2 key (a key in a PEM file: the file
    key store); `TpmKeyError` when it holds one without a valid handle and TCTI."""
    if PEM_BEGIN not in text:
        return None
    head = text.split(PEM_BEGIN, 1)[0]
    fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    try:
        return TpmKeyRef(Path(path), check_handle(fields.get("TPM-Handle", "")), check_tcti(fields.get("TPM-TCTI", "")),
                         check_dbus(fields.get("TPM-DBus", "")))
    except ValueError as exc:
        raise TpmKeyError(f"key reference {path}: {exc}") from None


def read_ref(path: Path | str) -> TpmKeyRef | None:
    """The TPM key reference in the file at `path`, None when it is a key of the file key store
    (or absent); `TpmKeyError` when it is a broken reference."""
    try:
        with open(path, "r", errors="replace") as f:
            text = f.read(16384)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TpmKeyError(f"key reference {path}: {exc.strerror or exc}") from None
    return parse_ref(text, path)


def is_tpm_key(path: Path | str) -> bool:
    """Whether the key file at `path` is a TPM key reference (no exception: False when unreadable)."""
    try:
        return read_ref(path) is not None
    except TpmKeyError:
        return True
