"""`python -m hal.panel --socket PATH --listen 127.0.0.1:8650`: run the web panel service.

Unprivileged; listens on the loopback address given (any other is refused before a socket exists)
and talks to the firmware's panel socket. Tells systemd READY=1 once it listens (Type=notify; a
no-op without NOTIFY_SOCKET). Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from firmware.sdnotify import notify
from hal.panel.client import DEFAULT_SOCKET
from hal.panel.web import NotLoopback, serve

DEFAULT_LISTEN = "127.0.0.1:8650"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hal.panel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the firmware's panel socket")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="loopback host:port to serve on")
    parser.add_argument("--verbose", action="store_true", help="log every request line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    try:
        server = serve(args.listen, args.socket)
    except NotLoopback as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"panel: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 1

    def stop(signum, frame):  # serve_forever must be shut down from another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("tenantprint.panel.web").info("serving %s for %s", server.url, args.socket)
    notify("READY=1")
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
