"""The names every part of a batch run shares: the output's file names, the defaults, the errors."""

from __future__ import annotations

FORMAT = "npbert-batch/1"
PARTS = "parts"
SETTINGS = "settings.json"
MANIFEST = "manifest.json"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
DEFAULT_PARTITION_SIZE = 128
# Questions per pipeline call: npbert eval's default --save-every, so a SQuAD file is answered in the same
# calls as `npbert eval` answers it (partition boundaries are multiples of it) and gives the same bits.
DEFAULT_CALL_SIZE = 32
# The load settings (JSON) of the model the fork server of a local cluster loads before it forks any worker
# (npbert/_forkserver_preload.py reads it there).
PRELOAD_VARIABLE = "NPBERT_BATCH_PRELOAD"
# The Dask event topic on which workers report rows answered within a partition (the progress bar's counts).
PROGRESS_TOPIC = "npbert-batch-progress"
# Sleep before each pipeline call on the workers, in seconds: lets the tests (and a demonstration) kill a
# worker or interrupt the client mid-run on a checkpoint that answers in milliseconds.
SLOWDOWN_VARIABLE = "NPBERT_BATCH_SLOWDOWN_SECONDS"
# manifest.json fields that differ between an undisturbed run and an interrupted, resumed or disturbed one
RUN_FIELDS = ("seconds", "questions_per_second", "compute_seconds", "workers")
# part file fields that say where and how long, not what
PART_RUN_FIELDS = ("seconds", "worker")


class BatchError(ValueError):
    """A setting, data file or output folder that cannot be used: one line naming it (exit status 2)."""


class IncompleteError(RuntimeError):
    """The outputs do not account for every input exactly once (exit status 1)."""


class PartitionFailed(RuntimeError):
    """A task failed on the cluster for another reason than its rows (a worker killed on every attempt, a
    bug): the run stops, the finished partitions stay saved (exit status 1)."""


def first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
