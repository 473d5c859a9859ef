"""Where npbert's thread control lives: how many threads numpy's OpenBLAS gets for a model call.

One default and one override:

- **Default**: every core of the process's CPU affinity (`os.sched_getaffinity(0)`, where the platform has
  it; else `os.cpu_count()`): what `taskset`, a container's cpuset or a batch scheduler gives the
  process, read at each model call. Not OpenBLAS's start count ($OPENBLAS_NUM_THREADS) and not the
  machine's load: a load-average rule cannot tell another process's load from the load npbert's own
  threads just made (docs/performance.md, "Thread policy (issue 26 item 5)", has the measurements that
  dropped it).
- **Override**: `$NPBERT_BLAS_THREADS=n` fixes the count. `npbert serve --workers N` sets it for its
  workers (`share_among`: the cores divided among them) unless the user has; batch workers set 1.

`for_model_call()` applies the count around one model call (the model classes' `__call__`; calls that
overlap on several threads share one scope), scoped and restored: the forward itself (`model.encoder`)
sets no process-wide state, and a caller's own `threadpoolctl.threadpool_limits` outside a call is back
in force after it. The kernels' worker threads
(`ops.parallel.split_over_threads`) take their count from the same call (`current()`), and run with
OpenBLAS on one thread meanwhile (`single_blas_thread()`).

Finding OpenBLAS and setting its thread count is threadpoolctl's job (the library scikit-learn uses for
it). Only numpy's OpenBLAS is controlled: another BLAS (MKL, Accelerate, BLIS) keeps its own settings.
The one hand-written part is below: OpenBLAS's idle-thread timeout, which threadpoolctl has no API for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

# OpenBLAS's idle workers spin-wait for ~2^28 cycles after each product by default, stealing the core the
# kernels' threads are about to use (they alternate every few milliseconds; docs/performance.md, "Figures
# that lived in code comments", has the cost). With a timeout idle workers sleep at once, and a switch
# costs a futex wake-up instead. setdefault: a user's own setting wins. OpenBLAS reads the
# variable when numpy is first imported, so this module runs before npbert imports numpy.
_timeout_was_set = "OPENBLAS_THREAD_TIMEOUT" in os.environ
_numpy_came_first = "numpy" in sys.modules
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

OVERRIDE_ENV = "NPBERT_BLAS_THREADS"


@functools.cache
def _numpy_openblas() -> threadpoolctl.ThreadpoolController:
    """threadpoolctl's controller for the OpenBLAS numpy calls: the one its wheel bundles (numpy.libs,
    .dylibs), else every OpenBLAS loaded (a numpy linked to a system or conda OpenBLAS); empty with MKL,
    Accelerate or BLIS."""
    openblas = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    numpy_dir = os.path.dirname(os.path.realpath(np.__path__[0]))
    bundled = [
        lib.filepath
        for lib in openblas.lib_controllers
        if os.path.realpath(lib.filepath).startswith(os.path.join(numpy_dir, "numpy"))
    ]
    return openblas.select(filepath=bundled) if bundled else openblas


def controllable() -> bool:
    """True when numpy's OpenBLAS was found, so its thread count can be set."""
    return bool(_numpy_openblas().lib_controllers)


def cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform has one, else all of them."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def _override() -> int | None:
    value = os.environ.get(OVERRIDE_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{OVERRIDE_ENV} must be a whole number >= 1, found {value!r}")
    return int(value)


def policy() -> int:
    """The OpenBLAS thread count for the next model call: $NPBERT_BLAS_THREADS if set, else cores()."""
    return _override() or cores()


def share_among(processes: int) -> str:
    """Give each of `processes` processes started after this call (they inherit the environment) an equal
    share of the cores: max(1, cores() // processes) threads each, unless $NPBERT_BLAS_THREADS is already set
    (the user's count wins). The remainder of the division goes to no process in particular: their Python
    threads (HTTP, tokenization) and a parent's run on it. Returns a line saying the count and where it
    came from, for the log."""
    given = _override() is not None
    if not given:
        os.environ[OVERRIDE_ENV] = str(max(1, cores() // processes))
    n = policy()
    why = f"${OVERRIDE_ENV}" if given else f"the {cores()} cores of the CPU affinity among {processes}"
    return f"{n} BLAS thread{'s' if n > 1 else ''} per process ({why})"


# The count the running model calls were given: the kernels split their work over as many threads. 1 outside
# a call (a kernel called on its own runs serially). Process-wide, like OpenBLAS's own setting.
_current = 1
# Model calls running now, in any thread, and how to undo what the first of them set (see for_model_call).
# The lock also orders every change npbert makes to OpenBLAS's count.
_scope_lock = threading.Lock()
_calls_running = 0
_undo = None


def current() -> int:
    return _current


def calls_running() -> int:
    """Model calls running now, in all threads: above 1, calls are sharing the process (and OpenBLAS)."""
    return _calls_running


def _release_control() -> None:
    # threadpoolctl >= 3.8 lets only the first thread that set an OpenBLAS (pthreads) limit set another, until
    # it is released: the others "silently do nothing". npbert orders its own changes (_scope_lock), so it
    # releases after each: a model call on another thread (a server's, a thread pool's) then gets its count
    # too, instead of running with whatever count the main thread left.
    controller = getattr(threadpoolctl, "OpenBLASController", None)
    if hasattr(controller, "clear_controlling_thread"):
        controller.clear_controlling_thread(force=True)


def _limit(threads: int):  # OpenBLAS set to `threads` now (call under _scope_lock); returns the undo
    limits = _numpy_openblas().limit(limits=threads)
    _release_control()
    return limits


def _restore(limits) -> None:  # under _scope_lock
    limits.restore_original_limits()
    _release_control()


@contextlib.contextmanager
def for_model_call():
    """Apply the thread count for one model call: OpenBLAS set to policy() threads (when controllable), the
    previous count and current() restored on exit. Yields the count.

    Calls that overlap (threads sharing a model) share one scope: the first sets the count, the last
    restores it, the others run with the count in force. Each call setting and restoring its own would
    change the count under the others mid-product (one call's exit restoring all cores while another runs
    with one), and some OpenBLAS kernels round with the thread count (docs/pipeline.md)."""
    global _current, _calls_running, _undo
    with _scope_lock:
        if _calls_running == 0:
            threads = policy()
            _undo, _current = (_limit(threads) if controllable() else None, _current), threads
        _calls_running += 1
        threads = _current
    try:
        yield threads
    finally:
        with _scope_lock:
            _calls_running -= 1
            if _calls_running == 0:
                limits, _current = _undo
                if limits is not None:
                    _restore(limits)


@contextlib.contextmanager
def single_blas_thread():
    """OpenBLAS on one thread inside the block (the kernels' own threads each run whole products), restored
    after: threadpoolctl's limit (cheap to enter and leave: tens of microseconds). Only for a model call
    running alone (ops.parallel.split_over_threads checks calls_running()): with others running it would change the
    count under their products."""
    with _scope_lock:
        limits = _limit(1) if controllable() else None
    try:
        yield
    finally:
        if limits is not None:
            with _scope_lock:
                _restore(limits)


# --- the hand-written part: OpenBLAS's thread timeout, re-read --------------------------------------------
# threadpoolctl sets thread counts only. When numpy was imported before npbert (the usual order in a user's
# program), OpenBLAS started its threads with the spinning default, and the timeout set above comes too
# late. Two exported OpenBLAS functions fix it: `openblas_read_env` (re-read the environment) and
# `blas_thread_shutdown_` (stop the idle threads; the next threaded call restarts them with the timeout;
# OpenBLAS's own fork handler uses it); docs/performance.md has what the re-read saves. Only while the
# importing thread is the process's only Python thread: stopping OpenBLAS's threads under a product another
# thread is running would break that product. Otherwise export OPENBLAS_THREAD_TIMEOUT=4 yourself (docs/performance.md).


def _reread_timeout() -> bool:
    import ctypes

    libs = _numpy_openblas().lib_controllers
    if not libs or threading.active_count() > 1:
        return False
    done = False
    for lib in libs:
        dll = ctypes.CDLL(lib.filepath)  # already loaded: the same handle numpy uses
        if hasattr(dll, "openblas_read_env") and hasattr(dll, "blas_thread_shutdown_"):
            dll.openblas_read_env()
            dll.blas_thread_shutdown_()
            done = True
    return done


# True when importing npbert made OpenBLAS restart its threads with the timeout above.
timeout_reread = _numpy_came_first and not _timeout_was_set and _reread_timeout()
