"""npbert/workers.py: the spinning worker pool. Every chunk runs exactly once, whichever way the hand-off
went (a spinning worker, a sleeping one woken by its semaphore, a caller that slept through a long chunk),
errors surface only after every chunk has finished, concurrent callers and forked children never hang, and
a chunk no worker has started by the time the caller is free is run by the caller, once."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npbert import workers
from process_helpers import in_forked_child


def run_and_record(chunks, pause=0.0, first_pause=0.0):
    done, lock = [], threading.Lock()

    def work(chunk):
        if pause or (first_pause and chunk == chunks[0]):
            time.sleep(pause or first_pause)
        with lock:
            done.append((tuple(chunk), threading.get_ident()))

    workers.run(work, chunks)
    return done


@settings(max_examples=30, deadline=None)
@given(
    n_chunks=st.integers(1, 4), idle=st.sampled_from([0.0, 2 * workers.SPIN_SECONDS, 0.02]), rounds=st.integers(1, 6)
)
def test_every_chunk_runs_once_whether_workers_spin_or_sleep(n_chunks, idle, rounds):
    # idle 0: back-to-back calls find the workers spinning; longer gaps find them asleep on their semaphore.
    for r in range(rounds):
        chunks = [[r, i] for i in range(n_chunks)]
        done = run_and_record(chunks)
        assert sorted(c for c, _ in done) == sorted(tuple(c) for c in chunks)
        time.sleep(idle)


def test_the_first_chunk_runs_on_the_caller_and_the_others_elsewhere():
    # The caller's own chunk outlasts the workers' start (else the caller takes their chunks back: below).
    done = dict(run_and_record([[0], [1], [2]], first_pause=0.2))
    assert done[(0,)] == threading.get_ident()
    assert done[(1,)] != threading.get_ident() and done[(2,)] != threading.get_ident()


def test_a_chunk_no_worker_has_started_is_run_by_the_caller_once(monkeypatch):
    # The workers are slow to claim (as when another process holds their cores): the caller, free first,
    # takes their chunks back; the workers, when they get there, skip them.
    run_and_record([[0], [1], [2]])
    caller, real = threading.get_ident(), workers._claim

    def slow_on_workers(flags, ticket):
        if threading.get_ident() != caller:
            time.sleep(0.1)
        return real(flags, ticket)

    monkeypatch.setattr(workers, "_claim", slow_on_workers)
    done = run_and_record([[0], [1], [2]])
    time.sleep(0.3)  # the workers have tried to claim meanwhile: nothing ran twice
    assert sorted(done) == [((i,), caller) for i in range(3)]
    monkeypatch.setattr(workers, "_claim", real)
    for first_pause in (0.0, 0.2):  # and the next calls hand over as before (the flags agree)
        assert sorted(c for c, _ in run_and_record([[0], [1], [2]], first_pause=first_pause)) == [(0,), (1,), (2,)]


def test_an_idle_worker_goes_to_sleep_and_is_woken():
    run_and_record([[0], [1]])
    deadline = time.monotonic() + 5
    while not all(w.flags[workers._WORKER_SLEEPS] for w in workers._workers):  # spun SPIN_SECONDS, then slept
        assert time.monotonic() < deadline, "a worker kept spinning long after SPIN_SECONDS"
        time.sleep(0.01)
    assert sorted(c for c, _ in run_and_record([[0], [1]])) == [(0,), (1,)]


def test_a_caller_waiting_for_a_long_chunk_sleeps_and_is_woken():
    # The worker's chunk outlasts the caller's spin (SPIN_SECONDS): the caller sleeps on `done`.
    slow = 50 * workers.SPIN_SECONDS

    def work(chunk):
        if chunk == [1]:
            time.sleep(slow)

    start = time.monotonic()
    workers.run(work, [[0], [1]])
    assert time.monotonic() - start >= slow  # it did wait for the worker's chunk
    assert all(not w.flags[workers._CALLER_SLEEPS] for w in workers._workers)


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_is_raised_after_every_chunk_has_finished(failing):
    finished = []

    def work(chunk):
        if chunk == [failing]:
            raise ValueError(f"chunk {failing} failed")
        time.sleep(0.05)
        finished.append(chunk)

    with pytest.raises(ValueError, match=f"chunk {failing} failed"):
        workers.run(work, [[0], [1], [2]])
    assert sorted(finished) == [[i] for i in range(3) if i != failing]
    assert sorted(c for c, _ in run_and_record([[0], [1], [2]])) == [(0,), (1,), (2,)]  # still usable


def test_concurrent_callers_each_get_all_their_chunks_done():
    # A second caller finds the workers busy and runs its own chunks itself: nothing waits, nothing mixes.
    results, errors = {}, []

    def caller(k):
        try:
            for r in range(50):
                out = np.zeros(4)

                def work(chunk, out=out):
                    for i in chunk:
                        out[i] = k * 100 + r * 4 + i

                workers.run(work, [[0], [1], [2, 3]])
                assert list(out) == [k * 100 + r * 4 + i for i in range(4)]
            results[k] = True
        except BaseException as e:  # noqa: BLE001  reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_workers():
    run_and_record([[0], [1]])
    assert workers._workers
    # The parent's threads do not exist in the child: waiting for them would hang.
    in_forked_child(lambda: sorted(c for c, _ in run_and_record([[0], [1]])) == [(0,), (1,)])


def test_a_dead_worker_is_reported_not_waited_for(monkeypatch):
    # A bug in the hand-off itself (never a chunk's exception, which is handed over) kills a worker thread:
    # the caller raises instead of waiting forever, and the next call starts a fresh worker.
    run_and_record([[0], [1]])
    caller, real = threading.get_ident(), workers._store_then_load

    def fails_on_workers(*args):
        if threading.get_ident() != caller:
            raise OSError("simulated hand-off failure")
        return real(*args)

    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the dying thread's own report
    monkeypatch.setattr(workers._Worker, "take_back", lambda self, ticket: False)  # the caller waits for it
    monkeypatch.setattr(workers, "_store_then_load", fails_on_workers)
    with pytest.raises(RuntimeError, match="worker thread died"):
        workers.run(lambda chunk: None, [[0], [1]])
    monkeypatch.setattr(workers, "_store_then_load", real)
    assert sorted(c for c, _ in run_and_record([[0], [1]])) == [(0,), (1,)]


def test_a_dead_worker_does_not_cut_short_the_wait_for_the_others(monkeypatch):
    # The caller notices a dead worker within ~1 s; a live worker's longer chunk must still finish before run
    # raises (it writes into the caller's output).
    run_and_record([[0], [1], [2]])
    victim, real, finished = workers._workers[0].thread, workers._store_then_load, []

    def fails_on_the_victim(*args):
        if threading.current_thread() is victim:
            raise OSError("simulated hand-off failure")
        return real(*args)

    def work(chunk):
        if chunk == [2]:  # the live worker's chunk outlasts the dead one's detection
            time.sleep(2.0)
            finished.append(chunk)

    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    monkeypatch.setattr(workers._Worker, "take_back", lambda self, ticket: False)  # the caller waits for them
    monkeypatch.setattr(workers, "_store_then_load", fails_on_the_victim)
    with pytest.raises(RuntimeError, match="worker thread died"):
        workers.run(work, [[0], [1], [2]])
    assert finished == [[2]]


def test_a_worker_that_dies_before_starting_its_chunk_costs_no_wait(monkeypatch):
    # It dies taking its chunk: the caller, finding the chunk not taken, runs it itself; nothing hangs.
    run_and_record([[0], [1]])
    caller, real = threading.get_ident(), workers._claim

    def fails_on_workers(flags, ticket):
        if threading.get_ident() != caller:
            raise OSError("simulated hand-off failure")
        return real(flags, ticket)

    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    monkeypatch.setattr(workers, "_claim", fails_on_workers)
    assert sorted(run_and_record([[0], [1]], first_pause=0.1)) == [((0,), caller), ((1,), caller)]
    monkeypatch.setattr(workers, "_claim", real)
    assert sorted(c for c, _ in run_and_record([[0], [1]])) == [(0,), (1,)]  # a fresh worker next time
