"""Running an npbert command in a subprocess until it reaches a point, then acting on it (a signal): the one
loop the interrupt, resume, lock and kill tests share (test_batch, test_cli_eval, test_eval_durability); and
a check run in a forked child, for the fork-safety tests of the worker threads (test_kernels, test_workers);
and how much of a process's memory it shares with its parent, for the forked workers (test_batch,
test_serve_prefork)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path


def start_and_wait(cmd, ready, env=None, timeout: float = 300) -> subprocess.Popen:
    """Start `cmd` (stdout and stderr piped, text) and return it once `ready()` holds, while it still runs.
    Fails if the command ends first or `ready()` has not held after `timeout` seconds (the command is then
    killed, and the failure shows what it printed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            raise AssertionError(
                f"the command ended or took over {timeout} s before it was ready: {proc.communicate()}"
            )
        time.sleep(0.01)
    return proc


def interrupt_when_ready(cmd, ready, signum, env=None) -> tuple[subprocess.Popen, str, str]:
    """start_and_wait, then send `signum` and wait for the command to end: (the process, stdout, stderr)."""
    proc = start_and_wait(cmd, ready, env)
    try:
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc, stdout, stderr


def in_forked_child(check, timeout: float = 30) -> None:
    """Fork; the child runs check() (True: it passed) and exits with its verdict. Fails in the parent if the
    child's check failed, or if it has not ended after `timeout` seconds (it hung: it is then killed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the forked child's check failed"
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child had not finished after {timeout} s (it hung)")


def shared_dirty_mb(pid: int) -> float:
    """Pages this process wrote (or inherited written) that another process maps too: after a fork, the
    parent's heap. A process started on its own (spawned) has next to none. Linux (/proc)."""
    text = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
    return int(re.search(r"^Shared_Dirty:\s+(\d+) kB", text, re.M).group(1)) / 1024
