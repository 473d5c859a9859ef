"""`npbert serve`: the question-answering model as a real-time HTTP endpoint (see docs/serving.md)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys

from ..hub import DEFAULT_MODEL
from ..limits import DEFAULT_MAX_WINDOWS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (POST /score, POST /v1/answer, GET /health)",
        description="Serve question answering over HTTP: the model catalog's scoring schema "
        "at POST /score, full records at POST /v1/answer, GET /health, "
        "OpenAPI at /openapi.json. Needs the serve extra: pip install -e '.[serve]' in a clone of npbert.",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="checkpoint folder or hub repository id (default: %(default)s)"
    )
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=8000, help="port (0: any free port, printed when ready; default: %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes, each on max(1, cores // N) threads unless NPBERT_BLAS_THREADS is set; with the "
        "prefork extra this process loads the model and forks them (they share it), without it each loads "
        "its own (default: %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes", type=_positive, default=1 << 20, help="larger bodies get 413 (default: %(default)s)"
    )
    p.add_argument(
        "--max-context-chars", type=_positive, default=20_000, help="longer contexts get 422 (default: %(default)s)"
    )
    p.add_argument(
        "--max-question-chars", type=_positive, default=1_000, help="longer questions get 422 (default: %(default)s)"
    )
    p.add_argument(
        "--max-items", type=_positive, default=32, help="most questions in one request (default: %(default)s)"
    )
    p.add_argument(
        "--max-windows",
        type=_positive,
        default=DEFAULT_MAX_WINDOWS,
        help="most windows one question's context may make; more get 422 (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-windows",
        type=_positive,
        default=64,
        help="most windows all the questions of one request may make; more get 422: bounds the work "
        "of one request (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=_positive,
        default=8,
        help="most windows in one model call, from any requests (default: %(default)s)",
    )
    p.add_argument(
        "--turn-tokens",
        type=_positive,
        default=512,
        help="most tokens of windows one request runs before the other requests get a turn: a small "
        "request waits for at most this much of a large one's work (default: %(default)s)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long an idle server waits to coalesce requests (default: %(default)s)",
    )
    p.add_argument("--no-batching", action="store_true", help="answer each request on its own (same as --max-batch 1)")
    p.add_argument(
        "--request-timeout",
        type=seconds,
        default=120.0,
        help="seconds from a request's body to its answer; later: 503 and its remaining work dropped "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--header-timeout",
        type=seconds,
        default=10.0,
        help="seconds a connection has to send a complete request line and headers; later: 408 and "
        "closed (default: %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=seconds,
        default=30.0,
        help="seconds a request has to send its body after its headers; later: 408 and closed (default: %(default)s)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=_positive,
        default=5,
        help="seconds an idle keep-alive connection is kept open (uvicorn's timeout_keep_alive; default: %(default)s)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=_positive,
        default=128,
        help="most requests in progress per worker process (bodies being read or answered; idle "
        "connections do not count); a request over it gets 503 (default: %(default)s)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=60.0,
        help="on SIGTERM, seconds to let in-flight requests finish; those still running then get 503 "
        "(default: %(default)s)",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening: uvicorn listens once the app has started), or a
    one-line error before the model is loaded: a busy port should not cost a model load and a warm-up."""
    from . import CommandError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise CommandError(f"--host {host}: not an address of this machine ({e.strerror})", 2) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        why = (
            "in use by another process"
            if e.errno == errno.EADDRINUSE
            else "not an address of this machine"
            if e.errno == errno.EADDRNOTAVAIL
            else e.strerror
        )
        raise CommandError(f"cannot listen on {host}:{port}: {why}", 2) from None
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    from . import CommandError

    try:
        import uvicorn

        from ..serve.app import LOG_FORMAT, Settings, create_app
        from ..serve.protocol import TimedH11Protocol
        from ..serve.schemas import Limits
        from ..serve.server import server_class
    except ImportError as e:
        raise CommandError(
            f"needs the serve extra ({e.name} is missing): pip install -e '.[serve]' in a clone of npbert"
        ) from None
    if args.batch_wait_ms < 0:
        raise CommandError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}", 2)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    settings = Settings(
        model=args.model,
        revision=args.revision,
        limits=Limits(
            max_body_bytes=args.max_body_bytes,
            max_context_chars=args.max_context_chars,
            max_question_chars=args.max_question_chars,
            max_items=args.max_items,
            max_windows=args.max_windows,
            max_request_windows=args.max_request_windows,
        ),
        max_batch=1 if args.no_batching else args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        turn_tokens=args.turn_tokens,
        request_timeout=args.request_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        limit_concurrency=args.limit_concurrency,
    )
    # No uvicorn limit_concurrency: it counts open connections, idle ones too, so silent sockets locked real
    # clients out; the app counts the requests in progress instead (Settings.limit_concurrency).
    options = dict(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
        log_config=None,
        http=TimedH11Protocol,
        timeout_keep_alive=args.keep_alive_timeout,
    )
    log = logging.getLogger("npbert.serve")
    if args.workers == 1:
        stopped = []
        sock = listen_socket(args.host, args.port)
        # Load here, before listening: a bad --model is a one-line error, and a listening server is ready.
        app = create_app(settings)
        state = app.state.npbert
        server = server_class()(uvicorn.Config(app, **options), state)
        # uvicorn re-raises the signal that stopped it once it has drained; taking that signal here
        # lets the process exit 0 after a SIGTERM shutdown.
        _on_signals(lambda sig, frame: stopped.append(sig))
        server.run(sockets=[sock])
        if not server.started:
            raise CommandError(f"could not start the server on {args.host}:{args.port} (see the log above)")
        on = f" on {signal.Signals(stopped[0]).name}" if stopped else ""
        if state.cut_off:
            log.warning(
                "exited%s after the %g s graceful timeout: %d request%s cut off unfinished (answered 503)",
                on,
                args.graceful_timeout,
                state.cut_off,
                "" if state.cut_off == 1 else "s",
            )
        else:
            log.info("exited cleanly%s: every request was answered or refused", on)
    else:
        from .. import threads
        from ..model import check_environment

        listen_socket(args.host, args.port).close()  # a busy port: one line, before the model is loaded
        check_environment()  # as the workers will read it: a bad NPBERT_* value is one line here
        # Each worker a share of the cores, not all of them each (N workers x all cores threads, switching
        # under each other's products); the workers inherit the setting, on both paths below.
        log.info("workers: %s", threads.share_among(args.workers))
        try:
            from ..serve import prefork
        except ImportError as e:
            log.info(
                "without the prefork extra (%s is missing) each of the %d workers loads its own copy of "
                "the model: pip install -e '.[prefork]' to load it once and share it",
                e.name,
                args.workers,
            )
            _run_uvicorn_workers(args, settings, options, log)
        else:
            _run_prefork(prefork, args, settings, options, create_app, log)
    return 0


def _run_prefork(prefork, args, settings, options, create_app, log) -> None:
    """--workers N on gunicorn (npbert/serve/prefork.py): the model loaded here, the workers forked."""
    from . import CommandError

    # The tokenizer's Rust thread pool does not survive fork() (tokenizers then turns it off in each worker,
    # with a warning per worker); a worker's requests are tokenized one at a time under a lock anyway.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = create_app(settings)  # loads and answers the warm-up question: numba's kernels are loaded here too
    uvicorn_options = {k: v for k, v in options.items() if k not in ("host", "port", "log_config")}
    server = prefork.Application(
        app,
        args.workers,
        args.host,
        args.port,
        args.graceful_timeout,
        args.keep_alive_timeout,
        args.log_level,
        uvicorn_options,
    )
    log.info("forking %d workers, which share this process's model", args.workers)
    code = server.run()
    if server.halted_because:
        raise CommandError(server.halted_because, 1)
    if code != 0:
        raise CommandError(f"the server stopped with status {code} (see the log above)", 1)
    log.info(
        "exited%s (each worker logged its own counters when it stopped)",
        f" on {signal.Signals(server.stopped_by).name}" if server.stopped_by else "",
    )


def _run_uvicorn_workers(args, settings, options, log) -> None:
    """--workers N on uvicorn's own multi-process mode: each worker process loads the model itself."""
    import uvicorn

    from ..hub import resolve
    from ..serve.app import LOG_LEVEL_ENV, SETTINGS_ENV

    resolve(args.model, args.revision)  # fail here, once, rather than in every worker (and fetch it once)
    os.environ[SETTINGS_ENV], os.environ[LOG_LEVEL_ENV] = settings.to_json(), args.log_level.upper()
    stopped = []
    _on_signals(lambda sig, frame: stopped.append(sig))
    uvicorn.run("npbert.serve.app:app_from_env", factory=True, workers=args.workers, **options)
    log.info(
        "exited%s (each worker logged its own counters when it stopped)",
        f" on {signal.Signals(stopped[0]).name}" if stopped else "",
    )


def _on_signals(handler) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
