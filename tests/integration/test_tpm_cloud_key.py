"""The device's cloud-signing key inside the TPM (issue 18), against swtpm and the real cloud app:
enrolment makes a P-256 key inside the TPM (a TPM has no Ed25519), `device.key` is only its
reference, and the device's signed lookups and certificate requests are signed inside the TPM and
accepted; the reference file alone, without that TPM, signs nothing."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from test_tpm_device_key import tpm  # noqa: F401 (the office's swtpm, a fixture)

from hal.directory import DirectoryRefused
from hal.directory.client import DirectoryClient, enrol, load_key
from hal.tpm.signer import CLOUD_KEY_HANDLE, TpmSigner
from lab.services.swtpm import SwtpmService

WIRE = {"org_id": "acme", "ttl_s": 300,
        "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1.space-1", "remote_id": "gw.acme",
                "auth": "psk", "psk": "TPCANARY-tpmtest-psk-0123456789abcdef0123456789abcdef", "ca_cert_pem": None,
                "ike_proposals": ["aes256gcm16-prfsha384-x25519"], "esp_proposals": ["aes256gcm16"],
                "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
        "auth": {"kind": "radius", "host": "10.20.0.50", "port": 1812,
                 "secret": "TPCANARY-tpmtest-radius-0123456789abcdef0123456789abcdef",
                 "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2},
        "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}


@pytest.fixture
def cloud(tmp_path):
    from cloud.admin import Admin
    from cloud.api import create_app
    from cloud.crypto import Keyring, new_kek, write_kek_file
    from cloud.storage import migrate, open_engine

    kek = tmp_path / "kek"
    write_kek_file(kek, [new_kek()])
    engine = open_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    migrate(engine)
    admin = Admin(engine, Keyring(kek))
    admin.add_space("space-1")
    admin.add_org("acme")
    admin.set_profile("acme", WIRE)
    admin.add_contract("acme", "space-1")
    http = TestClient(create_app(engine, Keyring(kek)), base_url="http://testserver")
    yield admin, http
    http.close()
    engine.dispose()


def test_the_cloud_key_is_made_in_the_tpm_and_signs_there(lab, tpm, cloud, tmp_path):
    admin, http = cloud
    config = tpm.config(lab)
    token = admin.enrol_token("space-1", "mfp-1.space-1")["token"]
    state = tmp_path / "state"
    t0 = time.perf_counter()
    device = enrol("http://testserver", token, state, http=http, tpm=config)
    enrol_ms = (time.perf_counter() - t0) * 1000
    text = device.key_path.read_text()
    assert "BEGIN TSS2 PRIVATE KEY" in text and "BEGIN PRIVATE KEY" not in text
    with pytest.raises((ValueError, TypeError)):
        serialization.load_pem_private_key(text.encode(), password=None)
    signer = load_key(device.key_path)
    assert isinstance(signer, TpmSigner) and signer.ref.handle == CLOUD_KEY_HANDLE
    # what the cloud holds is the TPM's P-256 key
    with admin.engine.connect() as c:
        from sqlalchemy import text as sql
        stored = c.execute(sql("SELECT public_key FROM device WHERE id = 'mfp-1.space-1'")).scalar()
    assert bytes(stored) == signer.public_key().public_bytes(serialization.Encoding.X962,
                                                             serialization.PublicFormat.UncompressedPoint)
    client = DirectoryClient("http://testserver", device.device_id, device.key_path, http=http)
    t0 = time.perf_counter()
    profile = client.fetch_profile("acme")
    lookup_ms = (time.perf_counter() - t0) * 1000
    assert profile.org_id == "acme"
    profile.wipe()
    print(f"\nenrolment with the key made in the TPM {enrol_ms:.0f} ms, a lookup signed in it {lookup_ms:.0f} ms")
    # the reference alone, on a machine without that TPM: no signature, so no lookup
    loot = tmp_path / "loot"
    loot.mkdir()
    shutil.copy2(device.key_path, loot / "device.key")
    other = SwtpmService("cowork")  # another TPM: the thief's own
    other.start(lab)
    try:
        thief_ref = (loot / "device.key").read_text().replace(config.dbus_address, other.config(lab).dbus_address)
        (loot / "device.key").write_text(thief_ref)
        with pytest.raises(DirectoryRefused):
            DirectoryClient("http://testserver", device.device_id, loot / "device.key", http=http).fetch_profile("acme")
    finally:
        other.stop(lab)
    assert Path(device.key_path).exists()
