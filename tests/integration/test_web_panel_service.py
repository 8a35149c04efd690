"""The web panel service end to end on 127.0.0.1, against a scripted firmware panel socket.

`FakePanelSocket` is a protocol fixture: a unix socket speaking the panel socket API (one JSON line
in, one out; `wait` long polls) that records every request as the bytes it received. The service
under test is the real one (`hal.panel.web.serve`), reached with http.client over loopback.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

from hal.panel.client import PanelClient, PanelRefused, PanelUnavailable
from hal.panel.web import WebPanelServer, serve

IDLE = {"screen": "idle", "session": None, "line": {"key": "idle", "fields": {}}, "printer": None,
        "org": None, "queue": None, "pin": None, "user": None, "jobs": [], "printing": [],
        "others": 0, "idle_in_s": None, "lang": "en"}
JOBS = {**IDLE, "screen": "jobs", "session": 3, "org": "acme", "user": "alice",
        "line": {"key": "no-jobs", "fields": {"user": "alice"}},
        "jobs": [{"id": 12, "title": "<img src=x onerror=alert(1)> Q3 report", "pages": 3, "size": 20480, "at": "23:40"},
                 {"id": 13, "title": "Budget", "pages": None, "size": 2_500_000, "at": "23:41"}]}
PIN = {**IDLE, "screen": "pin", "session": 4, "org": "acme", "line": {"key": "enter-pin", "fields": {}},
       "pin": {"attempts_left": 4, "remaining_s": 22}}
_PIN_LINE = re.compile(rb'\{"cmd": "pin", "pin": "\d{1,16}"\}\n')


class FakePanelSocket:
    """A firmware panel socket: `show(doc)` changes the screen; `requests` holds what came in."""

    def __init__(self, path: Path):
        self.path = path
        self.version = 1
        self.doc = dict(IDLE)
        self.requests: list[bytes] = []
        self.refuse: str | None = None
        self.closing = False
        self._changed = threading.Condition()
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                buf = b""
                while b"\n" not in buf:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                self.request.sendall(json.dumps(fake.answer(buf)).encode() + b"\n")

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> "FakePanelSocket":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.closing = True
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)
        with self._changed:
            self._changed.notify_all()

    def show(self, doc: dict) -> None:
        with self._changed:
            self.version += 1
            self.doc = dict(doc)
            self._changed.notify_all()

    def document(self) -> dict:
        return {**self.doc, "version": self.version}

    def answer(self, line: bytes) -> dict:
        self.requests.append(line)
        if line.startswith(b'{"cmd": "pin", '):
            return {"ok": True} if _PIN_LINE.fullmatch(line) else {"error": "bad pin request"}
        request = json.loads(line)
        cmd = request["cmd"]
        if cmd == "screen":
            return self.document()
        if cmd == "wait":
            with self._changed:
                self._changed.wait_for(lambda: self.version > request["after"] or self.closing, request["timeout"])
                return self.document()
        if self.refuse:
            return {"error": self.refuse}
        return {"ok": True}

    def commands(self) -> list[dict]:
        return [json.loads(r) for r in self.requests if not r.startswith(b'{"cmd": "pin", ')
                and json.loads(r)["cmd"] not in ("screen", "wait")]


@pytest.fixture
def firmware(tmp_path):
    fake = FakePanelSocket(tmp_path / "panel.sock").start()
    yield fake
    fake.stop()


@pytest.fixture
def panel(firmware):
    server = serve("127.0.0.1:0", str(firmware.path), wait_s=2.0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    wait_for(lambda: server.feed.current().doc is not None)
    yield server
    server.shutdown()
    server.close()


def wait_for(predicate, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def call(server: WebPanelServer, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    sent = {"Host": f"127.0.0.1:{server.port}"}
    sent.update(headers or {})
    conn.request(method, path, body=body, headers=sent)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, dict(res.getheaders()), data


def post_json(server, path, value, **headers):
    return call(server, "POST", path, json.dumps(value).encode(),
                {"Content-Type": "application/json", **headers})


# -- the client ----------------------------------------------------------------------------------

def test_client_speaks_the_panel_socket(firmware):
    client = PanelClient(firmware.path, timeout=2)
    assert client.screen()["screen"] == "idle"
    started = time.monotonic()
    assert client.wait(after=firmware.version, timeout=0.3)["version"] == firmware.version
    assert 0.25 < time.monotonic() - started < 2
    digits = bytearray(b"2468")
    client.send_pin(digits)
    assert digits == bytearray(4)  # wiped
    assert firmware.requests[-1] == b'{"cmd": "pin", "pin": "2468"}\n'
    client.print_jobs(3, [12])
    client.print_jobs(3)
    client.delete_jobs(3, [13])
    client.logout(3)
    client.pin_cancel()
    client.choose_next()
    assert firmware.commands() == [{"cmd": "print", "session": 3, "jobs": [12]}, {"cmd": "print", "session": 3},
                                   {"cmd": "delete", "session": 3, "jobs": [13]}, {"cmd": "logout", "session": 3},
                                   {"cmd": "pin-cancel"}, {"cmd": "choose-next"}]
    firmware.refuse = "not your job"
    with pytest.raises(PanelRefused, match="not your job"):
        client.logout(3)


def test_client_refuses_a_bad_pin_and_wipes_it(firmware):
    digits = bytearray(b"12a4")
    with pytest.raises(ValueError) as caught:
        PanelClient(firmware.path).send_pin(digits)
    assert digits == bytearray(4) and "12a4" not in str(caught.value)
    assert not firmware.requests


def test_client_without_firmware(tmp_path):
    with pytest.raises(PanelUnavailable):
        PanelClient(tmp_path / "none.sock").screen()


# -- the service ---------------------------------------------------------------------------------

def test_page_and_assets_carry_the_security_headers(panel):
    for path, kind in (("/", "text/html"), ("/panel.js", "text/javascript"), ("/panel.css", "text/css"),
                       ("/screen", "application/json")):
        status, headers, body = call(panel, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind), path
        assert headers["Cache-Control"] == "no-store"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    status, headers, _ = call(panel, "GET", "/nothing")
    assert status == 404 and headers["Cache-Control"] == "no-store"
    for method in ("OPTIONS", "PUT", "DELETE"):
        assert call(panel, method, "/pin", headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "POST"})[0] == 405
    _, _, page = call(panel, "GET", "/")
    assert b"<script>" not in page and b"style=" not in page and b"http" not in page.replace(b"http-equiv", b"")
    for ident in (b'id="screen"', b'id="lang-en"', b'id="lang-ja"'):
        assert ident in page


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1", "127.0.0.1:1", "10.0.0.1:{port}",
                                  "localhost.evil:{port}"])
def test_a_foreign_host_header_is_refused(panel, host):
    status, headers, _ = call(panel, "GET", "/screen", headers={"Host": host.format(port=panel.port)})
    assert status == 403 and headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("host", ["localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_every_loopback_name_is_accepted(panel, host):
    assert call(panel, "GET", "/screen", headers={"Host": host.format(port=panel.port)})[0] == 200


def test_the_screen_is_translated_server_side(panel, firmware):
    firmware.show(JOBS)
    view = wait_for(lambda: json.loads(call(panel, "GET", "/screen")[2]) if panel.feed.current().doc["screen"] == "jobs" else None)
    assert view["screen"] == "jobs" and view["line"] == "No jobs held for alice"
    assert view["jobs"][0] == {"id": 12, "title": "<img src=x onerror=alert(1)> Q3 report", "detail": "3 pages", "at": "23:40"}
    assert view["jobs"][1]["detail"] == "2.4 MB"
    status, _, body = post_json(panel, "/lang", {"lang": "ja"})
    assert status == 200 and json.loads(body)["line"] == "alice さんの保留中のジョブはありません"
    assert json.loads(call(panel, "GET", "/screen")[2])["labels"]["print-all"] == "すべて印刷"
    firmware.show(IDLE)  # the session ended: the device's default language again
    wait_for(lambda: panel.feed.current().doc["screen"] == "idle")
    view = json.loads(call(panel, "GET", "/screen")[2])
    assert view["lang"] == "en" and "alice" not in json.dumps(view) and "Q3" not in json.dumps(view)


def test_events_push_every_change(panel, firmware):
    conn = http.client.HTTPConnection("127.0.0.1", panel.port, timeout=5)
    conn.request("GET", "/events", headers={"Host": f"localhost:{panel.port}"})
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("Content-Type").startswith("text/event-stream")
    assert res.getheader("Cache-Control") == "no-store"

    def next_view() -> dict:
        while True:
            line = res.fp.readline()
            if line.startswith(b"data: "):
                return json.loads(line[6:])

    assert next_view()["screen"] == "idle"
    firmware.show(PIN)
    view = next_view()
    assert view["screen"] == "pin" and view["pin"] == {"attempts": "Attempts left: 4", "remaining_s": 22, "typed": 0}
    firmware.show(IDLE)
    assert next_view()["screen"] == "idle"
    conn.close()


def test_a_pin_goes_to_the_firmware_as_bytes(panel, firmware):
    firmware.show(PIN)
    wait_for(lambda: panel.feed.current().doc["screen"] == "pin")
    octets = {"Content-Type": "application/octet-stream"}
    status, _, _ = call(panel, "POST", "/pin", b"2468", {**octets, "Origin": f"http://127.0.0.1:{panel.port}"})
    assert status == 200
    assert firmware.requests[-1] == b'{"cmd": "pin", "pin": "2468"}\n'
    before = len(firmware.requests)
    for body in (b"", b"12a4", b"1" * 17, b"\xd9\xa1\xd9\xa2", b" 1234"):
        status, _, reply = call(panel, "POST", "/pin", body, octets)
        assert status in (400, 413) and body.strip() not in reply or not body.strip()
    assert call(panel, "POST", "/pin", b"2468", {"Content-Type": "application/json"})[0] == 415
    assert call(panel, "POST", "/pin", b"2468", {**octets, "Origin": "http://evil.example"})[0] == 403
    assert call(panel, "POST", "/pin", b"2468", {**octets, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert len(firmware.requests) == before  # nothing of those reached the firmware
    firmware.show(IDLE)
    wait_for(lambda: panel.feed.current().doc["screen"] == "idle")
    assert call(panel, "POST", "/pin", b"2468", octets)[0] == 409  # no PIN is asked for


def test_actions_carry_the_screens_session(panel, firmware):
    firmware.show(JOBS)
    wait_for(lambda: panel.feed.current().doc["screen"] == "jobs")
    assert post_json(panel, "/action", {"action": "print", "session": 3, "jobs": [12]})[0] == 200
    assert post_json(panel, "/action", {"action": "print", "session": 3})[0] == 200
    assert post_json(panel, "/action", {"action": "delete", "session": 3, "jobs": [13]})[0] == 200
    assert post_json(panel, "/action", {"action": "logout", "session": 3})[0] == 200
    assert post_json(panel, "/action", {"action": "print", "session": 2, "jobs": [12]})[0] == 409  # stale page
    assert post_json(panel, "/action", {"action": "print", "session": 3, "jobs": [99]})[0] == 409  # not shown
    assert post_json(panel, "/action", {"action": "shutdown"})[0] == 400
    assert call(panel, "POST", "/action", b"{}" * 3000, {"Content-Type": "application/json"})[0] == 413
    firmware.refuse = "not your job"
    status, _, reply = post_json(panel, "/action", {"action": "logout", "session": 3})
    assert status == 409 and json.loads(reply) == {"error": "not your job"}
    assert firmware.commands() == [{"cmd": "print", "session": 3, "jobs": [12]}, {"cmd": "print", "session": 3},
                                   {"cmd": "delete", "session": 3, "jobs": [13]}, {"cmd": "logout", "session": 3},
                                   {"cmd": "logout", "session": 3}]


def test_not_connected_and_back(tmp_path):
    path = tmp_path / "panel.sock"
    server = serve("127.0.0.1:0", str(path), wait_s=1.0)
    server.feed._retry_s = 0.05
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        wait_for(lambda: server.feed.current().generation > 0)
        view = json.loads(call(server, "GET", "/screen")[2])
        assert view["screen"] == "not-connected" and view["line"].startswith("Panel not connected")
        assert post_json(server, "/action", {"action": "choose-next"})[0] == 503
        fake = FakePanelSocket(path).start()
        try:
            wait_for(lambda: server.feed.current().doc is not None)
            assert json.loads(call(server, "GET", "/screen")[2])["screen"] == "idle"
        finally:
            fake.stop()
        wait_for(lambda: server.feed.current().doc is None)
    finally:
        server.shutdown()
        server.close()


def test_the_module_entry_refuses_a_public_address(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "hal.panel", "--socket", str(tmp_path / "s"),
                           "--listen", "0.0.0.0:8650"], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "not a loopback address" in done.stderr


# -- the page in Debian's chromium (selenium + chromedriver) ---------------------------------------

def test_the_page_in_a_real_browser(panel, firmware):
    """The page's own behaviour against the scripted firmware: PIN keys, dots and the bytes that
    arrive, Escape, ticking jobs and printing them, the language switch, the purge on idle, the
    not-connected screen, and no console error (a CSP violation would be one)."""
    from prereq import need_binary
    need_binary("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys

    def settled(predicate):  # an element found just before the page re-rendered is stale: look again
        def look():
            try:
                return predicate()
            except (NoSuchElementException, StaleElementReferenceException):
                return False
        return look

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=800,480"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    by_id = lambda ident: browser.find_element(By.ID, ident)  # noqa: E731
    shown = lambda name: lambda: by_id("screen").get_attribute("data-screen") == name  # noqa: E731
    try:
        browser.get(panel.url)
        wait_for(settled(shown("idle")), 10)
        firmware.show(PIN)
        wait_for(settled(shown("pin")))
        for key in "2461":
            by_id(f"pin-key-{key}").click()
        by_id("pin-back").click()
        browser.find_element(By.TAG_NAME, "body").send_keys("8")  # the keyboard types too
        assert by_id("pin-dots").get_attribute("data-count") == "4"
        by_id("pin-ok").click()
        wait_for(lambda: firmware.requests[-1] == b'{"cmd": "pin", "pin": "2468"}\n')
        assert by_id("pin-dots").get_attribute("data-count") == "0"
        browser.find_element(By.TAG_NAME, "body").send_keys("13", Keys.ESCAPE)
        wait_for(lambda: {"cmd": "pin-cancel"} in firmware.commands())

        firmware.show(JOBS)
        wait_for(settled(shown("jobs")))
        assert by_id("job-row-12").text.startswith("<img src=x onerror=alert(1)> Q3 report")
        assert by_id("print-selected").get_attribute("disabled")
        by_id("job-12").click()
        by_id("print-selected").click()
        wait_for(lambda: {"cmd": "print", "session": 3, "jobs": [12]} in firmware.commands())
        by_id("lang-ja").click()
        wait_for(settled(lambda: by_id("print-all").text == "すべて印刷"))
        assert by_id("job-12").is_selected()  # a new language keeps what was ticked

        firmware.show(IDLE)
        wait_for(settled(shown("idle")))
        page = browser.execute_script("return document.documentElement.outerHTML")
        assert not [word for word in ("alice", "acme", "Q3", "Budget") if word in page]
        assert browser.execute_script("return document.documentElement.lang") == "en"
        firmware.stop()
        wait_for(settled(shown("not-connected")), 8)
        assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        browser.quit()
