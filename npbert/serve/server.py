"""The uvicorn server npbert runs, whether started by `npbert serve` (commands/serve.py) or in each of the
pre-forked workers (prefork.py): it announces where it listens and how many requests a signal leaves to drain."""

from __future__ import annotations

import logging
import signal


def server_class():
    """uvicorn.Server with npbert's announcements (uvicorn is imported only when a server is made)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, announcing the address it listens on once it does (with --port 0, the real
        port) and how many requests a SIGTERM/SIGINT leaves to drain."""

        def __init__(self, config, state):
            super().__init__(config)
            self.state = state

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                logging.getLogger("npbert.serve").info("ready on http://%s:%d", host, port)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                n = self.state.in_flight
                logging.getLogger("npbert.serve").info(
                    "%s: draining %d in-flight request%s, then exiting",
                    signal.Signals(sig).name,
                    n,
                    "" if n == 1 else "s",
                )
            super().handle_exit(sig, frame)

    return Server
