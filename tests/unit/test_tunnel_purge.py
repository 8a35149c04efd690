"""ViciTunnel.purge and events against a scripted VICI peer over a unix socket (protocol level)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from vici.protocol import Message, Packet

from hal.tunnel import CharonUnavailable, PurgeIncomplete, TunnelDown
from hal.tunnel.vici_tunnel import ViciTunnel


class ScriptedCharon:
    """Answers VICI commands from a dict of canned responses; streamed commands get no events."""

    def __init__(self, path: str, answers: dict[str, dict]):
        self.answers, self.calls = answers, []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(path)
        self.srv.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _send(conn, payload: bytes):
        conn.sendall(struct.pack("!I", len(payload)) + payload)

    def _serve(self, conn):
        try:
            while True:
                head = conn.recv(4)
                if len(head) < 4:
                    return
                (n,) = struct.unpack("!I", head)
                data = b""
                while len(data) < n:
                    data += conn.recv(n - len(data))
                kind = data[0]
                name = data[2:2 + data[1]].decode()
                if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
                    self._send(conn, struct.pack("!B", Packet.EVENT_CONFIRM))
                elif kind == Packet.CMD_REQUEST:
                    self.calls.append(name)
                    body = self.answers.get(name, {"success": "yes"})
                    self._send(conn, struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize(body))
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.srv.close()


def test_purge_raises_when_a_key_survives(tmp_path):
    path = str(tmp_path / "charon.vici")
    fake = ScriptedCharon(path, {"get-keys": {"keys": ["stuck-key-id"]}, "get-conns": {"conns": []},
                                 "get-shared": {"keys": []}})
    tun = ViciTunnel("libipsec", vici_socket=path)
    tun.purge_verify_s = 0.2
    try:
        with pytest.raises(PurgeIncomplete) as err:
            tun.purge()
        assert err.value.leftovers["keys"] == ["stuck-key-id"]
        assert "unload-key" in fake.calls and "clear-creds" in fake.calls and "flush-certs" in fake.calls
    finally:
        fake.close()


def test_purge_passes_when_everything_is_gone(tmp_path):
    path = str(tmp_path / "charon.vici")
    fake = ScriptedCharon(path, {"get-keys": {"keys": []}, "get-conns": {"conns": []}, "get-shared": {"keys": []}})
    try:
        ViciTunnel("libipsec", vici_socket=path).purge()
    finally:
        fake.close()


def test_no_daemon_is_charon_unavailable_and_events_fail_closed(tmp_path):
    tun = ViciTunnel("libipsec", vici_socket=str(tmp_path / "missing.vici"))
    with pytest.raises(CharonUnavailable, match="missing.vici"):
        tun.inventory()
    assert list(tun.events()) == [TunnelDown("daemon")]
