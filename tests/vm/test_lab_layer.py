"""The twin's lab layer (provisioning/image/lab-layer) agrees with the lab it serves: no guest
needed. Its firmware.toml loads under the firmware's own schema and names the lab's engine and
office host; its network file gives the guest the MFP's address; it holds nothing but what
build-image takes from a layer."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

LAYER = Path(__file__).resolve().parents[2] / "provisioning" / "image" / "lab-layer"


def test_the_lab_layers_firmware_toml_is_the_labs():
    from firmware import config as fwconfig
    from lab.services.engine import PORT
    from lab.topology import STAND_INS_ADDRESS

    cfg = fwconfig.load(str(LAYER / "overlay/etc/tenantprint/firmware.toml"), required=True)
    engine = urlsplit(cfg.printer.engine_uri)
    assert (engine.scheme, engine.hostname, engine.port) == ("ipp", STAND_INS_ADDRESS, PORT)
    assert cfg.firewall.management == [f"{STAND_INS_ADDRESS}/32"]
    assert cfg.tunnel.backend == "kernel" and cfg.card.kind == "pcsc"


def test_the_guest_takes_the_mfps_address_on_the_office_lan():
    from lab.topology import MFP_ADDRESS, STAND_INS_ADDRESS, build

    network = (LAYER / "overlay/etc/systemd/network/10-tenantprint-lab.network").read_text()
    assert f"Address={MFP_ADDRESS}/24" in network.splitlines()
    inet = build(mfp="vm").address("inet", "br-lan")
    assert f"Gateway={inet}" in network.splitlines()
    # network time from the office's NTP server (lab/services/ntp.py), through networkd to timesyncd
    assert f"NTP={STAND_INS_ADDRESS}" in network.splitlines()


def test_the_layer_holds_only_what_build_image_takes():
    assert {p.name for p in LAYER.iterdir()} <= {"packages", "overlay", "customize.sh", "README.md"}
    packages = [w for line in (LAYER / "packages").read_text().splitlines() for w in line.split("#")[0].split()]
    assert "vsmartcard-vpcd" in packages  # the virtual reader is the lab's alone
