"""The operation panel in a real browser (issue 15): Debian's chromium, driven by Selenium, on the
lab MFP's web panel, inside the MFP host's network namespace (tests/lab/browser.py). The person's
touches are clicks on the page's stable element ids (hal/panel/web.py); what they cause is checked
in the lab (`lab status`). The same flows through the panel socket: tests/lab/test_panel_flows.py.

Each scenario photographs the screens it passes at 800x480, in English and in Japanese, into a
temporary folder; with TP_PANEL_SCREENSHOTS=1 they are copied to docs/panel/<screen>-<lang>.png.
The browser quits before the lab's cleanup (it scans every process on the MFP for PINs).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import threading
from pathlib import Path

import pytest

from prereq import need, need_binary
from system import clean_system, lab_cli, system, wait_for  # noqa: F401 (fixtures)

DOC = "/usr/share/cups/data/default-testpage.pdf"
TITLE = "default-testpage"  # in the title of every job printed from DOC
REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "panel"
PANEL_PORT = 8650
JAPANESE = re.compile("[\u3040-\u30ff\u4e00-\u9fff]")
OTHER = {"en": "ja", "ja": "en"}


class Office:
    """What the lab shows of the MFP and the desks: `lab status`'s document (lab.actions.status,
    made in this process: a poll costs no interpreter start)."""

    def __init__(self, lab):
        self.lab = lab

    def status(self) -> dict:
        from lab.actions import status

        return status(self.lab)

    def held(self, user: str) -> list[int]:
        return sorted(j["id"] for j in self.status()["firmware"]["held_jobs"] if j["user"] == user)

    def printing_id(self, user: str) -> int:
        return next(j["id"] for j in self.status()["firmware"]["printing"] if j["user"] == user)

    def printed(self) -> list[str]:
        """Whose documents the engine printed, in order."""
        return [p["user"] for p in self.status()["printed"]]


# -- the photographs ----------------------------------------------------------------------------

class Shots:
    """Screenshots named <screen>-<lang>.png in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, screen: str, lang: str) -> Path:
        return self.folder / f"{screen}-{lang}.png"

    def take(self, browser, screen: str) -> Path:
        state = browser.state()
        assert state["screen"] == screen, state
        path = browser.screenshot(self.path(screen, state["lang"]))
        assert _png_size(path) == (800, 480), path
        return path

    def both(self, browser, screen: str) -> None:
        """This screen in its language and in the other one; the page is left in its language,
        and the Japanese one is checked to be Japanese."""
        first = browser.state()["lang"]
        for lang in (first, OTHER[first]):
            if browser.state()["lang"] != lang:
                state = browser.set_lang(lang)
                assert state["screen"] == screen, state
                assert bool(JAPANESE.search(state["line"])) == (lang == "ja"), state
            self.take(browser, screen)
        browser.set_lang(first)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    taken = Shots(tmp_path_factory.mktemp("panel-screens"))
    yield taken
    if os.environ.get("TP_PANEL_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for png in sorted(taken.folder.glob("*.png")):
            shutil.copyfile(png, DOCS / png.name)


@pytest.fixture
def office(clean_system) -> Office:
    return Office(clean_system)


@pytest.fixture
def panel(clean_system, office):
    """The live panel in a browser on the MFP host, in English; quit before the lab's cleanup."""
    need_binary("/usr/bin/chromium", "/usr/bin/chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        need(False, "the selenium package (the test extras)")
    from browser import PanelBrowser

    url = office.status()["firmware"]["panel_url"]
    with PanelBrowser(clean_system.host("office").ns, url) as browser:
        if browser.state()["lang"] != "en":
            browser.set_lang("en")
        yield browser
        if browser.state()["lang"] != "en":
            browser.set_lang("en")
        assert browser.console_errors() == []


def _open_session(browser, office: Office, photo: Path | None = None) -> None:
    """alice's first tap opens acme's session (the firmware's own tap, as in every lab scenario);
    with `photo`, the progress screen on the way is photographed there (in the page's language:
    a choice made before a tap goes with the session it starts)."""
    lang = browser.state()["lang"]
    if photo:
        browser.arm("progress")
    tap: dict = {}
    worker = threading.Thread(target=lambda: tap.update(lab_cli("tap", "--org", "acme", "--user", "alice")))
    worker.start()
    try:
        line = browser.catch(photo) if photo else None
    finally:
        worker.join()
    if line is not None:
        assert bool(JAPANESE.search(line)) == (lang == "ja"), line
    assert tap.get("state") == "ready", tap
    state = browser.wait_screen("ready")
    assert state["lang"] == lang and "acme" in state["line"], state
    wait_for(lambda: office.status()["desks"]["acme"]["queue"], 20, "acme's desk queue")


def _type(panel, digits: str) -> None:
    """Touch the PIN pad's keys; a dot shows for each."""
    dots = "return Number(document.getElementById('pin-dots').dataset.count);"
    for digit in digits:
        count = panel.js(dots)
        panel.click(f"pin-key-{digit}")
        assert panel.js(dots) == count + 1, digit


def _connect(netns: str, host: str, port: int, timeout: float = 1.5) -> str:
    """A TCP connect from inside lab host namespace `netns`: connected, refused or timeout."""
    from hal.sandbox.inside import call_in_netns

    def attempt() -> str:
        with socket.socket() as sock:
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
                return "connected"
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "timeout"
            except OSError as exc:
                return f"error {exc.errno}"

    return call_in_netns(f"/run/netns/{netns}", attempt)


# -- the scenarios ------------------------------------------------------------------------------

def test_the_language_switch_shows_japanese_and_english(panel, shots):
    state = panel.wait_screen("idle")
    assert state["lang"] == "en" and not JAPANESE.search(state["line"]), state
    assert panel.js("return document.getElementById('lang-en').getAttribute('aria-pressed');") == "true"
    shots.take(panel, "idle")

    state = panel.set_lang("ja")
    assert state["screen"] == "idle" and JAPANESE.search(state["line"]), state
    assert panel.js("return document.documentElement.lang;") == "ja"
    assert panel.js("return document.getElementById('lang-ja').getAttribute('aria-pressed');") == "true"
    shots.take(panel, "idle")

    state = panel.set_lang("en")
    assert state["screen"] == "idle" and state["line"] == "Tap your card to start", state


def test_bob_types_his_pin_on_the_screen_and_his_job_prints(panel, office, shots):
    panel.set_lang("ja")
    _open_session(panel, office, shots.path("progress", "ja"))
    shots.both(panel, "ready")
    lab_cli("print", "--org", "acme", "--user", "bob", "--from", "desk", DOC)
    wait_for(lambda: len(office.held("bob")) == 1, 20, "bob's job held")
    before = len(office.printed())

    st = lab_cli("tap", "--org", "acme", "--user", "bob")  # no PIN: the firmware asks for one
    assert st["state"] == "awaiting_pin", st
    state = panel.wait_screen("pin")
    assert state["session"] and panel.js("return document.getElementById('pin-dots').dataset.count;") == "0"
    _type(panel, "24")
    shots.both(panel, "pin")
    _type(panel, "68")
    assert "2468" not in panel.page_source()  # dots only

    lab_cli("fault", "engine-media-empty")  # his job waits for paper: the printing screen stays
    try:
        panel.click("pin-ok")
        panel.wait_screen("printing")
        assert panel.ids("printing-") == [f"printing-{office.printing_id('bob')}"]
        panel.wait("document.getElementById('printer') !== null", what="the printer's condition on screen")
        assert "bob" in panel.state()["line"]
        shots.both(panel, "printing")
        assert office.printed()[before:] == []
    finally:
        lab_cli("fault", "engine-media-ok")
    wait_for(lambda: office.printed()[before:] == ["bob"], 30, "bob's document")
    assert office.held("bob") == []
    state = panel.wait_screen("message")
    assert "bob" in state["line"], state
    shots.both(panel, "message")


def test_a_pin_key_held_while_the_screen_updates_still_counts(panel, office):
    """A slow finger on the PIN pad while seconds tick away: the screen is not rebuilt under it
    (countdowns make no new screen version), so the digit counts."""
    _open_session(panel, office)
    lab_cli("print", "--org", "acme", "--user", "bob", "--from", "desk", DOC)
    wait_for(lambda: len(office.held("bob")) == 1, 20, "bob's job held")
    assert lab_cli("tap", "--org", "acme", "--user", "bob")["state"] == "awaiting_pin"
    panel.wait_screen("pin")
    panel.js("window.__rebuilds = 0; new MutationObserver(() => window.__rebuilds++)"
             ".observe(document.getElementById('screen'), {childList: true});")
    try:
        panel.touch_and_hold("pin-key-5", until="window.__rebuilds > 0", timeout=2.5)  # a slow finger
        assert panel.js("return document.getElementById('pin-dots').dataset.count;") == "1"
    finally:
        panel.click("pin-cancel")


def test_alice_chooses_one_job_prints_it_and_deletes_the_other(panel, office, shots):
    _open_session(panel, office, shots.path("progress", "en"))
    for user in ("alice", "alice", "carol"):
        lab_cli("print", "--org", "acme", "--user", user, "--from", "desk", DOC)
    wait_for(lambda: len(office.held("alice")) == 2 and len(office.held("carol")) == 1, 20, "three jobs held")
    first, second = office.held("alice")
    carols = office.held("carol")
    before = len(office.printed())

    before_line = panel.state()["line"]
    panel.click("choose")  # the next tap lists her jobs instead of printing them
    panel.wait(f"document.getElementById('line').textContent !== {before_line!r}", what="the choose prompt")
    lab_cli("tap", "--org", "acme", "--user", "alice")
    panel.wait_screen("jobs")
    assert panel.ids("job-row-") == [f"job-row-{first}", f"job-row-{second}"]  # not carol's
    assert TITLE in panel.text(f"job-row-{first}")
    assert office.printed()[before:] == []

    panel.tick(f"job-{first}")
    shots.both(panel, "jobs")
    panel.click("print-selected")
    wait_for(lambda: office.printed()[before:] == ["alice"], 30, "alice's chosen job printed")
    assert office.held("alice") == [second] and office.held("carol") == carols
    panel.wait(f"document.getElementById('job-row-{first}') === null", what="the printed job off the list")
    assert panel.ids("job-row-") == [f"job-row-{second}"]

    panel.tick(f"job-{second}")
    panel.click("delete-selected")
    wait_for(lambda: office.held("alice") == [], 10, "the deleted job gone at the MFP")
    wait_for(lambda: any(c["user"] == "alice" for c in office.status()["desks"]["acme"]["canceled"]), 20,
             "the desk's copy cancelled as deleted")
    assert office.held("carol") == carols
    assert office.printed()[before:] == ["alice"]  # the deleted one never printed

    panel.wait("!document.getElementById('job-row-%d')" % second, what="the deleted job off the screen")
    panel.click("logout")
    state = panel.wait_screen("ready")
    assert "alice" not in panel.page_source(), state


def test_after_the_purge_the_page_holds_nothing_of_the_org(panel, office):
    _open_session(panel, office)
    queues = list(office.status()["desks"]["acme"]["queues"])  # the MFP's queue's name at acme's desk
    assert queues and queues[0] in panel.text("queue")
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: len(office.held("alice")) == 1, 20, "alice's job held")
    panel.click("choose")
    lab_cli("tap", "--org", "acme", "--user", "alice")
    panel.wait_screen("jobs")
    source = panel.page_source()
    assert "alice" in source and TITLE in source  # what must go is there first

    lab_cli("fault", "gateway-kill", "--org", "acme")
    try:
        wait_for(lambda: office.status()["firmware"]["state"] == "idle", 60, "the purge")
        panel.wait("!document.getElementById('screen').dataset.session", what="no session on the page")
        state = panel.wait_screen("idle", "message")
        source = panel.page_source()
        for word in ("acme", "alice", TITLE, *queues):  # org, user, job title, the queue's name
            assert word not in source, (word, state)
    finally:
        lab_cli("fault", "gateway-start", "--org", "acme")


def test_the_panel_refuses_clients_off_the_device_loopback(panel, office, system):
    """From another tenant's laptop on the office LAN, and from acme's LAN through the session's
    tunnel, the panel's port does not answer; on the MFP's own loopback it does."""
    _open_session(panel, office)
    mfp, tunnel = system.address("office"), office.status()["firmware"]["tunnel"]
    assert tunnel["up"] and tunnel["virtual_ip"], tunnel
    ns = {host: system.host(host).ns for host in ("office", "cowork", "lan-acme")}

    assert _connect(ns["office"], "127.0.0.1", PANEL_PORT) == "connected"
    assert _connect(ns["office"], mfp, PANEL_PORT) == "refused"  # bound to the loopback only
    assert _connect(ns["cowork"], mfp, PANEL_PORT) in ("refused", "timeout")
    # the tunnel carries acme's LAN to the MFP (its session's print queue answers), not to the panel
    assert _connect(ns["lan-acme"], tunnel["virtual_ip"], 631) == "connected"
    assert _connect(ns["lan-acme"], tunnel["virtual_ip"], PANEL_PORT) in ("refused", "timeout")
