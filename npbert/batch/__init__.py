"""Batch answering on Dask distributed: a corpus of {id, question, context} rows answered by the
question-answering pipeline on a cluster's workers, partition by partition, resumable, nothing lost when a
worker dies.

    import npbert.batch
    npbert.batch.answer("corpus.jsonl", "out/", model="distilbert/distilbert-base-cased-distilled-squad",
                        client=client, top_k=1)          # client: a dask.distributed.Client (or workers=N)

Follows Dask distributed's own fault model (https://distributed.dask.org/en/stable/resilience.html): a
task whose worker dies is rerun on another worker, so a partition is a pure function of its rows and the
run's settings, and the answers are the single-process pipeline's (the engine changes where the work
runs, never what it computes).

How a run goes:
- The client reads the data file (JSON Lines, SQuAD JSON or Parquet) and checks each row (id present,
  unique and a string; question and context non-empty strings); a bad row becomes an error record, never
  a stopped job. Inputs are cut into partitions of `partition_size` consecutive inputs, by position.
- A probe task loads the model on one worker and tries the parameters on a one-word question, so a bad
  setting is one error, not one per row; it also reports the weights' sha256 for settings.json.
- Each partition is one task: the rows travel in the task (never scattered, so Dask can rerun it), the
  model is loaded once per worker process (worker.py's cache, keyed by model, revision, dtype, kernels)
  and never pickled. A local cluster's workers (`local_cluster`) are forked by multiprocessing's fork
  server, which has loaded the run's model and answered one question first (`preload`, from
  npbert/_forkserver_preload.py): each worker starts with it in `_cached_pipeline`'s cache and shares its
  pages copy-on-write instead of loading its own (docs/performance.md, "Memory"). The worker answers
  `call_size` rows per pipeline call (their windows batched together); only when a call refuses an input
  (a question too long for max_seq_len, too many windows) does it answer that call's rows one by one, so
  the other rows are still answered.
- The client writes each finished partition to `DIR/parts/part-NNNNNN.json` atomically (temporary file,
  fsync, rename): a part is on disk whole or not at all, whatever kills the client. `resume=True` skips
  the parts already there, after checking `DIR/settings.json` against this run's settings.
- At the end the parts, read back from disk in partition order, become `predictions.jsonl` (input order),
  `errors.jsonl`, `manifest.json`, and for a SQuAD file `predictions.json` and `metrics.json`, written by
  `npbert eval`'s own code (evaluate.write_results), so they are the files `npbert eval` writes for the run.

The modules, by job: common.py (file names, defaults, errors), inputs.py (reading the data), worker.py (what
runs on the workers), cluster.py (the Dask cluster and its tasks), run.py (the run on the client). The names
below are the package's API.
"""

from ..durable import Interrupted
from ..limits import DEFAULT_MAX_WINDOWS
from .cluster import answer_chunks, completed, connect, eval_load_settings, load_settings, local_cluster
from .common import (
    DEFAULT_CALL_SIZE,
    DEFAULT_PARTITION_SIZE,
    ERRORS,
    FORMAT,
    MANIFEST,
    PART_RUN_FIELDS,
    PARTS,
    PREDICTIONS,
    PRELOAD_VARIABLE,
    PROGRESS_TOPIC,
    RUN_FIELDS,
    SETTINGS,
    SLOWDOWN_VARIABLE,
    BatchError,
    IncompleteError,
    PartitionFailed,
)
from .inputs import Inputs, read_inputs
from .run import answer
from .worker import answer_partition, preload, probe, worker_state

__all__ = [
    "DEFAULT_CALL_SIZE",
    "DEFAULT_MAX_WINDOWS",
    "DEFAULT_PARTITION_SIZE",
    "ERRORS",
    "FORMAT",
    "MANIFEST",
    "PARTS",
    "PART_RUN_FIELDS",
    "PREDICTIONS",
    "PRELOAD_VARIABLE",
    "PROGRESS_TOPIC",
    "RUN_FIELDS",
    "SETTINGS",
    "SLOWDOWN_VARIABLE",
    "BatchError",
    "IncompleteError",
    "Inputs",
    "Interrupted",
    "PartitionFailed",
    "answer",
    "answer_chunks",
    "answer_partition",
    "completed",
    "connect",
    "eval_load_settings",
    "load_settings",
    "local_cluster",
    "preload",
    "probe",
    "read_inputs",
    "worker_state",
]
