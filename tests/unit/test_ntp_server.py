"""The lab's SNTP server (lab/ntp_server.py): what systemd-timesyncd checks in a reply (mode 4,
a synchronised leap indicator, stratum 1-15, its own transmit time echoed as the origin, a small
root distance) and refusals of what is not a client request. The guest's timesyncd accepting it
is tests/vm's."""

import struct

import pytest

from lab.ntp_server import PACKET, NtpError, answer, from_ntp, to_ntp


def request(version=4, mode=3, transmit=0x1234_5678_9ABC_DEF0) -> bytes:
    return PACKET.pack((version << 3) | mode, 0, 0, 0, 0, 0, b"\0" * 4, 0, 0, 0, transmit)


def test_a_reply_is_what_timesyncd_accepts():
    reply = answer(request(), received=1_700_000_000.25, now=1_700_000_000.5)
    first, stratum, _poll, _prec, root_delay, root_disp, _ref, _reft, origin, recv, xmit = PACKET.unpack(reply)
    assert len(reply) == 48
    assert first >> 6 == 0 and (first >> 3) & 7 == 4 and first & 7 == 4  # in sync, v4, server
    assert 1 <= stratum <= 15 and root_delay == 0 and root_disp == 0
    assert origin == 0x1234_5678_9ABC_DEF0
    assert from_ntp(recv) == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert from_ntp(xmit) == pytest.approx(1_700_000_000.5, abs=1e-6)


def test_the_version_is_the_clients():
    first = PACKET.unpack(answer(request(version=3), 1.0, 1.0))[0]
    assert (first >> 3) & 7 == 3


def test_timestamps_round_trip():
    assert from_ntp(to_ntp(1_764_720_000.125)) == pytest.approx(1_764_720_000.125, abs=1e-6)
    assert to_ntp(0) >> 32 == 2208988800


@pytest.mark.parametrize("data", [b"", b"\x23" * 47, request(mode=4), request(mode=1), request(version=0),
                                  struct.pack("!B", 0x1b) + b"\0" * 10])
def test_what_is_not_a_client_request_is_refused(data):
    with pytest.raises(NtpError):
        answer(data, 1.0, 1.0)
