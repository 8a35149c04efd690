"""The web panel's pure parts: who may talk to it (listen address, peer, Host, Origin), what bodies
it takes (PIN bytes, actions, language), what a view shows (translated, nothing of the org once the
screen is idle), the shared feed's language rule, and the handler's refusal of a non-loopback peer.
The service over real HTTP is tests/integration/test_web_panel_service.py."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from hypothesis import given, strategies as st

from hal.panel import web_rules as rules
from hal.panel import web_view
from hal.panel.client import PanelClient, is_pin_digits, wipe
from hal.panel.web import PanelRequestHandler, WebPanelServer
from hal.panel.web_feed import ScreenFeed
from hal.panel.web_rules import NotLoopback, Refused

PORT = 8650
JOBS_DOC = {"version": 5, "screen": "jobs", "session": 3, "org": "acme", "user": "alice",
            "line": {"key": "your-jobs", "fields": {"user": "alice"}}, "printer": "printer-paper-out",
            "queue": None, "pin": None, "others": 2, "idle_in_s": 25, "lang": "en", "printing": [],
            "jobs": [{"id": 12, "title": "Q3\x1b[31m report\n<script>", "pages": 3, "size": 20480, "at": "23:40"},
                     {"id": 13, "title": "x" * 500, "pages": None, "size": 2048, "at": "23:41"},
                     {"id": True, "title": "not a job"}, "junk"]}


# -- where it listens, who may talk to it ---------------------------------------------------------

@pytest.mark.parametrize("text,expected", [("127.0.0.1:8650", ("127.0.0.1", 8650)), ("127.0.0.2:0", ("127.0.0.2", 0)),
                                           ("[::1]:8650", ("::1", 8650)), ("localhost:80", ("127.0.0.1", 80))])
def test_loopback_listen_addresses(text, expected):
    assert rules.listen_address(text) == expected


@pytest.mark.parametrize("text", ["0.0.0.0:8650", "[::]:8650", "10.77.0.10:8650", "::1:8650", "example.com:80",
                                  "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":8650"])
def test_any_other_listen_address_is_refused(text):
    with pytest.raises(NotLoopback):
        rules.listen_address(text)


def test_the_server_refuses_to_start_elsewhere():
    with pytest.raises(NotLoopback):
        WebPanelServer("0.0.0.0:0", PanelClient("/nonexistent"))


@pytest.mark.parametrize("ip,ok", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
                                   ("::ffff:127.0.0.1", True), ("10.77.0.20", False), ("10.20.0.50", False),
                                   ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False), ("", False), ("x", False)])
def test_peers(ip, ok):
    if ok:
        rules.check_peer(ip)
    else:
        with pytest.raises(Refused) as refused:
            rules.check_peer(ip)
        assert refused.value.status == 403


@pytest.mark.parametrize("host,ok", [("127.0.0.1:8650", True), ("localhost:8650", True), ("LocalHost:8650", True),
                                     ("[::1]:8650", True), (None, False), ("", False), ("127.0.0.1", False),
                                     ("127.0.0.1:8651", False), ("rebound.example:8650", False),
                                     ("127.0.0.2:8650", False), ("localhost.:8650", False), ("0x7f.1:8650", False)])
def test_host_header(host, ok):
    if ok:
        rules.check_host(host, PORT)
    else:
        with pytest.raises(Refused):
            rules.check_host(host, PORT)


@pytest.mark.parametrize("origin,site,ok", [(None, None, True), ("http://127.0.0.1:8650", "same-origin", True),
                                            ("http://localhost:8650", None, True), (None, "none", True),
                                            ("null", None, False), ("https://127.0.0.1:8650", None, False),
                                            ("http://evil.example", None, False), ("http://127.0.0.1:8651", None, False),
                                            (None, "cross-site", False), (None, "same-site", False)])
def test_origin(origin, site, ok):
    if ok:
        rules.check_origin(origin, site, PORT)
    else:
        with pytest.raises(Refused):
            rules.check_origin(origin, site, PORT)


def test_bodies_have_a_type_and_a_bounded_length():
    assert rules.check_content("application/json; charset=utf-8", "12", False, "application/json", 100) == 12
    for args, status in [(("text/plain", "4", False), 415), ((None, "4", False), 415),
                         (("application/json", None, False), 411), (("application/json", "4", True), 411),
                         (("application/json", "-1", False), 411), (("application/json", "101", False), 413)]:
        with pytest.raises(Refused) as refused:
            rules.check_content(*args, "application/json", 100)
        assert refused.value.status == status


# -- the PIN body ---------------------------------------------------------------------------------

@given(st.binary(max_size=20))
def test_a_pin_body_is_one_to_sixteen_ascii_digits(body):
    expected = 0 < len(body) <= 16 and body.isdigit()
    assert is_pin_digits(body) == expected
    buf = bytearray(body)
    if expected:
        rules.check_pin_body(buf)
    else:
        with pytest.raises(Refused) as refused:
            rules.check_pin_body(buf)
        # one fixed reason whatever was sent: nothing of the body is echoed (a 1-byte body such as
        # b"S" can be a letter of that fixed text, so compare with it, not search for the body)
        with pytest.raises(Refused) as fixed:
            rules.check_pin_body(bytearray(b"x"))
        assert refused.value.status == 400 and refused.value.reason == fixed.value.reason


def test_wipe_zeroes_in_place():
    buf = bytearray(b"2468")
    view = memoryview(buf)
    wipe(buf)
    assert buf == bytearray(4) and view.tobytes() == bytes(4)


# -- actions and language -------------------------------------------------------------------------

def body(value) -> bytes:
    return json.dumps(value).encode()


def test_actions_become_panel_requests_for_the_screen_shown():
    assert rules.parse_action(body({"action": "print", "session": 3, "jobs": [12]}), JOBS_DOC) == \
        {"cmd": "print", "session": 3, "jobs": [12]}
    assert rules.parse_action(body({"action": "print", "session": 3}), JOBS_DOC) == {"cmd": "print", "session": 3}
    assert rules.parse_action(body({"action": "delete", "session": 3, "jobs": [13, 12]}), JOBS_DOC) == \
        {"cmd": "delete", "session": 3, "jobs": [13, 12]}
    assert rules.parse_action(body({"action": "logout", "session": 3}), JOBS_DOC) == {"cmd": "logout", "session": 3}
    assert rules.parse_action(body({"action": "choose-next", "session": 3}), JOBS_DOC) == {"cmd": "choose-next"}
    assert rules.parse_action(body({"action": "pin-cancel"}), JOBS_DOC) == {"cmd": "pin-cancel"}


@pytest.mark.parametrize("value,status", [
    ({"action": "print", "session": 2, "jobs": [12]}, 409),          # another session: the page is stale
    ({"action": "logout"}, 409),
    ({"action": "logout", "session": "3"}, 409),
    ({"action": "print", "session": 3, "jobs": [14]}, 409),          # not on the screen
    ({"action": "print", "session": 3, "jobs": []}, 400),
    ({"action": "print", "session": 3, "jobs": [12, 12]}, 400),
    ({"action": "print", "session": 3, "jobs": [True]}, 400),
    ({"action": "print", "session": 3, "jobs": "12"}, 400),
    ({"action": "print", "session": 3, "jobs": list(range(1, 300))}, 400),
    ({"action": "delete", "session": 3}, 400),
    ({"action": "logout", "session": 3, "jobs": [12]}, 400),
    ({"action": "pin-cancel", "jobs": [12]}, 400),
    ({"action": "print", "session": 3, "user": "bob"}, 400),
    ({"action": "clear-fault"}, 400),
    ([1, 2], 400),
])
def test_actions_refused(value, status):
    with pytest.raises(Refused) as refused:
        rules.parse_action(body(value), JOBS_DOC)
    assert refused.value.status == status


def test_actions_without_a_screen_or_with_bad_json():
    with pytest.raises(Refused) as refused:
        rules.parse_action(body({"action": "logout", "session": 3}), None)
    assert refused.value.status == 503
    for raw in (b"", b"{", b"\xff\xfe", b"null"):
        with pytest.raises(Refused):
            rules.parse_action(raw, JOBS_DOC)


def test_language_bodies():
    assert rules.parse_lang(body({"lang": "ja"})) == "ja"
    for value in ({"lang": "fr"}, {"lang": "en", "x": 1}, {}, ["ja"]):
        with pytest.raises(Refused):
            rules.parse_lang(body(value))


# -- views ----------------------------------------------------------------------------------------

def test_the_jobs_view_in_english_and_japanese():
    view = web_view.render(JOBS_DOC, "en")
    assert view["screen"] == "jobs" and view["session"] == 3 and view["lang"] == "en" and view["logged_in"]
    assert view["line"] == "alice: choose jobs to print or delete"
    assert view["printer"] == "Paper out — load paper; held and released jobs wait"
    assert view["others"] == "Other organizations using the printer: 2"
    assert [j["id"] for j in view["jobs"]] == [12, 13]
    first, second = view["jobs"]
    assert first == {"id": 12, "title": "Q3[31m report<script>", "detail": "3 pages", "at": "23:40"}
    assert len(second["title"]) == web_view.MAX_TITLE and second["detail"] == "2 KB"
    assert view["labels"]["print-selected"] == "Print selected"
    ja = web_view.render(JOBS_DOC, "ja")
    assert ja["line"] == "alice さん — 印刷または削除するジョブを選んでください"
    assert ja["jobs"][0]["detail"] == "3 ページ" and ja["labels"]["logout"] == "ログアウト"
    assert ja["printer"].startswith("用紙切れ")


@pytest.mark.parametrize("screen", ["idle", "message", "out-of-service", "progress"])
def test_views_without_a_session_name_no_one(screen):
    doc = {**JOBS_DOC, "screen": screen, "session": None, "line": {"key": "tunnel-down", "fields": {}},
           "queue": "tenantprint-acme"}
    text = json.dumps(web_view.render(doc, "en"))
    for secret in ("acme", "alice", "Q3", "xxxx"):
        assert secret not in text
    assert web_view.render(doc, "en")["line"] == "Connection lost — session ended"
    assert not web_view.render(doc, "en")["logged_in"]


def test_the_not_connected_view():
    view = web_view.render(None, "ja")
    assert view["screen"] == "not-connected" and view["session"] is None
    assert view["line"] == "パネル未接続 — プリンターの応答を待っています"


def test_pin_ready_and_printing_views():
    pin = web_view.render({"version": 1, "screen": "pin", "session": 4, "line": {"key": "enter-pin", "fields": {}},
                           "pin": {"attempts_left": 1, "remaining_s": 9, "typed": 3}, "lang": "ja"}, "ja")
    assert pin["line"] == "PINを入力してください"
    assert pin["pin"] == {"attempts": "あと 1 回入力できます", "remaining_s": 9, "typed": 3}
    ready = web_view.render({"version": 1, "screen": "ready", "session": 4, "queue": "tenantprint-acme",
                             "line": {"key": "ready", "fields": {"org": "acme"}}}, "en")
    assert ready["queue"] == "Printer name on your computer: tenantprint-acme"
    printing = web_view.render({"version": 1, "screen": "printing", "session": 4, "line": {"key": "released",
                                "fields": {"count": 1, "user": "bob"}},
                                "printing": [{"id": 7, "title": "Plan", "state": "printing"},
                                             {"id": 8, "title": "Memo", "state": "waiting"}]}, "en")
    assert printing["line"] == "Released 1 job(s) for bob"
    assert printing["printing"] == [{"id": 7, "title": "Plan", "state": "Printing"},
                                    {"id": 8, "title": "Memo", "state": "Waiting"}]
    odd = web_view.render({"version": 1, "screen": "self-destruct", "line": "x"}, "en")
    assert odd["screen"] == "message" and odd["line"] == "Please wait"


# -- the shared feed's language -------------------------------------------------------------------

def test_the_language_lasts_for_the_session_it_was_chosen_in():
    feed = ScreenFeed(PanelClient("/nonexistent"))  # never started: _publish is driven by hand
    idle = {"version": 1, "screen": "idle", "session": None, "line": {"key": "idle"}, "lang": "en"}
    with feed._changed:
        feed._publish(idle)
    assert feed.set_lang("ja").view["line"] == "カードをタッチしてください"   # chosen before the tap
    with feed._changed:
        feed._publish({**JOBS_DOC, "session": 5})
    assert feed.current().view["lang"] == "ja"                                # ... goes with that session
    with feed._changed:
        feed._publish({**JOBS_DOC, "session": 5, "version": 6, "others": 1})
    assert feed.current().view["lang"] == "ja"
    with feed._changed:
        feed._publish({**idle, "version": 7, "lang": "en"})
    assert feed.current().view["lang"] == "en"                                # the next person: the default
    with feed._changed:
        feed._publish({**idle, "version": 8, "lang": "ja"})
    assert feed.current().view["lang"] == "ja"                                # the device's default is ja
    generation = feed.current().generation
    with feed._changed:
        feed._publish({**idle, "version": 8, "lang": "ja"})
    assert feed.current().generation == generation                            # nothing new: no push


# -- the handler's own peer check -----------------------------------------------------------------

def test_a_request_from_a_non_loopback_peer_gets_403():
    """The service listens on loopback only, so no other peer can reach it; the handler still checks
    (a forwarded or proxied socket, a mistaken listen): a real handler on a socketpair."""
    server = WebPanelServer("127.0.0.1:0", PanelClient("/nonexistent"))
    try:
        ours, theirs = socket.socketpair()
        theirs.sendall(b"GET /screen HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port)
        worker = threading.Thread(target=PanelRequestHandler, args=(ours, ("10.77.0.20", 40000), server))
        worker.start()
        worker.join(5)
        reply = theirs.recv(65536)
        assert reply.startswith(b"HTTP/1.0 403") and b"no-store" in reply and b"loopback clients only" in reply
        ours.close()
        theirs.close()
    finally:
        server.server_close()
