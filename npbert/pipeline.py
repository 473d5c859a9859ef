"""The question-answering pipeline: question + context in, answer span out.

Follows transformers 4.57.6 `pipelines/question_answering.py` (`QuestionAnsweringPipeline`: argument
handling, parameters, defaults and validation, preprocess, postprocess) and `pipelines/base.py`
(`ChunkPipeline` batching, `pad_collate_fn`). The answers, character spans and scores equal transformers'
for the same checkpoint and arguments (tests/parity/test_pipeline_parity.py).

    qa = npbert.pipeline("question-answering", model="distilbert/distilbert-base-cased-distilled-squad")
    qa(question="Where do I live?", context="My name is Wolfgang and I live in Berlin")
    # {'score': 0.97..., 'start': 34, 'end': 40, 'answer': 'Berlin'}
    qa(question=[q1, q2, ...], context=[c1, c2, ...], top_k=3, batch_size=16)   # a list per question

Data flow: tokenizer.encode_pairs (every question's windows) -> windows sorted by length, cut into
forwards of at most `batch_size` windows, each padded to its longest window -> model -> logits back in
window order -> qa.answers per question.

Batching never changes an answer. transformers' postprocess sees each window padded as its own collation
padded it (windows taken in order, `batch_size` at a time; unpadded with its default batch_size 1), and
padding can decide between equal zero-probability candidates; npbert rebuilds exactly those arrays for
postprocessing (`_collated_lengths`), so answers match transformers called with the same `batch_size`,
while npbert's own forwards group windows of similar length to waste little on padding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from . import hub, qa
from .model import AutoModelForQuestionAnswering
from .tokenizer import Tokenizer

TASK = "question-answering"
# Windows per forward when the caller does not say: enough rows for efficient GEMMs, bounded memory.
DEFAULT_FORWARD_BATCH = 8
PARAMETERS = ("top_k", "topk", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len",
              "handle_impossible_answer", "align_to_words", "padding")


def pipeline(task: str = TASK, model: str | Path = hub.DEFAULT_MODEL, revision: str | None = None, *,
             tokenizer: Tokenizer | str | Path | None = None, local_files_only: bool = False, dtype=np.float32,
             kernels: str | None = None, batch_size: int | None = None, **params) -> "QuestionAnsweringPipeline":
    """Load a question-answering pipeline from a checkpoint folder or a hub repository id.

    `params` (top_k, doc_stride, max_answer_len, max_seq_len, ...) become the defaults of every call,
    as transformers' `pipeline(..., top_k=3)` does.
    """
    if task != TASK:
        raise ValueError(f"npbert has one task, {TASK!r}; found {task!r}")
    folder = hub.resolve(model, revision, local_files_only)
    qa_model = AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    if tokenizer is None:
        tokenizer = Tokenizer.from_folder(folder)
    elif not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer, local_files_only=local_files_only)
    return QuestionAnsweringPipeline(qa_model, tokenizer, model_id=str(model), revision=revision, folder=folder,
                                     batch_size=batch_size, **params)


class QuestionAnsweringPipeline:
    """transformers' QuestionAnsweringPipeline on npbert's model; see the module docstring."""

    task = TASK

    def __init__(self, model: AutoModelForQuestionAnswering, tokenizer: Tokenizer, model_id: str | None = None,
                 revision: str | None = None, folder: str | Path | None = None, batch_size: int | None = None,
                 max_windows: int | None = None, **params):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.folder = Path(folder) if folder is not None else None
        self.commit = hub.snapshot_commit(self.folder) if self.folder is not None else None
        self.batch_size = _check_batch_size(batch_size)
        # Most windows one question's context may make (None: no limit, as transformers). A server sets it:
        # a small max_seq_len or a doc_stride close to it makes a window per few tokens, and one request
        # would then hold the model for minutes.
        if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                        or max_windows < 1):
            raise ValueError(f"max_windows must be a positive integer or None, found {max_windows!r}")
        self.max_windows = max_windows
        self._defaults = check_parameters(params)

    def __repr__(self) -> str:
        return (f"QuestionAnsweringPipeline(model_id={self.model_id!r}, revision={self.revision!r}, "
                f"folder={str(self.folder)!r})")

    def __call__(self, *args, batch_size: int | None = None, num_workers: int | None = None, **kwargs):
        """Answer one question (a dict, or a list of dicts when top_k > 1) or many (a list per question).

        Inputs as transformers takes them: question=..., context=... (strings, or equal-length lists, or a
        list of questions and one context), a {"question", "context"} dict, a list of such dicts, or two
        positional strings. Parameters: top_k=1, doc_stride=min(max_seq_len // 2, 128), max_answer_len=15,
        max_seq_len=min(model_max_length, 384), max_question_len=64 (used by slow tokenizers only, accepted
        and ignored as transformers does), handle_impossible_answer=False, align_to_words=True,
        padding="do_not_pad", batch_size (windows per forward). `num_workers` is accepted and ignored.
        """
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in PARAMETERS}
        examples = _examples(args, kwargs)
        params = {**self._defaults, **check_parameters(params)}
        batch_size = _check_batch_size(batch_size) or self.batch_size
        results = self._answer(examples, params, batch_size) if examples else []
        return results[0] if len(results) == 1 else results

    # --- the steps --------------------------------------------------------------------------------------

    def _answer(self, examples: list[tuple[str, str]], params: dict, batch_size: int | None) -> list:
        max_seq_len = params.get("max_seq_len")
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384)
        doc_stride = params.get("doc_stride")
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"`doc_stride` ({doc_stride}) is larger than `max_seq_len` ({max_seq_len})")
        config = self.model.config
        if max_seq_len > config.max_sequence_length:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's max_position_embeddings "
                             f"{config.max_position_embeddings}" + (f" ({config.max_sequence_length} tokens after the "
                             "padding offset)" if config.position_offset else ""))
        questions, contexts = zip(*examples)
        per_example = self.tokenizer.encode_pairs(list(questions), list(contexts), max_seq_len, doc_stride,
                                                  params.get("padding", "do_not_pad"))
        for i, ws in enumerate(per_example):
            if self.max_windows is not None and len(ws) > self.max_windows:
                raise ValueError(f"{'the context' if len(examples) == 1 else f'context {i}'} makes {len(ws)} "
                                 f"windows of max_seq_len {max_seq_len} with doc_stride {doc_stride}, over this "
                                 f"pipeline's limit of {self.max_windows}: use a larger max_seq_len, a smaller "
                                 "doc_stride (the overlap) or a shorter context")
        windows = [w for ws in per_example for w in ws]
        logits = self._forward(windows, batch_size or DEFAULT_FORWARD_BATCH)
        lengths = _collated_lengths([len(w) for w in windows], batch_size or 1)
        post = {k: params[k] for k in ("top_k", "handle_impossible_answer", "max_answer_len", "align_to_words")
                if k in params}
        results, i = [], 0
        for (_, context), ws in zip(examples, per_example):
            inputs = [_postprocess_inputs(w, *logits[i + j], lengths[i + j]) for j, w in enumerate(ws)]
            i += len(ws)
            results.append(qa.answers(inputs, context, **post))
        return results

    def _forward(self, windows: list, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Start and end logits [S_i] of every window, forwards of `batch_size` windows of similar length."""
        out = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            inputs = model_inputs([windows[i] for i in chunk], self.tokenizer)
            result = self.model(inputs.pop("input_ids"), **inputs)
            for row, i in enumerate(chunk):
                n = len(windows[i])
                out[i] = (result.start_logits[row, :n], result.end_logits[row, :n])
        return out


def model_inputs(windows: list, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """Windows right-padded to the longest into one batch: the arrays the tokenizer's `model_input_names`
    name (input_ids and attention_mask; token_type_ids too where the model takes them: BERT, ELECTRA,
    ALBERT, as transformers passes them), each [B, S]."""
    S = max(len(w) for w in windows)
    out = {"input_ids": np.full((len(windows), S), tokenizer.pad_token_id, dtype=np.int64),
           "attention_mask": np.zeros((len(windows), S), dtype=np.int64)}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):  # TODO(merge tok): plain attribute
        out["token_type_ids"] = np.zeros((len(windows), S), dtype=np.int64)  # the pad type id is 0
    for row, w in enumerate(windows):
        for name, batch in out.items():
            batch[row, :len(w)] = getattr(w, name)
    return out


# --- inputs and parameters ------------------------------------------------------------------------------


def _examples(args: tuple, kwargs: dict) -> list[tuple[str, str]]:
    """QuestionAnsweringArgumentHandler: every accepted input form -> [(question, context), ...]."""
    if args:
        check_parameters(kwargs)
        if len(args) == 2 and all(isinstance(a, str) for a in args):
            items = [{"question": args[0], "context": args[1]}]
        else:
            items = args[0] if len(args) == 1 else list(args)
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs.pop("question"), kwargs.pop("context")
        check_parameters(kwargs)  # anything left is not a parameter: say which names are
        if isinstance(question, list) and isinstance(context, str):
            items = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError(f"Questions and contexts don't have the same lengths ({len(question)} questions, "
                                 f"{len(context)} contexts)")
            items = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            items = [{"question": question, "context": context}]
        else:
            raise ValueError(f"question and context must be strings or lists of strings, found "
                             f"{type(question).__name__} and {type(context).__name__}")
    else:
        for name in ("X", "data"):  # transformers' deprecated spellings
            if name in kwargs:
                warnings.warn(f"Passing the `{name}` argument to the pipeline is deprecated; pass question= and "
                              "context= instead", FutureWarning, stacklevel=3)
                return _examples((kwargs.pop(name),), kwargs)
        raise ValueError(f"give question= and context= (found arguments {sorted(kwargs)})")
    if isinstance(items, dict):
        items = [items]
    elif not isinstance(items, (list, tuple)):
        raise ValueError(f"{items!r} argument needs to be a {{question, context}} dict or a list of them")
    return [_example(item) for item in items]


def _example(item) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise ValueError(f"{item!r} argument needs to be a {{question, context}} dict")
    for k in ("question", "context"):
        if k not in item:
            raise ValueError("You need to provide a dictionary with keys {question:..., context:...}")
        if item[k] is None:
            raise ValueError(f"`{k}` cannot be None")
        if not isinstance(item[k], str):
            raise ValueError(f"`{k}` must be a string, found {type(item[k]).__name__}")
        if not item[k]:
            raise ValueError(f"`{k}` cannot be empty")
    return item["question"], item["context"]


def check_parameters(params: dict) -> dict:
    """`_sanitize_parameters`: the same names, checks and messages; unknown names are an error here."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {', '.join(PARAMETERS)}")
    out = {k: v for k, v in params.items() if v is not None}
    if "topk" in out:
        topk = out.pop("topk")
        if "top_k" not in out:
            warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning, stacklevel=3)
            out["top_k"] = topk
    for name in ("top_k", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len"):
        if name in out and (isinstance(out[name], bool) or not isinstance(out[name], (int, np.integer))):
            raise ValueError(f"{name} must be an integer, found {out[name]!r}")
    if "top_k" in out and out["top_k"] < 1:
        raise ValueError(f"top_k parameter should be >= 1 (got {out['top_k']})")
    if "max_answer_len" in out and out["max_answer_len"] < 1:
        raise ValueError(f"max_answer_len parameter should be >= 1 (got {out['max_answer_len']})")
    if "max_seq_len" in out and out["max_seq_len"] < 4:
        raise ValueError(f"max_seq_len must leave room for [CLS] question [SEP] context [SEP] "
                         f"(got {out['max_seq_len']})")
    if "doc_stride" in out and out["doc_stride"] < 0:
        raise ValueError(f"doc_stride must be >= 0 (got {out['doc_stride']})")
    for name in ("handle_impossible_answer", "align_to_words"):
        if name in out and not isinstance(out[name], (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, found {out[name]!r}")
    return out


def _check_batch_size(batch_size):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, found {batch_size!r}")
    return batch_size


# --- reproducing transformers' postprocess inputs -------------------------------------------------------


def _collated_lengths(lengths: list[int], batch_size: int) -> list[int]:
    """The length transformers' collation gives each window: windows in order, `batch_size` at a time,
    each group padded to its longest (pad_collate_fn); batch_size 1 pads nothing (no_collate_fn)."""
    out = []
    for b in range(0, len(lengths), batch_size):
        group = lengths[b:b + batch_size]
        out += [max(group)] * len(group)
    return out


def _postprocess_inputs(window, start: np.ndarray, end: np.ndarray, length: int):
    """One window as transformers' postprocess receives it: [1, length], collation padding with p_mask 1 and
    attention 0 (those logits are masked to -10000 whatever they hold)."""
    pad = length - len(window)
    return (np.pad(start, (0, pad))[None], np.pad(end, (0, pad))[None],
            np.pad(window.p_mask, (0, pad), constant_values=True)[None],
            np.pad(window.attention_mask, (0, pad))[None], window.encoding)
