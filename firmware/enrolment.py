"""First boot: make the device key and enrol with the cloud (`tenantprint firmware enrol`).

The private key is generated here, on the device, and never leaves it (with the key store "tpm" it
is made inside the TPM, hal/tpm/signer.py); the cloud learns only the public key. The enrolment record (`<state_dir>/enrolment.json`: device id, space, cloud URL, CA file)
is the last layer of the firmware's configuration. Enrolling an enrolled device does nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from firmware.config import FirmwareConfig, device_tpm
from hal.directory import DirectoryError
from hal.directory.client import enrol as directory_enrol


def enrol(cfg: FirmwareConfig, cloud_url: str, token_file: Path, ca_file: str = "") -> int:
    state = Path(cfg.device.state_dir)
    record_path = state / "enrolment.json"
    if record_path.exists():
        print(f"already enrolled ({record_path})")
        return 0
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        print(f"tenantprint firmware enrol: cannot read the token file: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        device = directory_enrol(cloud_url, token, state, ca_file or None, timeout=cfg.cloud.timeout_s,
                                 tpm=device_tpm(cfg))  # key store "tpm": the key made inside the TPM
    except DirectoryError as exc:
        print(f"tenantprint firmware enrol: {exc}", file=sys.stderr)
        return 1
    record = {"device_id": device.device_id, "space_id": device.space_id, "cloud_url": cloud_url,
              "ca_file": ca_file}
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, record_path)
    print(json.dumps({"enrolled": True, "device_id": device.device_id, "space_id": device.space_id}))
    return 0
