"""npbert/threads.py: the OpenBLAS thread count (default: the cores of the process's CPU affinity, whatever
OpenBLAS started with and whatever the load average), its override ($NPBERT_BLAS_THREADS), the share of
`serve --workers N`, that a model call applies it scoped and restored (threadpoolctl reads OpenBLAS's real
count from outside npbert), and the thread timeout re-read. Process state (the affinity, OpenBLAS's
threads, the import order) is checked in fresh subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from npbert import threads

needs_openblas = pytest.mark.skipif(not threads.controllable(), reason="numpy is not using an OpenBLAS here")
needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")


def test_the_default_is_the_affinity_and_the_override_wins(monkeypatch):
    monkeypatch.delenv("NPBERT_BLAS_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (50.0, 50.0, 50.0))  # the load plays no part
    assert threads.policy() == 3
    monkeypatch.delattr(threads.os, "sched_getaffinity")  # macOS, Windows: every core
    assert threads.policy() == 8
    monkeypatch.setenv("NPBERT_BLAS_THREADS", "3")
    assert threads.policy() == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("NPBERT_BLAS_THREADS", bad)
        with pytest.raises(ValueError, match=f"NPBERT_BLAS_THREADS must be a whole number >= 1, found '{bad}'"):
            threads.policy()


@pytest.mark.parametrize(
    "cores, processes, given, expected",
    [(8, 2, None, "4"), (8, 3, None, "2"), (2, 2, None, "1"), (2, 5, None, "1"), (8, 2, "3", "3"), (8, 2, " ", "4")],
)
def test_serve_workers_share_the_cores_unless_the_user_set_a_count(monkeypatch, cores, processes, given, expected):
    monkeypatch.setattr(threads, "cores", lambda: cores)
    # set first, so that monkeypatch restores the variable's state before the test, whatever share_among
    # writes (delenv of an absent variable records nothing: the count leaked into later tests' workers)
    monkeypatch.setenv("NPBERT_BLAS_THREADS", "1")
    if given is None:
        monkeypatch.delenv("NPBERT_BLAS_THREADS")
    else:
        monkeypatch.setenv("NPBERT_BLAS_THREADS", given)
    line = threads.share_among(processes)
    assert os.environ["NPBERT_BLAS_THREADS"] == expected and threads.policy() == int(expected)
    assert line.startswith(f"{expected} BLAS thread{'s' if expected != '1' else ''} per process (")
    assert ("$NPBERT_BLAS_THREADS" in line) == (given == "3")


# A fresh process, restricted to the first `cores` cores of its affinity (0: left as it is) once numpy is
# imported: OpenBLAS's count as threadpoolctl sees it before, inside and after a model call (and inside a
# kernel split). The load average is faked high: the count must not follow it.
CALL = r"""
import json, os, sys
import numpy as np, threadpoolctl
cores = int(sys.argv[2])
if cores:  # after numpy: OpenBLAS has started its threads for every core it saw (it caps its count at them)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
os.getloadavg = lambda: (50.0, 50.0, 50.0)
import npbert
from npbert import ops, threads

def blas():  # numpy's OpenBLAS: scipy's own (numba imports scipy for some kernels) may be loaded too
    libs = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]
    return ([i for i in libs if "numpy" in i["filepath"]] or libs)[0]["num_threads"]

seen = {"before": blas()}
real_attention = ops.NUMBA.attention
def attention(*a, **k):
    seen["in_call"], seen["current"] = blas(), threads.current()
    with threads.single_blas_thread():
        seen["single"] = blas()
    return real_attention(*a, **k)
model = npbert.DistilBertForQuestionAnswering.from_pretrained(sys.argv[1])
model.ops = model.ops._replace(attention=attention)
model(np.arange(1, 9))
seen["after"], seen["current_after"] = blas(), threads.current()
with threadpoolctl.threadpool_limits(1, user_api="blas"):  # a caller's own limit survives a model call
    model(np.arange(1, 9))
    seen["caller_limit_after"] = blas()
print(json.dumps(seen))
"""


def run_call(tiny_checkpoint, cores, code=CALL, openblas_threads=2, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("NPBERT_BLAS_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint), str(cores)],
        env={**environ, "OPENBLAS_NUM_THREADS": str(openblas_threads), **env},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_openblas
@needs_affinity
def test_a_model_call_gets_the_affinity_scoped_and_restored(tiny_checkpoint):
    one = run_call(tiny_checkpoint, 1)  # OpenBLAS started with 2 threads, the process may run on 1 core
    assert one == {
        "before": 2,
        "in_call": 1,
        "current": 1,
        "single": 1,
        "after": 2,
        "current_after": 1,
        "caller_limit_after": 1,
    }
    fixed = run_call(tiny_checkpoint, 1, NPBERT_BLAS_THREADS="2")  # the override wins over the affinity
    assert fixed["in_call"] == fixed["current"] == 2 and fixed["after"] == 2
    assert fixed["caller_limit_after"] == 1
    if len(os.sched_getaffinity(0)) >= 2:  # OpenBLAS started with 1 thread: raised to the 2 cores for the call
        two = run_call(tiny_checkpoint, 2, openblas_threads=1)
        assert (two["before"], two["in_call"], two["current"], two["after"]) == (1, 2, 2, 1), two


# The same seen from a model call on another thread, after the main thread has made one (as a server's
# threads or a thread pool do); then two calls on two threads that overlap, the first ending while the
# second still runs: OpenBLAS's count inside the second after the first has returned, and after both.
CALL_IN_THREADS = CALL.replace(
    "print(json.dumps(seen))",
    """
import threading
model(np.arange(1, 9))  # on the main thread, as a server's start-up call (the limits above released it)
seen.clear()
worker = threading.Thread(target=lambda: model(np.arange(1, 9)))
worker.start(); worker.join()
seen["thread"] = {**seen, "after": blas()}
inside, first_out, late = threading.Barrier(2), threading.Event(), {}
hooked = model.ops.attention
def overlapping(*a, **k):
    name = threading.current_thread().name
    if name in ("A", "B") and name not in late:
        late[name] = None
        inside.wait()  # both calls are running
        if name == "B":
            first_out.wait()  # A's call has returned; B's has not
            late["B"] = blas()
    return hooked(*a, **k)
model.ops = model.ops._replace(attention=overlapping)
def call(name):
    model(np.arange(1, 9))
    if name == "A":
        first_out.set()
pair = [threading.Thread(target=call, args=(name,), name=name) for name in "AB"]
[t.start() for t in pair]; [t.join() for t in pair]
seen["late"], seen["after_all"] = late["B"], blas()
print(json.dumps(seen))
""",
)


@needs_openblas
def test_a_model_call_on_another_thread_and_overlapping_calls_keep_their_count(tiny_checkpoint):
    """Threads sharing a model (a server's, a pool's): each call runs with the call's count (1 here, from
    $NPBERT_BLAS_THREADS) from start to end, and OpenBLAS's count is back after the last. Each call used to set and
    restore its own: the first call's exit restored all cores under the second, whose exit then restored
    the one thread it found on entry, for good (and threadpoolctl >= 3.8 ignores a limit set by any thread
    but the one that set the last, which npbert now releases after each change)."""
    seen = run_call(tiny_checkpoint, 0, code=CALL_IN_THREADS, NPBERT_BLAS_THREADS="1")
    assert seen["thread"]["in_call"] == seen["thread"]["current"] == 1 and seen["thread"]["after"] == 2, seen
    assert (seen["late"], seen["after_all"]) == (1, 2), seen


@needs_openblas
@pytest.mark.parametrize(
    "setup, expected",
    [
        ("import numpy", "True"),  # numpy first, one thread: OpenBLAS restarts its threads with the timeout
        (
            "import numpy, threading, time; threading.Thread(target=time.sleep, args=(2,), daemon=True).start()",
            "False",
        ),  # another thread might be inside a product: left alone
        ("", "False"),  # npbert first: OpenBLAS reads the timeout when numpy loads, nothing to redo
        ("import os; os.environ['OPENBLAS_THREAD_TIMEOUT'] = '7'\nimport numpy", "False"),  # the user's own: kept
    ],
)
def test_openblas_timeout_is_reread_only_when_it_is_safe(setup, expected):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    code = (
        f"{setup}\nimport npbert.ops, numpy as np\nfrom npbert import threads\nprint(threads.timeout_reread)\n"
        "x = np.ones((256, 256), np.float32); print(float((x @ x)[0, 0]))"
    )  # BLAS still works after
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "256.0"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_the_benchmarks_busy_processes_spin_for_the_block_and_are_gone_after():
    """tools/bench.py --busy N: N processes spinning while the rows run, none left after (also on an error)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench

    def children() -> set[int]:
        tasks = Path(f"/proc/{os.getpid()}/task").iterdir()
        return {int(c) for t in tasks for c in (t / "children").read_text().split()}

    before = children()
    with pytest.raises(RuntimeError), bench.busy_processes(2):
        spinning = children() - before
        assert len(spinning) == 2
        for pid in spinning:
            assert b"while True: pass" in Path(f"/proc/{pid}/cmdline").read_bytes()
        raise RuntimeError("a row failed")
    assert not spinning & children()
    assert not [pid for pid in spinning if Path(f"/proc/{pid}").exists()]
