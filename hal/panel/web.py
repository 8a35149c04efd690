"""hal/panel/web: the web panel service, the screen a person at the MFP sees and touches.

An unprivileged HTTP server on the device's loopback only (`python -m hal.panel --socket PATH
--listen 127.0.0.1:8650`). A kiosk browser shows its page full screen on the attached display; it
relays the person's touches to the firmware's panel socket (`hal.panel.client`). It holds no org
data beyond the current screen, keeps nothing on disk and logs no body.

Who may talk to it (`hal.panel.web_rules`): it refuses to start on a listen address that is not a
loopback literal (`NotLoopback`); every request whose peer is not loopback, or whose Host header is
not `127.0.0.1:<port>`, `localhost:<port>` or `[::1]:<port>` (DNS rebinding) gets 403; a POST also
needs no `Origin` or a same-origin one (and `Sec-Fetch-Site` same-origin/none when sent), its
route's media type (`application/json`, or `application/octet-stream` for the PIN: neither can be
sent cross-origin without a preflight, which is never answered) and a bounded Content-Length.

HTTP API (every response: `Cache-Control: no-store`, a CSP of `default-src 'self'` with no inline
script or style, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`, `nosniff`):

    GET  /             the page (static/index.html); /panel.js, /panel.css its script and style
    GET  /screen       the current view once (JSON; the shape is in `hal.panel.web_view`)
    GET  /events       Server-Sent Events: `event: view`, `data: <the view>` at once and on every
                       change (screen version, firmware gone/back, language); `: keep-alive`
                       comments every 15 s. One long poll to the firmware serves every browser
                       (`hal.panel.web_feed`).
    POST /pin          body: the digits (application/octet-stream, 1..16 ASCII digits), read into a
                       bytearray, checked byte by byte, handed to `send_pin`, zeroed; only while
                       the screen is the PIN pad. -> 200 {"ok": true}
    POST /action       {"action": "pin-cancel"|"choose-next"} or
                       {"action": "print"|"delete"|"logout", "session": N, "jobs": [ids]}
                       (print without jobs: all; session: the one the page shows, 409 if the
                       screen moved on; jobs: ones the jobs screen lists) -> 200 {"ok": true}
    POST /lang         {"lang": "en"|"ja"} -> 200 the view in that language (server-wide, see
                       `hal.panel.web_feed`)
    Errors: {"error": "<short fixed reason>"} with 400, 403, 404, 409 (stale screen, or the firmware
    refused: its reason), 411, 413, 415, 502/503 (the firmware is not there).

Element ids of the page (stable: the browser tests use them):
    #screen            the screen's container; data-screen = the view's screen name
                       (idle, progress, ready, pin, jobs, printing, message, out-of-service,
                       not-connected); data-session = the session number or ""
    #line              the main line          #printer     the printer's condition (when any)
    #others            other orgs' count      #idle-in     "back to the start in N s"
    #queue             ready: the queue name  #choose      ready: "Choose my jobs"
    #pin-dots          pin: one dot per digit typed (data-count = how many)
    #pin-attempts      #pin-remaining         pin: attempts left, seconds left
    #pin-key-0 .. #pin-key-9, #pin-back, #pin-ok, #pin-cancel
    #jobs              jobs: the list; #job-<id> each job's checkbox (its row: #job-row-<id>)
    #print-selected    #print-all    #delete-selected    (disabled while nothing is ticked)
    #printing          printing: the list; #printing-<id> each job's row
    #logout            jobs, printing, and message while a person is logged in at the panel
    #lang-en           #lang-ja      (aria-pressed="true" on the current language)
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hal.panel import web_rules
from hal.panel.client import MAX_PIN, PanelClient, PanelError, PanelRefused, PanelUnavailable, wipe
from hal.panel.web_feed import ScreenFeed
from hal.panel.web_rules import NotLoopback, Refused, WebPanelError

__all__ = ["WebPanelServer", "WebPanelError", "NotLoopback", "Refused", "serve"]

log = logging.getLogger("tenantprint.panel.web")

STATIC = Path(__file__).with_name("static")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/panel.js": ("panel.js", "text/javascript; charset=utf-8"),
          "/panel.css": ("panel.css", "text/css; charset=utf-8")}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("Content-Security-Policy", CSP),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Cross-Origin-Opener-Policy", "same-origin"),
                    ("Cross-Origin-Resource-Policy", "same-origin"))
KEEPALIVE_S = 15.0
MAX_STREAMS = 8


class WebPanelServer(ThreadingHTTPServer):
    """The service: `start()` the feed, `serve_forever()`, `close()`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: str, client: PanelClient, feed: ScreenFeed | None = None):
        host, port = web_rules.listen_address(listen)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.client = client
        self.feed = feed or ScreenFeed(client)
        self.assets = {route: (STATIC.joinpath(name).read_bytes(), kind)
                       for route, (name, kind) in ASSETS.items()}
        self._streams, self._streams_lock = 0, threading.Lock()
        super().__init__((host, port), PanelRequestHandler)
        self.port = self.server_address[1]

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the loopback name up (getfqdn): nothing to learn there
        super(ThreadingHTTPServer, self).server_bind()  # TCPServer's
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def start(self) -> None:
        self.feed.start()

    def close(self) -> None:
        self.feed.stop()
        self.server_close()

    def enter_stream(self) -> bool:
        with self._streams_lock:
            if self._streams >= MAX_STREAMS:
                return False
            self._streams += 1
            return True

    def leave_stream(self) -> None:
        with self._streams_lock:
            self._streams -= 1


class PanelRequestHandler(BaseHTTPRequestHandler):
    server: WebPanelServer
    rbufsize = 0          # unbuffered: a PIN body goes from the socket straight into its bytearray
    timeout = 10
    protocol_version = "HTTP/1.0"
    server_version = "tenantprint-panel"
    sys_version = ""

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        try:
            self._admit(post=False)
            path = self.path.split("?", 1)[0]
            if path in self.server.assets:
                body, kind = self.server.assets[path]
                self._send(200, body, kind)
            elif path == "/screen":
                self._send(200, self.server.feed.current().data, "application/json")
            elif path == "/events":
                self._events()
            elif path == "/favicon.ico":
                self._send(204, b"", "text/plain")  # browsers ask; there is none
            else:
                raise Refused(404, "not found")
        except Refused as refused:
            self._refuse(refused)

    def do_POST(self) -> None:
        try:
            self._admit(post=True)
            path = self.path.split("?", 1)[0]
            if path == "/pin":
                self._pin()
            elif path == "/action":
                self._action()
            elif path == "/lang":
                lang = web_rules.parse_lang(self._body("application/json", web_rules.MAX_JSON_BODY))
                self._send(200, self.server.feed.set_lang(lang).data, "application/json")
            else:
                raise Refused(404, "not found")
        except Refused as refused:
            self._refuse(refused)

    def _other_method(self) -> None:
        try:
            self._admit(post=False)
            raise Refused(405, "GET or POST only")
        except Refused as refused:
            self._refuse(refused)

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method  # no CORS preflight is ever answered

    def _pin(self) -> None:
        size = self._content_length("application/octet-stream", MAX_PIN)
        digits = bytearray(size)
        try:
            self._read_into(digits)
            web_rules.check_pin_body(digits)
            doc = self.server.feed.current().doc
            if doc is None:
                raise Refused(503, "panel not connected")
            if doc.get("screen") != "pin":
                raise Refused(409, "no PIN is asked for")
            self._forward(lambda: self.server.client.send_pin(digits))
        finally:
            wipe(digits)

    def _action(self) -> None:
        body = self._body("application/json", web_rules.MAX_JSON_BODY)
        request = web_rules.parse_action(body, self.server.feed.current().doc)
        client, session, jobs = self.server.client, request.get("session"), request.get("jobs")
        calls = {"pin-cancel": client.pin_cancel, "choose-next": client.choose_next,
                 "print": lambda: client.print_jobs(session, jobs),
                 "delete": lambda: client.delete_jobs(session, jobs),
                 "logout": lambda: client.logout(session)}
        self._forward(calls[request["cmd"]])

    def _forward(self, call) -> None:
        try:
            call()
        except PanelRefused as exc:
            raise Refused(409, exc.reason) from None
        except PanelUnavailable:
            raise Refused(503, "panel not connected") from None
        except PanelError:
            raise Refused(502, "the firmware's reply was not understood") from None
        self._send(200, b'{"ok": true}', "application/json")

    def _events(self) -> None:
        if not self.server.enter_stream():
            raise Refused(503, "too many screens")
        feed = self.server.feed
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"retry: 1000\n\n")
            snapshot, sent = feed.current(), None
            while not feed.stopped:
                if snapshot.generation == sent:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    self.wfile.write(b"id: %d\nevent: view\ndata: %s\n\n" % (snapshot.generation, snapshot.data))
                    sent = snapshot.generation
                snapshot = feed.wait(sent, KEEPALIVE_S)
        except OSError:
            pass  # the browser went away
        finally:
            self.server.leave_stream()

    # -- checks and bodies -------------------------------------------------------------------

    def _admit(self, post: bool) -> None:
        web_rules.check_peer(self.client_address[0])
        hosts = self.headers.get_all("Host") or []
        web_rules.check_host(hosts[0] if len(hosts) == 1 else None, self.server.port)
        if post:
            web_rules.check_origin(self.headers.get("Origin"), self.headers.get("Sec-Fetch-Site"),
                                   self.server.port)

    def _content_length(self, media: str, limit: int) -> int:
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        return web_rules.check_content(self.headers.get("Content-Type"),
                                       self.headers.get("Content-Length"), chunked, media, limit)

    def _body(self, media: str, limit: int) -> bytes:
        body = bytearray(self._content_length(media, limit))
        self._read_into(body)
        return bytes(body)

    def _read_into(self, buf: bytearray) -> None:
        got = 0
        with memoryview(buf) as view:
            while got < len(buf):
                try:
                    n = self.rfile.readinto(view[got:])
                except OSError:
                    n = 0
                if not n:
                    raise Refused(400, "the body is shorter than its Content-Length")
                got += n

    # -- responses ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, refused: Refused) -> None:
        self.close_connection = True
        body = json.dumps({"error": refused.reason}).encode()
        try:
            self._send(refused.status, body, "application/json")
        except OSError:
            pass

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.client_address[0], *args)


def serve(listen: str, socket_path: str, wait_s: float = 20.0) -> WebPanelServer:
    """A started service (feed running, not yet serving: call `serve_forever()`)."""
    client = PanelClient(socket_path)
    server = WebPanelServer(listen, client, ScreenFeed(client, wait_s=wait_s))
    server.start()
    return server
