"""uvicorn's h11 HTTP protocol with a deadline for the head of each request.

uvicorn times out a keep-alive connection idle after a response (`timeout_keep_alive`), but not a
connection that never sends a complete request head: a socket opened and left silent, or a "slowloris"
sending one header byte every few seconds, holds its connection for ever. Here a timer starts when a
connection opens, and again when the first bytes of a next request arrive; if the request line and
headers are not complete within the server's `header_timeout`, the connection is answered 408 (when
some bytes came) and closed, logged and counted in `/health` (`timeouts.headers`). The body has its
own deadline, kept by the app (`read_body`), which can answer in JSON.

uvicorn is told to use this class with `http=TimedH11Protocol` (a class, importable by name, so that
`--workers N` processes find it too). It reads the timeout and the counters from the app's lifespan
state (`{"npbert": State}`, see app.py).
"""

from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("npbert.serve")
DEFAULT_HEADER_TIMEOUT = 10.0


class TimedH11Protocol(H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer, self._head_bytes = None, 0
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # between requests: these bytes begin the next head
            self._head_bytes += len(data)
            self._await_head()
        super().data_received(data)
        if self.cycle is not cycle:  # a request's head was complete: its cycle started
            self._head_done()

    def connection_lost(self, exc) -> None:
        self._head_done()
        super().connection_lost(exc)

    def _state(self):
        return (self.app_state or {}).get("npbert")

    def _await_head(self) -> None:
        if self._head_timer is None:
            state = self._state()
            timeout = state.settings.header_timeout if state is not None else DEFAULT_HEADER_TIMEOUT
            self._head_timer = self.loop.call_later(timeout, self._head_too_slow, timeout)

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer, self._head_bytes = None, 0

    def _head_too_slow(self, timeout: float) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        state = self._state()
        if state is not None:
            state.timeouts["headers"] += 1
        peer = "%s:%d" % self.client[:2] if self.client else "a client"
        log.info(
            "closed the connection of %s: no complete request head within %g s (%d bytes received)",
            peer,
            timeout,
            self._head_bytes,
        )
        if self._head_bytes:  # a request had begun: say why it ends (not through h11, which has no request)
            message = f"request line and headers not received within {timeout:g} s"
            body = json.dumps({"status": 408, "error": message, "problems": [message]}).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()
