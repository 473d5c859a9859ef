"""`npbert batch`: answer every row of a corpus on a Dask cluster (a local one, or a running scheduler).

FILE is JSON Lines (one {"id", "question", "context"} object a line), Parquet with those columns, or a
SQuAD v1.1/v2.0 JSON file. DIR gets predictions.jsonl (input order), errors.jsonl (each input that could
not be answered, with the reason), manifest.json, parts/ and settings.json (for --resume), and for a SQuAD
file predictions.json and metrics.json as `npbert eval` writes them. The last stdout line is a JSON
summary; exit status 0 when every input is in predictions or errors exactly once, 1 when not, 2 on bad
settings or data, 128 + signal number when interrupted (finished partitions kept: rerun with --resume).
"""

from __future__ import annotations

import argparse

from .eval import PIPELINE_FLAGS, add_pipeline_arguments


def add_parser(subparsers) -> None:
    from ..batch import DEFAULT_MAX_WINDOWS, DEFAULT_PARTITION_SIZE

    p = subparsers.add_parser(
        "batch",
        help="answer a corpus on a Dask cluster (resumable, fault tolerant)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", metavar="FILE", required=True, help="*.jsonl / *.ndjson, *.parquet, or SQuAD JSON")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (on the client's machine)")
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder every worker can read, or a hub repository "
        "id (default distilbert/distilbert-base-cased-distilled-squad)",
    )
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a local cluster of N worker processes, one thread each (default: the cores of the CPU affinity)",
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="use a running cluster, e.g. tcp://host:8786")
    p.add_argument(
        "--partition-size",
        type=int,
        metavar="K",
        default=DEFAULT_PARTITION_SIZE,
        help=f"inputs per partition, the unit of work, of saving and of recomputation "
        f"(default {DEFAULT_PARTITION_SIZE})",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_WINDOWS,
        help=f"a context making more windows is an error row (default {DEFAULT_MAX_WINDOWS})",
    )
    p.add_argument(
        "--blas-threads",
        type=int,
        metavar="N",
        help="BLAS threads per worker process (default 1, or the worker's own NPBERT_BLAS_THREADS)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR (same settings), skipping the partitions already saved",
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr (default on)"
    )
    add_pipeline_arguments(
        p,
        top_k_help='answers per question (default 1); K > 1 writes {"id", "answers": [...]} lines',
        impossible_help="allow the empty (no-answer) prediction (default: on for SQuAD v2.0 files, else off)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import sys

    from .. import batch
    from ..hub import DEFAULT_MODEL
    from . import CommandError

    params = {k: getattr(args, k) for k in PIPELINE_FLAGS if getattr(args, k) is not None}
    try:
        manifest = batch.answer(
            args.data,
            args.out,
            model=args.model or DEFAULT_MODEL,
            revision=args.revision,
            workers=args.workers,
            scheduler=args.scheduler,
            partition_size=args.partition_size,
            max_windows=args.max_windows,
            blas_threads=args.blas_threads,
            resume=args.resume,
            progress=args.progress,
            **params,
        )
    except batch.Interrupted as e:
        raise CommandError(
            f"interrupted by {e} after {e.done} of {e.total} partitions, which are saved in "
            f"{e.saved}; run the same command with --resume to continue",
            128 + e.signum,
        ) from None
    except (batch.IncompleteError, batch.PartitionFailed) as e:
        raise CommandError(str(e), 1) from None
    print(
        f"npbert batch: {manifest['answered']} of {manifest['inputs']} inputs answered, {manifest['errors']} in "
        f"errors.jsonl, in {manifest['seconds']:.1f} s ({manifest['questions_per_second'] or 0:.2f} q/s); files in "
        f"{args.out}",
        file=sys.stderr,
    )
    summary = {
        k: manifest[k]
        for k in ("inputs", "answered", "errors", "partitions", "seconds", "questions_per_second", "workers")
    }
    print(
        json.dumps({**summary, **({"score": manifest["score"]} if "score" in manifest else {}), "out": str(args.out)})
    )
    return 0
