"""The firmware's control socket: one JSON request line, one JSON reply line, mode 0600."""

import asyncio
import os
import stat

from firmware import status


def test_request_reply_and_permissions(tmp_path):
    path = tmp_path / "fw.sock"
    seen = []
    pins = []

    async def handle(req):
        seen.append(req)
        return {"state": "idle"} if req["cmd"] == "status" else {"ok": True}

    def on_pin(pin):
        pins.append(bytes(pin.reveal()))
        pin.wipe()
        return {"ok": True}

    async def scenario():
        server = await status.serve(path, handle, on_pin)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            loop = asyncio.get_running_loop()
            first = await loop.run_in_executor(None, status.request, path)
            second = await loop.run_in_executor(None, status.request, path, {"cmd": "pin", "pin": "2468"})
            return first, second
        finally:
            server.close()
            await server.wait_closed()

    first, second = asyncio.run(scenario())
    assert first == {"state": "idle"}
    assert second == {"ok": True}
    assert seen == [{"cmd": "status"}]  # the PIN never reached the JSON handler
    assert pins == [b"2468"]


def test_malformed_request_gets_an_error_not_a_crash(tmp_path):
    import socket

    path = tmp_path / "fw.sock"

    async def handle(req):
        return {"state": "idle"}

    def on_pin(pin):
        raise AssertionError("no PIN in this test")

    async def scenario():
        server = await status.serve(path, handle, on_pin)
        loop = asyncio.get_running_loop()

        def raw(data: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                s.sendall(data)
                return s.recv(4096)

        try:
            bad = await loop.run_in_executor(None, raw, b"[1,2]\n")
            worse = await loop.run_in_executor(None, raw, b"{not json\n")
            good = await loop.run_in_executor(None, status.request, path)
            return bad, worse, good
        finally:
            server.close()
            await server.wait_closed()

    bad, worse, good = asyncio.run(scenario())
    assert b"error" in bad and b"error" in worse
    assert good == {"state": "idle"}


def test_a_pin_request_is_parsed_from_bytes_and_the_buffer_is_zeroed():
    got = []
    for line in (b'{"cmd": "pin", "pin": "2468"}\n', b'{"pin":"2468","cmd":"pin"}'):
        buf = bytearray(line) + bytearray(8)
        reply = status.decode(buf, len(line), lambda pin: got.append(bytes(pin.reveal())) or {"ok": True})
        assert reply == {"reply": {"ok": True}}
        assert buf == bytearray(len(buf))  # nothing of the request is left in the daemon's buffer
    assert got == [b"2468", b"2468"]


def test_a_pin_in_any_other_shape_is_refused_unread_and_wiped():
    for line in (b'{"cmd": "pin", "pin": "24a8"}', b'{"cmd": "pin", "pin": "' + b"1" * 17 + b'"}',
                 b'{"cmd": "pin", "pin": "2468", "x": 1}', b'{"cmd": "status", "pin": "2468"}'):
        buf = bytearray(line)
        reply = status.decode(buf, len(line), lambda pin: (_ for _ in ()).throw(AssertionError(line)))
        assert "error" in reply["reply"] and b"2468" not in buf, line


def test_other_requests_are_json():
    buf = bytearray(b'{"cmd": "clear-fault"}\n')
    assert status.decode(buf, len(buf), lambda pin: None) == {"request": {"cmd": "clear-fault"}}
