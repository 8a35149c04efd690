"""`lab up --wan-rtt-ms`: the userspace WAN delay adds the round trip between office and WAN only."""

import re

from lab.services.wan_delay import WanDelayService


def _avg_rtt_ms(host, dst: str) -> float:
    out = host.run(["ping", "-c4", "-i", "0.2", "-W", "2", dst]).stdout.decode()
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def test_wan_rtt_is_added_between_office_and_wan_only(lab):
    office = lab.host("office")
    base = _avg_rtt_ms(office, "10.78.0.2")
    delay = WanDelayService(40)
    try:
        delay.start(lab)
        assert delay.status(lab)["running"]
        delayed = _avg_rtt_ms(office, "10.78.0.2")
        local = _avg_rtt_ms(office, "10.77.0.20")
    finally:
        delay.stop(lab)
    assert 39 <= delayed - base <= 60, (base, delayed)
    assert local < 10  # the office LAN itself is not delayed
    assert _avg_rtt_ms(office, "10.78.0.2") < 10  # and stopping removes the delay
