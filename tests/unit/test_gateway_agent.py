"""Gateway agent's pure parts: which MFPs a list-sas answer shows; long-poll registry."""

import threading
import time

from org.gateway_agent import MfpRegistry, connected_mfps


def _sa(state=b"ESTABLISHED", vips=(b"10.20.0.200",), rid=b"mfp-1.space-1"):
    return {"state": state, "remote-id": rid, "remote-vips": list(vips)}


def test_only_established_sas_with_a_virtual_ip():
    sas = [
        {"mfp-1": _sa()},
        {"mfp-2": _sa(state=b"CONNECTING", vips=(b"10.20.0.201",))},
        {"mfp-3": _sa(vips=())},
        {"mfp-4": _sa(vips=(b"not-an-ip",))},
    ]
    assert connected_mfps(sas) == {"10.20.0.200": {"id": "mfp-1.space-1", "virtual_ip": "10.20.0.200"}}


def test_conn_prefix_filters():
    sas = [{"mfp-1": _sa()}, {"site-to-site": _sa(vips=(b"10.20.0.9",))}]
    assert list(connected_mfps(sas, "mfp")) == ["10.20.0.200"]


def test_registry_version_moves_only_on_change_and_long_poll_wakes():
    reg = MfpRegistry()
    assert reg.replace({}) is False and reg.version == 0
    got = {}

    def poll():
        got.update(reg.snapshot(after=0, wait=5))

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.1)
    assert reg.replace(connected_mfps([{"m": _sa()}])) is True
    t.join(2)
    assert got["version"] == 1 and got["mfps"][0]["virtual_ip"] == "10.20.0.200"
    assert reg.replace(connected_mfps([{"m": _sa()}])) is False  # same set: no new version
    assert reg.snapshot(after=1, wait=0.05)["version"] == 1


def test_desk_queues_follow_the_mfp_list():
    from org.desk_agent import wanted_queues

    want = wanted_queues([{"id": "mfp-1.space-1", "virtual_ip": "10.20.0.200"}], "tenantprint")
    (name, q), = want.items()
    assert name == "tenantprint-mfp-1_space-1"
    assert q.uri == "ipp://10.20.0.200:631/printers/tenantprint"
    assert wanted_queues([], "tenantprint") == {}
