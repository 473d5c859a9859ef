"""What a long run needs to stop cleanly and leave only whole files: one `Interrupted`, the signal handling
that raises it (held back while a record is being written), and atomic writes. `npbert eval` (evaluate.py)
and `npbert batch` (batch.py) both stand on it.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """A run stopped on SIGINT or SIGTERM (`signum`); the `done` of `total` it finished are on disk in `saved`
    (`npbert eval`: the partial predictions file; `npbert batch`: the parts folder)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.done, self.total, self.saved = signum, 0, 0, None


class Signals:
    """SIGINT and SIGTERM raise `Interrupted`, except inside `critical()` (writing a chunk), where they are
    held until the block ends, so a chunk line is either written whole or not at all."""

    def __init__(self):
        self.holding, self.pending = False, None

    def handler(self, signum, frame):
        if self.holding:
            self.pending = signum
        else:
            raise Interrupted(signum)

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # handlers work in the main thread only
            yield self
            return
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextmanager
    def critical(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)


def interrupt_behind(error: SystemError):
    """The Interrupted a native call turned into this SystemError, or None. When the signal handler raises
    while a numba kernel's dispatcher is running, the dispatcher returns its result anyway and CPython
    reports "returned a result with an exception set", with the Interrupted as the cause. It is still the
    interrupt (seen about once in 40 runs of SIGTERM during an eval)."""
    cause = error.__cause__ or error.__context__
    return cause if isinstance(cause, Interrupted) else None


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` whole or not at all: written to PATH.tmp, fsync'ed, renamed. A write that fails
    (a full disk) removes PATH.tmp and raises an OSError naming `path` (the system's own names no file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the error worth reporting is the write's
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
