"""How a kernel's work is split over npbert's worker threads (workers.py), as the thread policy allows.

A kernel hands `split_over_threads` its tasks (rows, panels or (row, head) pairs); the work runs in
contiguous chunks, one per OpenBLAS thread the model call was given (threads.current()), the first on the
calling thread. Not numba's parallel pool: its OpenMP workers share libgomp with any PyTorch in the
process, whose spin-waiting they then inherit, and numba's other pools are not safe to call from several
threads at once (docs/performance.md, "The kernels' threads", has the measurements).
"""

from __future__ import annotations

import contextlib

from .. import threads, workers


def split_over_threads(work, tasks, worth_splitting, uses_blas=False):
    """Run work(chunk) over contiguous chunks of `tasks` (a list or range), one chunk per OpenBLAS thread
    the model call was given (threads.current()), the first on the calling thread; serially when not worth
    splitting or when OpenBLAS's thread count cannot be set (its threads would then compete with these).
    uses_blas: work calls numpy's BLAS, which is then held to one thread (each chunk's products run whole,
    and a head's scores stay in its core's cache). Serially too while other model calls are running
    (threads sharing a model): the cores are theirs as well, and holding OpenBLAS to one thread would change
    the count under their products (threads.for_model_call)."""
    alone = threads.calls_running() <= 1
    n = min(threads.current(), len(tasks)) if threads.controllable() and worth_splitting and alone else 1
    if n == 1:
        return work(tasks)
    chunks = [tasks[i * len(tasks) // n : (i + 1) * len(tasks) // n] for i in range(n)]
    with threads.single_blas_thread() if uses_blas else contextlib.nullcontext():
        workers.run(work, chunks)
