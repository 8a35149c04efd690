"""The scenarios, on whatever bench the environment file names (`TP_HIL_ENV`, default the namespace
lab; tests/hil/envs/): the same code for the namespace lab, the VM MFP and a real Raspberry Pi. On a
real Pi a person taps; in CI the lab's virtual card does. A scenario that needs a feature the bench
lacks (hil_bench.py lists them) skips with the reason."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hil_bench import BenchError, load
from prereq import need_root

HERE = Path(__file__).parent
ENV = Path(os.environ.get("TP_HIL_ENV", HERE / "envs" / "lab.toml"))
DOC = "/usr/share/cups/data/default-testpage.pdf"


@pytest.fixture(scope="module")
def bench():
    if not ENV.exists():
        pytest.skip(f"no bench: environment file {ENV} not found (see tests/hil/envs/pi.example.toml)")
    if ENV.parent == HERE / "envs" and ENV.name != "pi.example.toml":
        need_root()  # the lab benches build a lab on this machine
    b = load(ENV)
    yield b
    b.close()


def needs(bench, *features: str) -> None:
    missing = [f for f in features if f not in bench.features]
    if missing:
        pytest.skip(f"the bench in {ENV.name} has no {', '.join(missing)}")


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except BenchError:
            last = None  # the MFP rebooting or restarting: asked again
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def at_rest(bench, timeout: float = 120) -> dict:
    # a hung or rebooting daemon's status has no "state" (the lab says why instead): not at rest
    return wait_for(lambda: (st := bench.status()).get("state") == "idle" and not st.get("sessions") and st,
                    timeout, "the MFP at rest")


def ready(bench) -> dict:
    st = bench.tap(bench.org, bench.user)
    assert st["state"] == "ready" and st["org"] == bench.org, st.get("panel")
    return st


def test_the_firmware_is_up_and_its_panel_says_something(bench):
    st = bench.status()
    assert st["state"] in ("idle", "ready") and st["panel"]


def test_the_self_check_passes(bench):
    needs(bench, "self-check")
    report = bench.self_check()
    assert report["ok"], [c for c in report["checks"] if c["required"] and not c["ok"]]
    if "kernel-xfrm" in bench.features:
        assert next(c for c in report["checks"] if c["name"] == "tunnel")["detail"].startswith("backend kernel")


def test_a_tap_opens_the_session_and_the_tunnel(bench):
    needs(bench, "tunnel")
    st = ready(bench)
    assert st["tunnel"]["up"] and st["tunnel"]["virtual_ip"]
    if "kernel-xfrm" in bench.features:  # the production path: the kernel's ESP, not charon's TUN
        assert st["tunnel"]["backend"] == "kernel"


def test_a_desk_job_waits_for_its_owner_and_prints_once_after_the_tap(bench):
    """Claims 1-4: the desk's queue comes with the session, its job is held on the MFP, and the
    owner's tap (their org's server says yes through the tunnel) releases it to the engine."""
    needs(bench, "card-actuator", "tunnel", "org-desk", "print-record")
    ready(bench)
    wait_for(lambda: bench.desk_queue(bench.org), 30, "the desk's queue for the MFP")
    before = len(bench.printed())
    bench.print_from_desk(bench.org, bench.user, DOC)
    wait_for(lambda: [j["user"] for j in bench.status()["held_jobs"]] == [bench.user], 60, "the job held")
    assert len(bench.printed()) == before  # held: nothing printed before the owner is there
    bench.tap(bench.org, bench.user)
    wait_for(lambda: len(bench.printed()) > before, 90, "the job printed")
    time.sleep(1)
    assert [p["user"] for p in bench.printed()[before:]] == [bench.user]  # once
    assert bench.status()["held_jobs"] == []


def test_the_tunnels_death_ends_the_session_and_leaves_no_secret(bench):
    """Claim 5: the tunnel drops, the MFP purges every trace of the org."""
    needs(bench, "card-actuator", "tunnel", "gateway-fault", "secret-scan")
    ready(bench)
    bench.fault("gateway-kill", bench.org)
    try:
        at_rest(bench, 90)
    finally:
        bench.fault("gateway-start", bench.org)
    scan = bench.scan_secrets()
    assert scan["clean"], scan["findings"]


def test_a_power_cut_mid_session_leaves_nothing_of_the_org(bench):
    needs(bench, "card-actuator", "tunnel", "power-cut", "secret-scan")
    ready(bench)
    bench.fault("mfp-power-cut")
    st = at_rest(bench, 600)  # a boot under emulation is slow
    assert st["org"] is None and st["tunnel"]["up"] is False
    scan = bench.scan_secrets()
    assert scan["clean"], scan["findings"]


def test_a_hung_firmware_is_restarted_by_the_watchdog_and_its_session_purged(bench):
    needs(bench, "card-actuator", "tunnel", "watchdog")
    ready(bench)
    bench.fault("firmware-hang")
    st = at_rest(bench, 300)  # WatchdogSec=30, then the restart's boot purge
    assert st["org"] is None
    if "secret-scan" in bench.features:
        scan = bench.scan_secrets()
        assert scan["clean"], scan["findings"]
    ready(bench)  # and it serves again


def test_without_network_time_the_panel_says_so_and_time_brings_service(bench):
    needs(bench, "clock-control", "card-actuator", "tunnel")
    bench.fault("ntp-block")
    try:
        st = wait_for(lambda: (s := bench.status()).get("clock", {}).get("synchronised") is False and s, 600,
                      "the MFP up without network time")
        assert "Clock not synchronised" in st["panel"]
        st = bench.tap(bench.org, bench.user)
        assert st["state"] == "idle" and st["org"] is None
    finally:
        bench.fault("ntp-unblock")
    wait_for(lambda: bench.status().get("clock", {}).get("synchronised"), 120, "network time")
    ready(bench)


def test_bench_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, error in (('[bench]\nkind = "lab"\nfeatures = ["teleport"]\n', "unknown features"),
                        ('[bench]\nkind = "lab"\nmfp = "cloud"\n', "bench.mfp"),
                        ('[bench]\nkind = "ssh"\n', "bench.host"),
                        ('[bench]\nkind = "lab"\ncolour = 1\n', "unknown keys"),
                        ('[bench]\nkind = "serial"\n', "bench.kind")):
        bad.write_text(text)
        with pytest.raises(BenchError, match=error):
            load(bad)
