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
forwards of at most `batch_size` windows where padding costs more than another forward (forward_groups),
each padded to its longest window -> model -> logits back in window order -> qa.answers per question.

Batching never changes an answer. transformers' postprocess sees each window padded as its own collation
padded it (windows taken in order, `batch_size` at a time; unpadded with its default batch_size 1), and
padding can decide between equal zero-probability candidates; npbert rebuilds exactly those arrays for
postprocessing (`_collated_lengths`), so answers match transformers called with the same `batch_size`,
while npbert's own forwards group windows of similar length to waste little on padding (forward_groups).
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np

from . import hub, qa
from .model import AutoModelForQuestionAnswering
from .tokenizer import Tokenizer, TooManyWindows

TASK = "question-answering"
# Windows per forward when the caller does not say: enough rows for efficient GEMMs, bounded memory.
DEFAULT_FORWARD_BATCH = 8
# With a window limit, a text longer than this many characters per token of its windows is refused before
# it is tokenized: tokenizing costs memory and time in proportion to the text (a 50 MB context took 10 GB
# and minutes before its window count was known). English runs 4 to 6 characters a token; only runs of
# spaces, or words the vocabulary maps whole to one unknown token, average more than 32.
MAX_CHARS_PER_TOKEN = 32
PARAMETERS = (
    "top_k",
    "topk",
    "doc_stride",
    "max_answer_len",
    "max_seq_len",
    "max_question_len",
    "handle_impossible_answer",
    "align_to_words",
    "padding",
)


def pipeline(
    task: str = TASK,
    model: str | Path = hub.DEFAULT_MODEL,
    revision: str | None = None,
    *,
    tokenizer: Tokenizer | str | Path | None = None,
    local_files_only: bool = False,
    dtype=np.float32,
    kernels: str | None = None,
    batch_size: int | None = None,
    **params,
) -> "QuestionAnsweringPipeline":
    """Load a question-answering pipeline from a checkpoint folder or a hub repository id.

    `params` (top_k, doc_stride, max_answer_len, max_seq_len, ...) become the defaults of every call,
    as transformers' `pipeline(..., top_k=3)` does.
    """
    dtype, local_files_only, revision, params = _construction_options(dtype, local_files_only, revision, params)
    if task != TASK:
        raise ValueError(f"npbert has one task, {TASK!r}; found {task!r}")
    folder = hub.resolve(model, revision, local_files_only)
    qa_model = AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    if tokenizer is None:
        tokenizer = Tokenizer.from_folder(folder, qa_model.config.model_type)
    elif not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer, local_files_only=local_files_only)
    tokens, rows = tokenizer.backend.get_vocab_size(with_added_tokens=True), qa_model.config.vocab_size
    if tokens > rows:  # else the first token id past the table fails a call, long after loading
        raise ValueError(
            f"{folder}: the tokenizer has {tokens} tokens but the model's embedding table has {rows} "
            "rows (vocab_size in config.json): the tokenizer and the config do not belong together"
        )
    return QuestionAnsweringPipeline(
        qa_model, tokenizer, model_id=str(model), revision=revision, folder=folder, batch_size=batch_size, **params
    )


# transformers' pipeline(...) keywords about where and how the model runs, which npbert takes too (see
# _construction_options); they are not call parameters.
CONSTRUCTION_KEYWORDS = ("device", "framework", "torch_dtype", "use_fast", "token", "model_kwargs", "trust_remote_code")
_DTYPES = {
    "float32": np.float32,
    "float": np.float32,
    "fp32": np.float32,
    "torch.float32": np.float32,
    "torch.float": np.float32,
    "float64": np.float64,
    "double": np.float64,
    "fp64": np.float64,
    "torch.float64": np.float64,
    "torch.double": np.float64,
}
# model_kwargs entries with a meaning on npbert; npbert's forward is transformers' eager attention, which
# sdpa equals to float32 rounding, and it always memory-maps (low_cpu_mem_usage).
_MODEL_KWARGS = ("dtype", "torch_dtype", "revision", "local_files_only", "attn_implementation", "low_cpu_mem_usage")


def _construction_options(dtype, local_files_only: bool, revision, params: dict) -> tuple:
    """transformers' `pipeline(...)` construction keywords, checked and turned into npbert's settings.

    Returns (dtype, local_files_only, revision, params without those keywords). Accepted: device "cpu", -1
    or None (a GPU device is refused: npbert runs on the CPU); framework "pt" (npbert's answers are the
    PyTorch pipeline's); dtype or torch_dtype as a numpy dtype, a name ("float32", "float64", "double",
    "torch.float32", a torch dtype) or "auto" (the checkpoint's own: npbert computes float32 for float32,
    float16 and bfloat16 weights, which it widens exactly); use_fast True (npbert's tokenizer is the fast
    one); token None or True (huggingface-hub's stored token or HF_TOKEN, its default); model_kwargs with
    dtype/torch_dtype, revision, local_files_only, attn_implementation "eager"/"sdpa", low_cpu_mem_usage;
    trust_remote_code (npbert never runs a repository's code, so either value loads the same files).
    Anything else is refused by name; unknown keywords stay for check_parameters, which refuses them
    (a typo such as max_seq_length is caught there)."""
    params = dict(params)
    options = {k: params.pop(k) for k in CONSTRUCTION_KEYWORDS if k in params}
    device = options.get("device")
    if device is not None and not (str(device) == "cpu" or (isinstance(device, int) and device == -1)):
        raise ValueError(f"device={device!r}: npbert runs on the CPU only (pass device='cpu', -1 or nothing)")
    if options.get("framework") not in (None, "pt"):
        raise ValueError(
            f"framework={options['framework']!r}: npbert gives the PyTorch pipeline's answers "
            "(framework='pt'); it has no TensorFlow or Flax variant"
        )
    if options.get("use_fast") not in (None, True):
        raise ValueError(
            "use_fast=False: npbert has only the fast tokenizer (tokenizer.json, as "
            "DistilBertTokenizerFast); pass use_fast=True or nothing"
        )
    if options.get("token") not in (None, True):
        raise ValueError(
            "token=: npbert downloads with huggingface-hub's own token (HF_TOKEN or `hf auth login`); "
            "set one of those instead of passing token="
        )
    model_kwargs = options.get("model_kwargs") or {}
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a dict, found {type(model_kwargs).__name__}")
    unknown = sorted(set(model_kwargs) - set(_MODEL_KWARGS))
    if unknown:
        raise ValueError(f"model_kwargs {unknown} have no meaning on npbert (accepted: {', '.join(_MODEL_KWARGS)})")
    if model_kwargs.get("attn_implementation") not in (None, "eager", "sdpa"):
        raise ValueError(
            f"attn_implementation={model_kwargs['attn_implementation']!r}: npbert computes eager "
            "attention (accepted: 'eager', 'sdpa')"
        )
    asked = [
        (name, value)
        for name, value in (
            ("torch_dtype", options.get("torch_dtype")),
            ("model_kwargs['dtype']", model_kwargs.get("dtype")),
            ("model_kwargs['torch_dtype']", model_kwargs.get("torch_dtype")),
        )
        if value is not None
    ]
    if dtype is not np.float32:  # given as dtype=
        asked.insert(0, ("dtype", dtype))
    if len({str(v) for _, v in asked}) > 1:
        raise ValueError(f"the dtype is given twice, differently: {', '.join(f'{n}={v!r}' for n, v in asked)}")
    if asked:
        dtype = _numpy_dtype(*asked[0])
    for name, value in (("revision", revision), ("local_files_only", local_files_only)):
        if name in model_kwargs and value not in (None, False) and model_kwargs[name] != value:
            raise ValueError(
                f"{name} is given twice, differently: {value!r} and model_kwargs[{name!r}]={model_kwargs[name]!r}"
            )
    revision = model_kwargs.get("revision", revision)
    local_files_only = bool(model_kwargs.get("local_files_only", local_files_only))
    return dtype, local_files_only, revision, params


def _numpy_dtype(name: str, value):
    if value == "auto":
        return np.float32
    if isinstance(value, type) and issubclass(value, np.floating) or isinstance(value, np.dtype):
        key = np.dtype(value).name
    else:
        key = str(value)
    if key not in _DTYPES:
        raise ValueError(
            f"{name}={value!r}: npbert computes in float32 or float64 (float16 and bfloat16 weights "
            "are widened to float32): pass 'float32', 'float64' or 'auto'"
        )
    return _DTYPES[key]


class QuestionAnsweringPipeline:
    """transformers' QuestionAnsweringPipeline on npbert's model; see the module docstring."""

    task = TASK

    def __init__(
        self,
        model: AutoModelForQuestionAnswering,
        tokenizer: Tokenizer,
        model_id: str | None = None,
        revision: str | None = None,
        folder: str | Path | None = None,
        batch_size: int | None = None,
        max_windows: int | None = None,
        **params,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.folder = Path(folder) if folder is not None else None
        self.commit = hub.snapshot_commit(self.folder) if self.folder is not None else None
        self.batch_size = check_batch_size(batch_size)
        # Most windows one question's context may make (None: no limit, as transformers). A server sets it:
        # a small max_seq_len or a doc_stride close to it makes a window per few tokens, and one request
        # would then hold the model for minutes.
        if max_windows is not None and (
            isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1
        ):
            raise ValueError(f"max_windows must be a positive integer or None, found {max_windows!r}")
        self.max_windows = max_windows
        self._defaults = check_parameters(params)

    def __repr__(self) -> str:
        return (
            f"QuestionAnsweringPipeline(model_id={self.model_id!r}, revision={self.revision!r}, "
            f"folder={str(self.folder)!r})"
        )

    def __call__(
        self,
        *args,
        batch_size: int | None = None,
        num_workers: int | None = None,
        null_scores: list | None = None,
        **kwargs,
    ):
        """Answer one question (a dict, or a list of dicts when top_k > 1) or many (a list per question).

        Inputs as transformers takes them: question=..., context=... (strings, or equal-length lists, or a
        list of questions and one context), a {"question", "context"} dict (or one of equal-length lists:
        then always a list of results), a SquadExample-like object (.question_text, .context_text), a list
        of those, two positional strings, or X=/data= (deprecated spellings). Precedence as transformers':
        positional inputs, then X=, then data=, then question=/context= (the others are ignored). A
        generator or a torch Dataset is answered lazily: an iterator of results, one per item, computed
        `batch_size` windows at a time as they are read. Parameters: top_k=1, doc_stride=min(max_seq_len
        // 2, 128), max_answer_len=15, max_seq_len=min(model_max_length, 384), max_question_len=64 (used
        by slow tokenizers only, accepted and ignored as transformers does), handle_impossible_answer=False,
        align_to_words=True, padding="do_not_pad", batch_size (windows per forward). `num_workers` is
        accepted and ignored.

        npbert's addition: `null_scores`, a list to which each question's null score is appended (lists of
        inputs only): `qa.null_score`, min over the question's windows of p_start[CLS] * p_end[CLS], the
        score of the empty answer with handle_impossible_answer (SQuAD v2.0's no-answer probability).
        """
        return self._call(args, kwargs, batch_size, null_scores)

    def _call(self, args: tuple, kwargs: dict, batch_size, null_scores: list | None = None):
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in PARAMETERS}
        examples, form = _examples(args, kwargs)
        params = {**self._defaults, **check_parameters(params)}
        batch_size = check_batch_size(batch_size) or self.batch_size
        if form == "stream":
            if null_scores is not None:
                raise ValueError("null_scores= needs a list of inputs, not a generator or Dataset")
            # bad settings fail now, not at the first item
            settings = window_settings(self.tokenizer, params.get("max_seq_len"), params.get("doc_stride"))
            return self._stream(examples, params, batch_size, settings)
        results = self._answer(examples, params, batch_size, null_scores) if examples else []
        return results[0] if len(results) == 1 and form != "list" else results

    # --- the steps --------------------------------------------------------------------------------------

    def _windows(self, examples: list[tuple[str, str]], settings: tuple[int, int], params: dict, names) -> list[list]:
        """Every example's windows, checked against the position table and `max_windows`. `names(i)` says
        which context example i is, for messages."""
        max_seq_len, doc_stride = settings
        questions, contexts = zip(*examples)
        if self.max_windows is not None:
            self._check_lengths(questions, contexts, max_seq_len, names)
        try:
            per_example = self.tokenizer.encode_pairs(
                list(questions),
                list(contexts),
                max_seq_len,
                doc_stride,
                params.get("padding", "do_not_pad"),
                max_windows=self.max_windows,
            )
        except TooManyWindows as e:
            raise WindowLimitError(
                f"{names(e.index)} makes {e.windows} windows of max_seq_len {max_seq_len} with "
                f"doc_stride {doc_stride}, over this pipeline's limit of {self.max_windows}: use a "
                "larger max_seq_len, a smaller doc_stride (the overlap) or a shorter context"
            ) from None
        config = self.model.config
        positions = config.max_sequence_length  # RoBERTa: max_position_embeddings less the padding offset
        for i, ws in enumerate(per_example):
            # max_seq_len may exceed the position table, as in transformers: only a window that is
            # actually longer than the table cannot run.
            for j, w in enumerate(ws):
                if len(w) > positions:
                    where = f"window {j} of {names(i)}" if len(ws) > 1 else names(i)
                    raise ValueError(
                        f"{where} is {len(w)} tokens long, over the model's {positions} positions "
                        f"(max_position_embeddings {config.max_position_embeddings}) at max_seq_len "
                        f"{max_seq_len}: use max_seq_len <= {positions}"
                    )
        return per_example

    def _check_lengths(self, questions, contexts, max_seq_len: int, names) -> None:
        """Refuse, before tokenizing, a text too long in characters for `max_windows` windows: tokenizing
        costs memory and time in proportion to the text, whatever the limit (MAX_CHARS_PER_TOKEN)."""
        most_question = max_seq_len * MAX_CHARS_PER_TOKEN
        most_context = self.max_windows * most_question
        for i, (question, context) in enumerate(zip(questions, contexts)):
            if isinstance(question, str) and len(question) > most_question:
                raise ValueError(
                    f"the question is {len(question)} characters long, over the {most_question} that "
                    f"fit in max_seq_len {max_seq_len} at most ({MAX_CHARS_PER_TOKEN} characters a "
                    "token): use a shorter question"
                )
            if isinstance(context, str) and len(context) > most_context:
                raise WindowLimitError(
                    f"{names(i)} is {len(context)} characters long, over the {most_context} that "
                    f"this pipeline's limit of {self.max_windows} windows of max_seq_len "
                    f"{max_seq_len} can hold at most ({MAX_CHARS_PER_TOKEN} characters a token): "
                    "use a shorter context"
                )

    def _answer(
        self, examples: list[tuple[str, str]], params: dict, batch_size: int | None, null_scores: list | None = None
    ) -> list:
        """Answers of a list of examples: all their windows batched together (their null scores appended to
        `null_scores` when given)."""
        settings = window_settings(self.tokenizer, params.get("max_seq_len"), params.get("doc_stride"))
        per_example = self._windows(
            examples, settings, params, lambda i: "the context" if len(examples) == 1 else f"context {i}"
        )
        lengths = _collated_lengths([len(w) for ws in per_example for w in ws], batch_size or 1)
        return self._postprocess(examples, per_example, lengths, params, batch_size, null_scores)

    def _stream(self, items, params: dict, batch_size: int | None, settings: tuple[int, int]):
        """Answers of a stream of items, one per item, in order, read and answered a few batches at a time.

        transformers collates the stream's windows in order, `batch_size` at a time; a question is answered
        once every collation group its windows fall in is complete (its padded lengths are then known)."""
        group = batch_size or 1
        chunk = max(4 * (batch_size or DEFAULT_FORWARD_BATCH), 32)  # windows per answering step
        pending, lengths, offset = [], [], 0  # lengths[0] starts a collation group; pending starts at offset
        for i, item in enumerate(items):
            example = _example(item)
            (ws,) = self._windows([example], settings, params, lambda _: f"item {i}")
            pending.append((example, ws))
            lengths += [len(w) for w in ws]
            if len(lengths) - offset >= chunk:
                pending, lengths, offset = yield from self._answer_ready(
                    pending, lengths, offset, group, params, batch_size, final=False
                )
        if pending:
            yield from self._answer_ready(pending, lengths, offset, group, params, batch_size, final=True)

    def _answer_ready(self, pending, lengths, offset, group, params, batch_size, final):
        complete = len(lengths) if final else len(lengths) - len(lengths) % group
        padded = _collated_lengths(lengths[:complete], group)
        k, end = 0, offset
        while k < len(pending) and end + len(pending[k][1]) <= complete:
            end += len(pending[k][1])
            k += 1
        if k:
            ready = pending[:k]
            yield from self._postprocess(
                [e for e, _ in ready], [ws for _, ws in ready], padded[offset:end], params, batch_size
            )
        cut = end - end % group
        return pending[k:], lengths[cut:], end - cut

    def _postprocess(
        self,
        examples,
        per_example,
        lengths: list[int],
        params: dict,
        batch_size: int | None,
        null_scores: list | None = None,
    ) -> list:
        """Forward every window, then qa.answers per example; `lengths`: each window's collated length."""
        windows = [w for ws in per_example for w in ws]
        logits = self._forward(windows, batch_size or DEFAULT_FORWARD_BATCH)
        post = {
            k: params[k]
            for k in ("top_k", "handle_impossible_answer", "max_answer_len", "align_to_words")
            if k in params
        }
        results, i = [], 0
        for (_, context), ws in zip(examples, per_example):
            inputs = [_postprocess_inputs(w, *logits[i + j], lengths[i + j]) for j, w in enumerate(ws)]
            i += len(ws)
            results.append(qa.answers(inputs, context, **post))
            if null_scores is not None:
                null_scores.append(qa.null_score(inputs))
        return results

    def _forward(self, windows: list, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Start and end logits [S_i] of every window, forwards of at most `batch_size` windows of similar
        length (forward_groups)."""
        out = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        for group in forward_groups([len(windows[i]) for i in order], batch_size):
            chunk = order[group.start : group.stop]
            inputs = model_inputs([windows[i] for i in chunk], self.tokenizer)
            result = self.model(inputs.pop("input_ids"), **inputs)
            for row, i in enumerate(chunk):
                n = len(windows[i])
                out[i] = (result.start_logits[row, :n], result.end_logits[row, :n])
        return out


# What one more forward costs beyond its tokens, in tokens: a forward's fixed work (24 products handed to the
# worker threads, the small products' lower efficiency at few rows) against a token's share of a larger one
# (docs/performance.md, "Pipeline: windows grouped by length").
FORWARD_COST_TOKENS = 16


def forward_groups(lengths: list[int], batch_size: int) -> list[range]:
    """The forwards that run windows of these lengths (sorted ascending) in the least time: consecutive
    groups of at most `batch_size`, each costing its rows x its longest window (padding included) plus
    FORWARD_COST_TOKENS; the cheapest split, found by dynamic programming over the sorted lengths (n x
    batch_size steps). Taking `batch_size` at a time instead padded a chunk of 32 SQuAD windows by 21%."""
    n = len(lengths)
    best, start = [0] + [None] * n, [0] * (n + 1)  # best[j]: the cheapest cost of the first j windows
    for j in range(1, n + 1):
        for i in range(max(0, j - batch_size), j):
            cost = best[i] + (j - i) * lengths[j - 1] + FORWARD_COST_TOKENS  # lengths[j - 1]: the group's longest
            if best[j] is None or cost < best[j]:
                best[j], start[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(range(start[j], j))
        j = start[j]
    return groups[::-1]


class WindowLimitError(ValueError):
    """A question or context too long for the pipeline's `max_windows`: refused before it is answered (its
    windows counted before any is made, or its characters before it is tokenized)."""


def model_inputs(windows: list, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """Windows right-padded to the longest into one batch: the arrays the tokenizer's `model_input_names`
    name (input_ids and attention_mask; token_type_ids too where the model takes them: BERT, ELECTRA,
    ALBERT, as transformers passes them), each [B, S]."""
    S = max(len(w) for w in windows)
    out = {
        "input_ids": np.full((len(windows), S), tokenizer.pad_token_id, dtype=np.int64),
        "attention_mask": np.zeros((len(windows), S), dtype=np.int64),
    }
    if "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = np.zeros((len(windows), S), dtype=np.int64)  # the pad type id is 0
    for row, w in enumerate(windows):
        for name, batch in out.items():
            batch[row, : len(w)] = getattr(w, name)
    return out


# --- inputs and parameters ------------------------------------------------------------------------------


def _examples(args: tuple, kwargs: dict) -> tuple:
    """QuestionAnsweringArgumentHandler: every accepted input form -> (examples, form).

    form "stream": examples is the caller's generator or torch Dataset, read lazily (items checked as they
    come); "list": [(question, context), ...] answered as a list even when it holds one (a dict of lists, as
    transformers); "auto": the same list, one example giving one result."""
    if args:
        inputs = args[0] if len(args) == 1 else list(args)
        if len(args) == 2 and all(isinstance(a, str) for a in args):
            inputs = [{"question": args[0], "context": args[1]}]
        _ignored(kwargs, ("question", "context", "X", "data"))  # positional inputs win, as in transformers
    elif "X" in kwargs or "data" in kwargs:
        name = "X" if "X" in kwargs else "data"  # transformers' deprecated spellings, X first
        warnings.warn(
            f"Passing the `{name}` argument to the pipeline is deprecated; pass question= and context= instead",
            FutureWarning,
            stacklevel=4,
        )
        inputs = kwargs.pop(name)
        _ignored(kwargs, ("question", "context", "X", "data"))
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs.pop("question"), kwargs.pop("context")
        check_parameters(kwargs)  # anything left is not a parameter: say which names are
        if isinstance(question, list) and isinstance(context, str):
            inputs = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError(
                    f"Questions and contexts don't have the same lengths ({len(question)} questions, "
                    f"{len(context)} contexts)"
                )
            inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            inputs = [{"question": question, "context": context}]
        else:
            raise ValueError(
                f"question and context must be strings or lists of strings, found "
                f"{type(question).__name__} and {type(context).__name__}"
            )
    else:
        raise ValueError(f"give question= and context= (found arguments {sorted(kwargs)})")
    if isinstance(inputs, types.GeneratorType):
        return inputs, "stream"
    if _is_torch_dataset(inputs):
        return (inputs[i] for i in range(len(inputs))), "stream"
    if isinstance(inputs, dict) or _is_squad_example(inputs):
        inputs = [inputs]
    elif isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__iter__"):
        raise ValueError(f"{inputs!r} argument needs to be a {{question, context}} dict or a list of them")
    examples, form = [], "auto"
    for item in list(inputs):  # an iterator, a tuple, a set...: transformers reads it into a list too
        if isinstance(item, dict) and isinstance(item.get("question"), list):
            examples += _dict_of_lists(item)
            form = "list"
        else:
            examples.append(_example(item))
    return examples, form


def _ignored(kwargs: dict, names) -> None:
    """Drop input keywords transformers ignores beside the input it uses; refuse any other name."""
    for name in names:
        kwargs.pop(name, None)
    check_parameters(kwargs)


def _is_torch_dataset(inputs) -> bool:
    # Without importing torch: a torch Dataset exists only if its caller has imported torch already.
    data = sys.modules.get("torch.utils.data")
    return data is not None and isinstance(inputs, data.Dataset)


def _is_squad_example(item) -> bool:
    """transformers' SquadExample (or any object like it): the pipeline reads .question_text, .context_text."""
    return not isinstance(item, dict) and hasattr(item, "question_text") and hasattr(item, "context_text")


def _dict_of_lists(item: dict) -> list[tuple[str, str]]:
    """{"question": [q1, q2], "context": [c1, c2]}: transformers' create_sample pairs them up."""
    question, context = item["question"], item.get("context")
    if not isinstance(context, list) or len(context) != len(question):
        raise ValueError(
            "a dict of lists needs a list of contexts as long as its list of questions, found "
            f"{len(question)} questions and "
            + (f"{len(context)} contexts" if isinstance(context, list) else type(context).__name__)
        )
    return [_example({"question": q, "context": c}) for q, c in zip(question, context)]


def _example(item) -> tuple[str, str]:
    if _is_squad_example(item):
        item = {"question": item.question_text, "context": item.context_text}
    if not isinstance(item, dict):
        raise ValueError(f"{item!r} argument needs to be a {{question, context}} dict or a SquadExample")
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


def window_settings(tokenizer, max_seq_len: int | None = None, doc_stride: int | None = None) -> tuple[int, int]:
    """max_seq_len and doc_stride as transformers' preprocess resolves them: min(model_max_length, 384) and
    min(max_seq_len // 2, 128) when not given, and a doc_stride larger than max_seq_len refused. The one
    place these defaults live: the pipeline, the explain route and `npbert trace` call it."""
    if max_seq_len is None:
        max_seq_len = min(tokenizer.model_max_length, 384)
    if doc_stride is None:
        doc_stride = min(max_seq_len // 2, 128)
    if doc_stride > max_seq_len:
        raise ValueError(f"`doc_stride` ({doc_stride}) is larger than `max_seq_len` ({max_seq_len})")
    return max_seq_len, doc_stride


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
        raise ValueError(
            f"max_seq_len must leave room for [CLS] question [SEP] context [SEP] (got {out['max_seq_len']})"
        )
    if "doc_stride" in out and out["doc_stride"] < 0:
        raise ValueError(f"doc_stride must be >= 0 (got {out['doc_stride']})")
    for name in ("handle_impossible_answer", "align_to_words"):
        # transformers uses their truthiness; 0 and 1 (ints, as JSON and YAML users write them) are accepted
        if name in out and (
            isinstance(out[name], (bool, np.bool_))
            or (isinstance(out[name], (int, np.integer)) and out[name] in (0, 1))
        ):
            out[name] = bool(out[name])
        elif name in out:
            raise ValueError(f"{name} must be True or False (or 1 or 0), found {out[name]!r}")
    return out


def check_batch_size(batch_size):
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, found {batch_size!r}")
    return batch_size


# --- reproducing transformers' postprocess inputs -------------------------------------------------------


def _collated_lengths(lengths: list[int], batch_size: int) -> list[int]:
    """The length transformers' collation gives each window: windows in order, `batch_size` at a time,
    each group padded to its longest (pad_collate_fn); batch_size 1 pads nothing (no_collate_fn)."""
    out = []
    for b in range(0, len(lengths), batch_size):
        group = lengths[b : b + batch_size]
        out += [max(group)] * len(group)
    return out


def _postprocess_inputs(window, start: np.ndarray, end: np.ndarray, length: int):
    """One window as transformers' postprocess receives it: [1, length], collation padding with p_mask 1 and
    attention 0 (those logits are masked to -10000 whatever they hold)."""
    pad = length - len(window)
    return (
        np.pad(start, (0, pad))[None],
        np.pad(end, (0, pad))[None],
        np.pad(window.p_mask, (0, pad), constant_values=True)[None],
        np.pad(window.attention_mask, (0, pad))[None],
        window.encoding,
    )
