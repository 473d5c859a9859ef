"""`npbert serve --workers N` on gunicorn's pre-fork master (the `prefork` extra: gunicorn, uvicorn-worker).

Follows gunicorn's documented `preload_app` model (https://gunicorn.org/reference/settings/#preload-app)
with uvicorn-worker's `UvicornWorker` running each worker's event loop: the parent process builds the app
once (model loaded, one warm-up answer run, so numba's kernels are loaded too), then forks the workers,
which share those pages copy-on-write instead of each holding its own interpreter state, kernels and
tokenizer (docs/performance.md, "Memory"). Before each fork the parent calls `gc.freeze()`: the collector
would otherwise write to the header of every object it visits in a worker, un-sharing the pages they sit on.

Signals, as without gunicorn: SIGTERM, SIGINT and SIGQUIT all drain the requests in flight (each worker
runs uvicorn's graceful shutdown, `--graceful-timeout`), then the parent exits 0. gunicorn's master turns
SIGINT and SIGQUIT into SIGQUIT to the workers ("quick shutdown"), which uvicorn does not handle; the
worker here drains on it as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import sys
import time

import uvicorn
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from uvicorn_worker import UvicornWorker

from .. import relaid_cache
from .server import server_class

log = logging.getLogger("npbert.serve")

# Seconds the master waits beyond --graceful-timeout before it SIGKILLs a worker: the worker's own timeout
# (uvicorn's, which answers the requests it cuts off with 503) must end first.
_KILL_MARGIN_S = 10.0
_RESEND_STOP_S = 0.5  # how often a stopping master tells its workers again (_Arbiter.reap_workers)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Worker(UvicornWorker):
    """One forked worker: uvicorn serving the preloaded app with npbert's uvicorn options, npbert's log
    format and npbert's Server (its "ready on" and "draining" lines)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # UvicornWorker hands uvicorn's loggers to gunicorn's handlers, whose access log is off unless
        # gunicorn's --access-logfile is set: give them back to the root handler `npbert serve` set up.
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = [], True
        self.config = uvicorn.Config(
            app=None,
            log_config=None,
            timeout_notify=self.timeout,
            callback_notify=self.callback_notify,
            limit_max_requests=self.max_requests,
            forwarded_allow_ips=self.cfg.forwarded_allow_ips,
            **self.app.uvicorn_options,
        )

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = server_class()(self.config, self.wsgi.state.npbert)
        # uvicorn drains on SIGINT and SIGTERM; SIGQUIT (what gunicorn's master sends on its SIGINT or
        # SIGQUIT) would otherwise leave the worker serving until the master's SIGKILL.
        asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None)
        # uvicorn re-raises the signal that stopped it once it has drained; with gunicorn's default handlers
        # that would kill the worker by the signal (or raise KeyboardInterrupt) instead of a clean exit 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda sig, frame: None)
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class _Arbiter(Arbiter):
    """gunicorn's master, remembering the first signal that stopped it (for the closing log line)."""

    stopped_by: int | None = None
    halted_because: str | None = None
    _resend_at: float | None = None  # while stopping: when to tell the workers again

    def signal(self, sig, frame):
        if sig in STOP_SIGNALS and self.stopped_by is None:
            self.stopped_by = sig
        super().signal(sig, frame)

    def stop(self, graceful=True):
        self._resend_at = time.monotonic() + _RESEND_STOP_S
        super().stop(graceful)

    def reap_workers(self):
        # gunicorn's stop() calls this every 0.1 s while it waits for the workers. A worker forked just before
        # the stop signal can miss it: until it installs its own handlers it runs the master's, which only
        # queues the signal in the worker's copy of the master, and gunicorn would then wait the whole
        # graceful timeout before killing it. So the stop is said again, as SIGTERM: a worker already draining
        # ignores it (uvicorn's handler has nothing more to do, and after uvicorn returns the handler is a
        # no-op), one not yet serving exits, and a second SIGQUIT could meet SIGQUIT's default action there.
        super().reap_workers()
        if self._resend_at is not None and time.monotonic() >= self._resend_at:
            self._resend_at = time.monotonic() + _RESEND_STOP_S
            self.kill_workers(signal.SIGTERM)

    def manage_workers(self):
        # gunicorn's loop calls this at least once a second, and before every (re)spawn of a worker.
        changed = relaid_cache.changed_mappings()
        if changed:
            self.halted_because = (
                f"{changed[0]}: the server stopped rather than answer from it; restart it to rebuild the cache entry"
            )
            raise HaltServer(self.halted_because, 1)
        super().manage_workers()


class Application(BaseApplication):
    """gunicorn's application for an already built ASGI app (`create_app`'s): nothing is imported by name,
    and the load happened before gunicorn started, so a bad --model stays a one-line error."""

    def __init__(
        self,
        app,
        workers: int,
        host: str,
        port: int,
        graceful_timeout: float,
        keep_alive: int,
        log_level: str,
        uvicorn_options: dict,
    ):
        self.asgi_app, self.uvicorn_options = app, uvicorn_options
        self.options = {
            "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
            "workers": workers,
            "worker_class": f"{__name__}.Worker",
            "preload_app": True,
            "graceful_timeout": math.ceil(graceful_timeout + _KILL_MARGIN_S),  # whole seconds only
            "keepalive": keep_alive,
            "loglevel": log_level,
            # gunicorn >= 25's control socket defaults to one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl),
            # shared by every server the user runs, and its thread would be in the master when it forks.
            "control_socket_disable": True,
            "pre_fork": _freeze_before_fork,
        }
        self.arbiter: _Arbiter | None = None
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            if name in self.cfg.settings:  # an older gunicorn without a setting (control_socket_disable)
                self.cfg.set(name, value)

    def load(self):
        return self.asgi_app

    def run(self) -> int:
        """Serve until stopped; gunicorn's exit status (0 after a graceful stop)."""
        self.arbiter, master = _Arbiter(self), os.getpid()
        try:
            self.arbiter.run()
        except SystemExit as e:
            if os.getpid() != master:
                raise  # a worker's exit (gunicorn forks inside run()): it must not go on as the parent
            return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        return 0

    @property
    def stopped_by(self) -> int | None:
        return self.arbiter.stopped_by if self.arbiter else None

    @property
    def halted_because(self) -> str | None:
        return self.arbiter.halted_because if self.arbiter else None


def _freeze_before_fork(server, worker) -> None:
    # Everything the parent has allocated so far (the model, the tokenizer, numba's dispatchers, the app)
    # moves to the collector's permanent generation, which it never scans: a worker's collections then
    # leave those objects' headers, and the pages they share with the parent, untouched.
    gc.freeze()
