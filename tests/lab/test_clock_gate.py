"""No network time, no session (issue 17, hal/clock): the firmware starts without waiting for NTP,
says "clock not synchronised" on the panel, in its status and its journal, refuses taps, and serves
as soon as the clock is synchronised. In the namespace lab the office's clock is this machine's, so
the lab plays systemd-timesyncd's part (`lab.services.firmware.set_network_time`); on the VM MFP a
real timesyncd and a real NTP server do (tests/vm)."""

from __future__ import annotations

from system import clean_system, lab_cli, system, wait_for  # noqa: F401 (fixtures)

CLOCK_LINE = "Clock not synchronised"


def _firmware() -> dict:
    return lab_cli("status")["firmware"]


def test_without_network_time_no_session_opens_and_the_panel_says_why(clean_system):
    from lab.services.firmware import set_network_time

    fw = clean_system.service("firmware")
    set_network_time(clean_system, False)
    try:
        fw.stop(clean_system)
        fw.start(clean_system)  # it comes up at once: nothing waits for NTP
        st = _firmware()
        assert st["clock"] == {"synchronised": False, "required": True}
        assert st["state"] == "idle" and CLOCK_LINE in st["panel"]
        assert st["screen"] == "out-of-service"
        tapped = lab_cli("tap", "--org", "acme", "--user", "alice")
        assert tapped["state"] == "idle" and tapped["org"] is None and CLOCK_LINE in tapped["panel"]
        st = _firmware()
        assert st["sessions"] == {} and st["tunnel"]["up"] is False
        refused = [a for a in st["audit"] if a.get("event") == "tap-refused"]
        assert refused and refused[-1].get("reason") == "clock-unsynchronised"
    finally:
        set_network_time(clean_system, True)
    st = wait_for(lambda: (f := _firmware())["clock"]["synchronised"] and f, 5, "the clock synchronised")
    assert CLOCK_LINE not in st["panel"] and st["screen"] == "idle"
    st = lab_cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready" and st["org"] == "acme"
