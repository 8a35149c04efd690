"""The gateway agent's outcomes (org/gateway_agent.py, issue 14): the strict parser of what an MFP
posts, the bounded versioned store the desks long-poll, the session names of the MFP listing, and
the HTTP handler on loopback (the source check with a registry that lists 127.0.0.1 as an MFP; the
real tunnel is in tests/integration/test_no_job_lost.py)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from org.gateway_agent import (MAX_OUTCOME_BODY, GatewayAgent, MfpRegistry, OutcomesRefused, OutcomeStore,
                               connected_mfps, parse_outcomes, session_id)

D1, D2 = "0" * 31 + "1", "ab" * 16


def _body(outcomes) -> bytes:
    return json.dumps({"outcomes": outcomes}).encode()


def test_a_well_formed_report_parses():
    got = parse_outcomes(_body([{"delivery": D1, "state": "released"}, {"state": "expired", "delivery": D2}]))
    assert got == [(D1, "released"), (D2, "expired")]
    assert parse_outcomes(_body([{"delivery": D1, "state": "deleted"}] * 100)) == [(D1, "deleted")] * 100


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b"{}", b'{"outcomes": []}', b"not json", b"\xff\xfe",
    _body([{"delivery": D1, "state": "lost"}]),
    _body([{"delivery": D2.upper(), "state": "released"}]),
    _body([{"delivery": D1[:-1], "state": "released"}]),
    _body([{"delivery": D1 + "0", "state": "released"}]),
    _body([{"delivery": int("1" * 30), "state": "released"}]),
    _body([{"delivery": D1, "state": "released", "mfp": "other"}]),  # the source names the MFP
    _body([{"delivery": D1}]), _body([[D1, "released"]]), _body([None]),
    _body([{"delivery": D1, "state": "released"}] * 101),
    json.dumps({"outcomes": [{"delivery": D1, "state": "released"}], "extra": 1}).encode(),
    b'{"outcomes": [{"delivery": "%s", "state": "released", "state": "expired"}]}' % D1.encode(),
    b'{"outcomes": [{"delivery": "%s", "state": "released"}], "outcomes": []}' % D1.encode(),
    b'{"outcomes": NaN}', b'{"outcomes": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b" " * (MAX_OUTCOME_BODY + 1),
])
def test_anything_else_is_refused(body):
    with pytest.raises(OutcomesRefused):
        parse_outcomes(body)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_the_parser_takes_anything_and_raises_only_its_own_error(body):
    try:
        out = parse_outcomes(body)
    except OutcomesRefused:
        return
    assert out and all(len(d) == 32 and s in ("released", "deleted", "expired") for d, s in out)


class _Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_store_versions_grow_and_a_desk_reads_what_is_new():
    clock = _Clock()
    store = OutcomeStore(clock=clock)
    v0 = store.read()["version"]
    assert v0 == int(clock.t * 1000) and store.read()["outcomes"] == []
    assert store.add("mfp-1", [(D1, "released")]) == 1
    first = store.read(after=v0)
    assert first["version"] > v0
    assert [(o["delivery"], o["state"], o["mfp"]) for o in first["outcomes"]] == [(D1, "released", "mfp-1")]
    assert store.add("mfp-1", [(D1, "released")]) == 0  # the MFP's retry: nothing new, no new version
    assert store.read(after=first["version"])["outcomes"] == []
    clock.t += 1
    assert store.add("mfp-1", [(D2, "expired")]) == 1
    assert [o["delivery"] for o in store.read(after=first["version"])["outcomes"]] == [D2]
    # a version this store never gave (an agent restarted, a desk from elsewhere): everything
    assert len(store.read(after=store.version + 10**9)["outcomes"]) == 2
    # a restarted agent's versions are larger than the old one's
    assert OutcomeStore(clock=_Clock(clock.t + 1)).version > store.version


def test_store_is_bounded_in_time_and_count_and_pages_its_answers():
    clock = _Clock()
    store = OutcomeStore(keep_s=60, limit=1500, clock=clock)
    start = store.version
    store.add("m", [(f"{i:032x}", "released") for i in range(100)])
    clock.t += 61
    assert store.read()["outcomes"] == []  # older than keep_s
    for batch in range(20):
        store.add("m", [(f"{batch * 100 + i:032x}", "deleted") for i in range(100)])
    got, after = [], start
    for _ in range(5):
        page = store.read(after=after)
        assert len(page["outcomes"]) <= OutcomeStore.PAGE
        got += page["outcomes"]
        if page["version"] == after:
            break
        after = page["version"]
    assert len(got) == 1500 and len({o["delivery"] for o in got}) == 1500  # the newest 1500
    assert got[-1]["delivery"] == f"{1999:032x}"


def test_a_long_poll_wakes_on_a_new_outcome():
    store = OutcomeStore()
    v = store.version
    got = {}
    t = threading.Thread(target=lambda: got.update(store.read(after=v, wait=5)))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.05)
    store.add("mfp-1", [(D1, "deleted")])
    t.join(3)
    assert time.monotonic() - t0 < 2 and got["outcomes"][0]["state"] == "deleted"


def _sa(uniqueid: bytes, vip: bytes = b"10.20.0.200", rid: bytes = b"mfp-1.space-1"):
    return {"state": b"ESTABLISHED", "remote-id": rid, "remote-vips": [vip], "uniqueid": uniqueid}


def test_sessions_are_named_by_charon_and_kept_while_an_mfp_stays_listed():
    reg = MfpRegistry()
    reg.replace(connected_mfps([{"m": _sa(b"7")}], charon_started="Dec 01 10:00:00 2026"))
    (first,) = reg.snapshot()["mfps"]
    assert first["session"] == session_id("Dec 01 10:00:00 2026", "7") and len(first["session"]) == 16
    # an IKE rekey (a new unique id, the same MFP at the same address): the same session
    reg.replace(connected_mfps([{"m": _sa(b"9")}], charon_started="Dec 01 10:00:00 2026"))
    assert reg.snapshot()["mfps"][0]["session"] == first["session"]
    assert reg.mfp_at("10.20.0.200") == "mfp-1.space-1" and reg.mfp_at("10.20.0.201") is None
    # gone, and back: another session
    reg.replace({})
    assert reg.mfp_at("10.20.0.200") is None
    reg.replace(connected_mfps([{"m": _sa(b"12")}], charon_started="Dec 01 10:00:00 2026"))
    assert reg.snapshot()["mfps"][0]["session"] != first["session"]
    # an agent restarted while the tunnel lasts names it as before; another charon does not
    assert session_id("Dec 01 10:00:00 2026", "7") == first["session"] != session_id("Dec 01 11:00:00 2026", "7")
    reg.replace(connected_mfps([{"m": _sa(b"3", rid=b"")}]))
    assert reg.mfp_at("10.20.0.200") == "10.20.0.200"  # an MFP without an identity: its address


@pytest.fixture
def agent():
    """The agent's HTTP side on loopback, charon never reached (its follower is not started)."""
    a = GatewayAgent("/nonexistent/charon.vici", ("127.0.0.1", 0))
    t = threading.Thread(target=a.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield a
    a.http.shutdown()
    a.http.server_close()


def _post(agent, body: bytes, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection(*agent.http.server_address, timeout=5)
    try:
        conn.request("POST", "/v1/outcomes", body, {"Content-Type": "application/json", **(headers or {})})
        return conn.getresponse().status
    finally:
        conn.close()


def _get(agent, query: str = "") -> dict:
    conn = http.client.HTTPConnection(*agent.http.server_address, timeout=5)
    try:
        conn.request("GET", "/v1/outcomes" + query)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_http_only_a_listed_mfps_address_may_report(agent):
    report = _body([{"delivery": D1, "state": "released"}])
    assert _post(agent, report) == 403  # 127.0.0.1 is no MFP (yet)
    assert _get(agent)["outcomes"] == []
    agent.registry.replace({"127.0.0.1": {"id": "mfp-1", "virtual_ip": "127.0.0.1", "session": "s"}})
    assert _post(agent, report) == 204
    (got,) = _get(agent)["outcomes"]
    assert (got["delivery"], got["state"], got["mfp"]) == (D1, "released", "mfp-1")
    agent.registry.replace({})
    assert _post(agent, _body([{"delivery": D2, "state": "expired"}])) == 403


def test_http_refuses_bodies_outside_the_contract(agent):
    agent.registry.replace({"127.0.0.1": {"id": "mfp-1", "virtual_ip": "127.0.0.1", "session": "s"}})
    good = _body([{"delivery": D1, "state": "released"}])
    assert _post(agent, good, {"Content-Type": "text/plain"}) == 400
    assert _post(agent, b"x" * (MAX_OUTCOME_BODY + 1)) == 400
    assert _post(agent, _body([{"delivery": D1, "state": "lost"}])) == 400
    conn = http.client.HTTPConnection(*agent.http.server_address, timeout=5)
    conn.putrequest("POST", "/v1/outcomes")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 400
    conn.close()
    assert _get(agent)["outcomes"] == []
    assert _post(agent, good, {"Content-Type": "application/json; charset=utf-8"}) == 204
