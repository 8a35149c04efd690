"""The firmware's control socket: one JSON request line, one JSON reply line, mode 0600."""

import asyncio
import os
import stat

from firmware import status


def test_request_reply_and_permissions(tmp_path):
    path = tmp_path / "fw.sock"
    seen = []

    async def handle(req):
        seen.append(req)
        return {"state": "idle"} if req["cmd"] == "status" else {"ok": True}

    async def scenario():
        server = await status.serve(path, handle)
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
    assert seen == [{"cmd": "status"}, {"cmd": "pin", "pin": "2468"}]


def test_malformed_request_gets_an_error_not_a_crash(tmp_path):
    import socket

    path = tmp_path / "fw.sock"

    async def handle(req):
        return {"state": "idle"}

    async def scenario():
        server = await status.serve(path, handle)
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
