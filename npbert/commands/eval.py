"""`npbert eval`: answer a SQuAD file with the question-answering pipeline and score it officially.

Settings come from flags, or from a YAML job file (`--config job.yml`, the same names: model, revision,
data, version, output, limit, save_every, progress, parameters: {top_k, doc_stride, ...}); flags given
beside a job file override it. Writes predictions.json, metrics.json (and nbest_predictions.json when
top_k > 1, and na_probs.json for SQuAD v2.0: each question's no-answer probability) in the output folder,
whose parent must exist; the score JSON is the last line of stdout, as `npbert score --na-prob` prints it.
"""

from __future__ import annotations

import argparse

# flag -> job key; pipeline parameters go under "parameters"
_JOB_FLAGS = {
    "model": "model",
    "revision": "revision",
    "data": "data",
    "version": "version",
    "out": "output",
    "limit": "limit",
    "save_every": "save_every",
    "progress": "progress",
}
PIPELINE_FLAGS = (
    "top_k",
    "doc_stride",
    "max_answer_len",
    "max_seq_len",
    "max_question_len",
    "handle_impossible_answer",
    "align_to_words",
    "padding",
    "batch_size",
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate on SQuAD v1.1/v2.0 (resumable, with progress)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="JOB.yml", help="YAML job file naming the settings below")
    p.add_argument(
        "--model",
        help="checkpoint folder or hub repository id (default distilbert/distilbert-base-cased-distilled-squad)",
    )
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="SQuAD JSON (v1.1/v2.0) or JSON Lines (*.jsonl) of {id, question, context, answers}",
    )
    p.add_argument(
        "--version",
        help="1.1 or 2.0 (default: the data file's, else 1.1); 2.0 turns handle_impossible_answer on unless set",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default ./npbert-eval)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    p.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        help="questions per pipeline call, each call's predictions saved before the next (default 32)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the output folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="answer on a local Dask cluster of N one-thread "
        "worker processes, each --save-every chunk one task (npbert batch's engine)",
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="answer on a running Dask cluster (tcp://host:8786)")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default on)"
    )
    add_pipeline_arguments(p)
    p.set_defaults(run=run)


def add_pipeline_arguments(
    p,
    top_k_help="answers per question (default 1); K > 1 also writes nbest_predictions.json",
    impossible_help="allow the empty (no-answer) prediction (default: on for v2.0, off for v1.1)",
) -> None:
    """The pipeline parameter flags (`PIPELINE_FLAGS`), shared with `npbert batch`."""
    g = p.add_argument_group("pipeline parameters (as transformers' QuestionAnsweringPipeline)")
    g.add_argument("--top-k", type=int, metavar="K", help=top_k_help)
    g.add_argument(
        "--doc-stride",
        type=int,
        metavar="N",
        help="overlap between windows of a long context (default min(max_seq_len // 2, 128))",
    )
    g.add_argument("--max-answer-len", type=int, metavar="N", help="longest answer in tokens (default 15)")
    g.add_argument("--max-seq-len", type=int, metavar="N", help="window length in tokens (default 384)")
    g.add_argument("--max-question-len", type=int, metavar="N", help="accepted as transformers does (default 64)")
    g.add_argument(
        "--handle-impossible-answer", action=argparse.BooleanOptionalAction, default=None, help=impossible_help
    )
    g.add_argument(
        "--align-to-words",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer spans on word boundaries (default on)",
    )
    g.add_argument("--padding", choices=("do_not_pad", "longest", "max_length"), help="tokenizer padding")
    g.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="windows per forward (answers as transformers' pipeline with the same batch_size)",
    )


def _flag(key: str) -> str:
    name = {"output": "out"}.get(key.split(".")[-1], key.split(".")[-1])
    return "--" + name.replace("_", "-")


def job_from_args(args):
    from .. import evaluate

    settings, where_file = {}, None
    if args.config:
        settings, where_file = evaluate.read_job_file(args.config)
    from_flags = set()
    for flag, key in _JOB_FLAGS.items():
        if getattr(args, flag) is not None:
            settings[key] = getattr(args, flag)
            from_flags.add(key)
    params = {k: getattr(args, k) for k in PIPELINE_FLAGS if getattr(args, k) is not None}
    if params:
        base = settings.get("parameters")
        settings["parameters"] = {**base, **params} if isinstance(base, dict) else params
        from_flags |= {f"parameters.{k}" for k in params}

    def where(key):
        return _flag(key) if key in from_flags or where_file is None else where_file(key)

    return evaluate.make_job(settings, where)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from .. import evaluate
    from . import CommandError

    job = job_from_args(args)
    out = Path(job.output)
    if not out.parent.is_dir():  # a typo in a path should not silently become a tree of new folders
        raise CommandError(
            f"output folder {out}: its parent {out.parent} does not exist (npbert creates only the "
            "output folder itself)",
            2,
        )
    if args.resume and not (out / evaluate.PARTIAL).exists():
        finished = " (it holds a finished run)" if (out / evaluate.METRICS).exists() else ""
        raise CommandError(
            f"--resume: nothing to resume in {out}{finished}: no {evaluate.PARTIAL}; run without --resume to start", 2
        )
    try:
        if args.workers is None and args.scheduler is None:
            metrics = evaluate.run(job, resume=args.resume)
        else:  # the same answers, computed on the cluster's workers: npbert/batch.py
            import functools

            from .. import batch

            with batch.connect(
                args.workers, args.scheduler, preload=batch.eval_load_settings(job.model, job.revision)
            ) as client:
                try:
                    metrics = evaluate.run(
                        job,
                        resume=args.resume,
                        answer_chunks=functools.partial(
                            batch.answer_chunks, client, model=job.model, revision=job.revision
                        ),
                    )
                except batch.PartitionFailed as e:
                    raise CommandError(str(e), 1) from None
    except evaluate.Interrupted as e:
        if e.done == 0:
            raise CommandError(f"interrupted by {e} before any question was answered", 128 + e.signum) from None
        raise CommandError(
            f"interrupted by {e} after {e.done} of {e.total} questions, which are saved in "
            f"{e.saved}; run the same command with --resume to continue",
            128 + e.signum,
        ) from None
    print(
        f"npbert eval: {metrics['count']} questions in {metrics['elapsed_seconds']:.1f} s "
        f"({metrics['questions_per_second']:.2f} q/s); files in {job.output}",
        file=sys.stderr,
    )
    print(json.dumps(evaluate.score_of(metrics)))
    return 0
