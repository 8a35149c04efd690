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


def test_the_guest_is_offered_the_mfps_address_the_router_and_the_ntp_server_by_dhcp(tmp_path):
    """The layer has no network file: the guest runs the image's own (DHCP, NTP from DHCP), and the
    office's dnsmasq offers the MFP's address to the guest's MAC alone, inet as its router and
    office as its NTP server."""
    from lab.services.dhcp import dnsmasq_argv
    from lab.services.mfp_vm import MAC
    from lab.topology import MFP_ADDRESS, MFP_BRIDGE, STAND_INS_ADDRESS, build

    assert not (LAYER / "overlay/etc/systemd/network").exists()
    router = build(mfp="vm").address("inet", "br-lan")
    argv = dnsmasq_argv(tmp_path, MAC, router)
    assert f"--dhcp-host={MAC},{MFP_ADDRESS}" in argv and "--dhcp-ignore=tag:!known" in argv
    assert f"--dhcp-option=option:router,{router}" in argv
    assert f"--dhcp-option=option:ntp-server,{STAND_INS_ADDRESS}" in argv
    assert "--port=0" in argv and f"--interface={MFP_BRIDGE}" in argv  # DHCP only, on the MFP's bridge


def test_the_layer_holds_only_what_build_image_takes():
    assert {p.name for p in LAYER.iterdir()} <= {"packages", "overlay", "customize.sh", "README.md"}
    packages = [w for line in (LAYER / "packages").read_text().splitlines() for w in line.split("#")[0].split()]
    assert "vsmartcard-vpcd" in packages  # the virtual reader is the lab's alone
