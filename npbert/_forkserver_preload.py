"""Imported by the fork server that `npbert.batch.local_cluster` starts for a local Dask cluster (listed in
multiprocessing's `set_forkserver_preload`, https://docs.python.org/3/library/multiprocessing.html): when
$NPBERT_BATCH_PRELOAD holds a run's load settings (JSON), the model is loaded and answers one question here,
once, before the server forks any worker, so every worker starts with it (npbert.batch.preload).

Nothing here may stop the fork server: multiprocessing only forgives an ImportError in a preload module, and
any other exception would end the server, leaving Dask unable to start a worker. A model that fails to load
here is loaded by each worker instead, whose error the run reports as it always did (the probe task).
"""

import os


def _preload() -> None:
    text = os.environ.get("NPBERT_BATCH_PRELOAD")
    if not text:
        return
    try:
        import json

        from npbert import batch

        batch.preload(json.loads(text))
    except Exception:  # the workers will meet the same error, and report it: see the docstring
        pass


_preload()
