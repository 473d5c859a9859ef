"""npbert's own worker threads: the other cores' shares of a kernel or a product, handed over in microseconds.

`run(work, chunks)` runs work(chunks[0]) on the calling thread and each other chunk on a worker thread, and
returns once every chunk has finished (raising the first chunk's exception, if any, only then). A chunk no
worker has started by the time the caller is free is taken back and run by the caller: on a machine
where other processes hold the cores, a worker may wait milliseconds for a time slice, and the caller would
otherwise sit idle all that time (ONNX Runtime's pool does the same; docs/performance.md, "The worker
threads under load"). ops/parallel.py
splits its products and kernels with it, over as many threads as the model call was given
(threads.current()).

Why not concurrent.futures: a worker that sleeps on a lock or a condition variable is woken through the
kernel, and on a virtual machine a sleeping vCPU is halted and woken by an interrupt from the host: a
hand-off can cost more than the chunk of work it hands over in a short input's forward (docs/performance.md,
"Figures that lived in code comments"). So, as
OpenMP runtimes, ONNX Runtime's and OpenBLAS's own thread pools do, a worker that finishes a chunk *spins*
for up to SPIN_SECONDS (a pause loop in numba that yields its core now and then, the GIL released) before
it goes to sleep on a semaphore, and so does the caller waiting for the workers: back-to-back products
then hand over through two shared integers (the GIL's own hand-off is most of that time). A
worker idle for longer than SPIN_SECONDS sleeps and costs nothing.

The flags are int64 slots read and written with LLVM atomics (numba has no atomics of its own): a plain
load in a spin loop may be hoisted out of it by the compiler. The sleep/wake hand-shake is Dekker's: each
side stores its own flag and then loads the other's with sequential consistency, so a post is never missed
by a worker going to sleep, nor a "done" by a caller going to sleep; a wake-up that turns out unneeded
leaves a spare semaphore permit, which the wait loops below tolerate (they re-check the flag).

One caller at a time uses the workers (a lock): a second thread calling `run` meanwhile (a server running
two forwards at once) runs its chunks itself, one after the other, rather than wait. After fork() a child
starts its own workers (the parent's threads do not exist in it).
"""

from __future__ import annotations

import os
import platform
import threading
import time

# cache_root before the first kernel is decorated: numba picks its cache folder then.
from . import cache_root

cache_root.use_for_numba()

import numba  # noqa: E402
import numba.extending  # noqa: E402
import numpy as np  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402

# How long a worker (and a caller waiting for the workers) spins before it sleeps. Longer than the gaps
# between split products in a forward (bias adds, a serial attention or LayerNorm at short S), short enough
# that a worker idle between requests gives its core back at once.
SPIN_SECONDS = 300e-6

# The slots of a worker's flags. _CLAIMED: the last ticket someone took, the worker or the caller taking it
# back; whoever moves it from ticket - 1 to ticket (an atomic compare-and-swap) runs that chunk.
_POSTED, _DONE, _WORKER_SLEEPS, _CALLER_SLEEPS, _CLAIMED = 0, 1, 2, 3, 4


def _pause_instruction(builder):
    # The spin-wait hint: tells the core (and a hypervisor watching for spin loops) that this loop only waits.
    from llvmlite import ir

    machine = platform.machine().lower()
    name = {"x86_64": "llvm.x86.sse2.pause", "amd64": "llvm.x86.sse2.pause"}.get(machine)
    if name is None and machine in ("aarch64", "arm64"):
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]), "llvm.aarch64.hint"
        )
        builder.call(hint, [ir.Constant(ir.IntType(32), 1)])  # YIELD
        return
    if name is not None:
        builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), name), [])


@numba.extending.intrinsic
def _atomic_load(typingctx, flags, slot):
    sig = types.int64(flags, slot)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(builder.gep(data, [args[1]]), "seq_cst", 8)

    return sig, codegen


@numba.extending.intrinsic
def _atomic_compare_swap(typingctx, flags, slot, expected, new):  # 1 if flags[slot] was `expected` and is now `new`
    sig = types.int64(flags, slot, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        result = builder.cmpxchg(builder.gep(data, [args[1]]), args[2], args[3], "seq_cst", "seq_cst")
        return builder.zext(builder.extract_value(result, 1), ir.IntType(64))

    return sig, codegen


@numba.extending.intrinsic
def _atomic_store(typingctx, flags, slot, value):
    sig = types.void(flags, slot, value)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[2], builder.gep(data, [args[1]]), "seq_cst", 8)
        return context.get_dummy_value()

    return sig, codegen


# The scheduler may wake a sleeping worker on the caller's own core (seen on the KVM machine here: Linux
# counts a halted vCPU as busy), and a caller that then spins keeps its woken worker off the core until the
# spin ends; a sched_yield every YIELD_EVERY pauses lets it run (docs/performance.md has the figures).
# sched_yield returns at once when nothing else wants the core. It is reached through
# a symbol registered with LLVM by address, so the compiled loops can be cached; where libc has none
# (Windows), the loops only pause.
YIELD_EVERY = 16
_YIELD_SYMBOL = "npbert_sched_yield"


def _register_sched_yield() -> bool:
    import ctypes

    import llvmlite.binding

    try:
        address = ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value
    except (OSError, AttributeError, TypeError):
        return False
    llvmlite.binding.add_symbol(_YIELD_SYMBOL, address)
    return True


_CAN_YIELD = _register_sched_yield()


@numba.extending.intrinsic
def _yield_core(typingctx):
    sig = types.void()

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        if _CAN_YIELD:
            builder.call(
                cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), _YIELD_SYMBOL), []
            )
        else:
            _pause_instruction(builder)
        return context.get_dummy_value()

    return sig, codegen


@numba.extending.intrinsic
def _pause(typingctx):
    sig = types.void()

    def codegen(context, builder, signature, args):
        _pause_instruction(builder)
        return context.get_dummy_value()

    return sig, codegen


_JIT = dict(cache=True, nogil=True)


@numba.njit(**_JIT)
def _spin_while_equal(flags, slot, value, spins):  # -> flags[slot] once it differs, or value after `spins` waits
    for i in range(spins):
        now = _atomic_load(flags, slot)
        if now != value:
            return now
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            _yield_core()
        else:
            _pause()
    return _atomic_load(flags, slot)


@numba.njit(**_JIT)
def _load(flags, slot):  # the intrinsics compile only inside numba code: these are Python's way to them
    return _atomic_load(flags, slot)


@numba.njit(**_JIT)
def _store(flags, slot, value):
    _atomic_store(flags, slot, value)


@numba.njit(**_JIT)
def _store_then_load(flags, store_slot, value, load_slot):  # Dekker's half: publish, then look at the other side
    _atomic_store(flags, store_slot, value)
    return _atomic_load(flags, load_slot)


@numba.njit(**_JIT)
def _claim(flags, ticket):  # True for the one side (worker or caller) that takes this ticket's chunk
    return _atomic_compare_swap(flags, _CLAIMED, ticket - 1, ticket) == 1


def _spins_for(seconds: float) -> int:
    # Pause loops per SPIN_SECONDS on this CPU: a pause takes ~10 cycles on some x86 cores and ~140 on others.
    flags, n = np.zeros(4, np.int64), 20_000
    _spin_while_equal(flags, 0, 0, 10)  # compiled (or loaded from the cache) before timing
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        _spin_while_equal(flags, 0, 0, n)
        best = min(best, time.perf_counter() - start)
    return max(1, int(n * seconds / max(best, 1e-9)))


class _Worker:
    def __init__(self, spins: int):
        self.flags = np.zeros(5, np.int64)
        self.spins = spins
        self.wake, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.task, self.error = None, None
        self.thread = threading.Thread(target=self._loop, name="npbert-worker", daemon=True)
        self.thread.start()

    def _loop(self):
        seen = 0
        while True:
            posted = _spin_while_equal(self.flags, _POSTED, seen, self.spins)
            if posted == seen:  # idle for SPIN_SECONDS: sleep until the next post
                posted = _store_then_load(self.flags, _WORKER_SLEEPS, 1, _POSTED)
                while posted == seen:
                    self.wake.acquire()
                    posted = _load(self.flags, _POSTED)
                _store(self.flags, _WORKER_SLEEPS, 0)
            seen = posted
            if not _claim(self.flags, posted):  # the caller got there first and runs the chunk itself
                continue
            work, chunk = self.task
            self.task = None
            try:
                work(chunk)
            except BaseException as e:  # noqa: BLE001  handed to the caller, raised there
                self.error = e
            if _store_then_load(self.flags, _DONE, posted, _CALLER_SLEEPS):
                self.done.release()

    def post(self, work, chunk) -> int:
        self.task, self.error = (work, chunk), None
        ticket = int(self.flags[_POSTED]) + 1
        if _store_then_load(self.flags, _POSTED, ticket, _WORKER_SLEEPS):
            self.wake.release()
        return ticket

    def take_back(self, ticket: int) -> bool:
        """True when the worker has not started this ticket's chunk: it is now the caller's to run (the
        worker will skip it)."""
        if not _claim(self.flags, ticket):
            return False
        self.task = None
        _store(self.flags, _DONE, ticket)  # as if the worker had run it: the next wait starts from here
        return True

    def wait(self, ticket: int) -> BaseException | None:
        done = _spin_while_equal(self.flags, _DONE, ticket - 1, self.spins)
        if done != ticket:  # the chunk runs long: sleep until the worker says it is done
            done = _store_then_load(self.flags, _CALLER_SLEEPS, 1, _DONE)
            while done != ticket:
                # A timeout only to notice a worker that died (a bug here, never a chunk's exception,
                # which is caught and handed over): the caller would otherwise wait forever.
                if not self.done.acquire(timeout=1.0) and not self.thread.is_alive():
                    raise RuntimeError("an npbert worker thread died; see the exception printed above")
                done = _load(self.flags, _DONE)
            _store(self.flags, _CALLER_SLEEPS, 0)
        return self.error


_lock = threading.Lock()
_workers: list[_Worker] = []
_spins = 0


def _forget_workers_in_child():
    # A forked child has none of the parent's threads: waiting for them would hang. It starts its own.
    global _lock, _workers
    _lock, _workers = threading.Lock(), []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_in_child)


def _run_here(work, chunk) -> BaseException | None:
    try:
        work(chunk)
    except BaseException as e:  # noqa: BLE001  raised once every chunk has finished
        return e
    return None


def run(work, chunks: list) -> None:
    """work(chunk) for every chunk: the first on the calling thread, the others on worker threads (started on
    first use); returns when all have finished, then raises the first exception a chunk raised."""
    global _spins
    if len(chunks) == 1 or not _lock.acquire(blocking=False):  # one chunk, or another thread has the workers
        for chunk in chunks:
            work(chunk)
        return
    try:
        if not _spins:
            _spins = _spins_for(SPIN_SECONDS)
        _workers[:] = [w for w in _workers if w.thread.is_alive()]  # a dead one was reported when it died
        while len(_workers) < len(chunks) - 1:
            _workers.append(_Worker(_spins))
        tickets = [(w, w.post(work, chunk), chunk) for w, chunk in zip(_workers, chunks[1:])]
        error = _run_here(work, chunks[0])
        for w, ticket, chunk in tickets:  # every chunk finishes before this returns or raises: none still writes
            if w.take_back(ticket):  # its worker has not started it (no time slice yet, or dead): run it here
                worker_error = _run_here(work, chunk)
            else:
                try:
                    worker_error = w.wait(ticket)
                except RuntimeError as e:  # a dead worker: the others' chunks are still waited for
                    worker_error = e
            error = error or worker_error
        if error is not None:
            raise error
    finally:
        _lock.release()
