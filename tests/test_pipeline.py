"""npbert.pipeline on the tiny checkpoint: input forms, parameters and their validation, batching (all
questions' windows sorted by length, at most `batch_size` to a forward, cut where padding costs most,
padded to the longest), and the answers against a
direct computation from the model's own logits. Parity with transformers: tests/parity/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npbert
from npbert import qa
from npbert.pipeline import FORWARD_COST_TOKENS, QuestionAnsweringPipeline, forward_groups

LONG = " ".join(f"Sentence {i} says that the river number {i} flows through city {i}." for i in range(60))
SHORT = "My name is John and I live in Seattle."


@pytest.fixture(scope="module")
def qa_pipe(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=tiny_checkpoint)


class Recorder:
    """Wraps the real model to record the shape of every forward (the model still does the work)."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, ids, attention_mask=None, **kw):
        self.shapes.append(np.shape(ids))
        return self.model(ids, attention_mask=attention_mask, **kw)


def assert_same_answers(got, want, rel=1e-5):
    """Equal spans and texts; scores equal to float32 rounding (batching changes GEMM shapes)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and {**got, "score": 0} == {**want, "score": 0}
        assert got["score"] == pytest.approx(want["score"], rel=rel)
    else:
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_answers(g, w, rel)


def test_loads_and_reports_where_from(qa_pipe, tiny_checkpoint):
    assert isinstance(qa_pipe, QuestionAnsweringPipeline)
    assert isinstance(qa_pipe.model, npbert.DistilBertForQuestionAnswering)
    assert isinstance(qa_pipe.tokenizer, npbert.Tokenizer)
    assert qa_pipe.model_id == str(tiny_checkpoint) and qa_pipe.folder == tiny_checkpoint
    assert qa_pipe.revision is None and qa_pipe.commit is None  # a plain folder, not a hub snapshot
    with pytest.raises(ValueError, match="one task"):
        npbert.pipeline("text-generation", model=tiny_checkpoint)


def test_answer_is_the_best_span_of_the_model_logits(qa_pipe):
    """The answer recomputed from the model's logits by brute force over the context spans."""
    question = "Where do I live?"
    (w,) = qa_pipe.tokenizer.encode_pair(question, SHORT)
    out = qa_pipe.model(w.input_ids[None])
    ctx = [i for i, s in enumerate(w.sequence_ids) if s == 1]
    desired = [0] + ctx

    def probs(logits):
        x = np.float64(logits[0, desired])
        p = np.exp(x - x.max())
        return dict(zip(desired, p / p.sum()))

    ps, pe = probs(out.start_logits), probs(out.end_logits)
    words = w.encoding

    def chars(a, b):  # the span widened to whole words (align_to_words)
        return (
            words.word_to_chars(words.token_to_word(a), sequence_index=1)[0],
            words.word_to_chars(words.token_to_word(b), sequence_index=1)[1],
        )

    # The pipeline ranks its 12 best token spans (top_k * 2 + 10) and adds up the scores of spans that
    # widen to the same text: a word split into several word pieces is several spans, one answer.
    spans = sorted(((ps[a] * pe[b], a, b) for a in ctx for b in ctx if 0 <= b - a < 15), reverse=True)[:12]
    merged = {}
    for score, a, b in spans:
        span = chars(a, b)
        key = next((k for k in merged if SHORT[k[0] : k[1]].lower() == SHORT[span[0] : span[1]].lower()), span)
        merged[key] = merged.get(key, 0.0) + score
    (start, end), score = max(merged.items(), key=lambda kv: kv[1])
    got = qa_pipe(question=question, context=SHORT)
    assert (got["start"], got["end"], got["answer"]) == (start, end, SHORT[start:end])
    assert got["score"] == pytest.approx(score, rel=1e-4)


def test_input_forms_agree(qa_pipe):
    one = qa_pipe(question="Who?", context=SHORT)
    assert set(one) == {"score", "start", "end", "answer"}
    assert qa_pipe({"question": "Who?", "context": SHORT}) == one
    assert qa_pipe([{"question": "Who?", "context": SHORT}]) == one  # one input -> one result, as transformers
    assert qa_pipe("Who?", SHORT) == one
    assert qa_pipe(question=["Who?"], context=[SHORT]) == one
    two = qa_pipe(question=["Who?", "Where?"], context=SHORT)
    assert two == qa_pipe(question=["Who?", "Where?"], context=[SHORT, SHORT])
    assert two == qa_pipe([{"question": "Who?", "context": SHORT}, {"question": "Where?", "context": SHORT}])
    assert_same_answers(two, [one, qa_pipe(question="Where?", context=SHORT)])
    with pytest.warns(FutureWarning):
        assert qa_pipe(X={"question": "Who?", "context": SHORT}) == one


def test_return_shapes(qa_pipe):
    three = qa_pipe(question="Who?", context=SHORT, top_k=3)
    assert isinstance(three, list) and len(three) == 3
    assert [a["score"] for a in three] == sorted((a["score"] for a in three), reverse=True)
    lists = qa_pipe(question=["Who?", "Where?"], context=[SHORT, LONG], top_k=2)
    assert [len(x) for x in lists] == [2, 2]
    with pytest.warns(UserWarning, match="topk parameter is deprecated"):
        assert qa_pipe(question="Who?", context=SHORT, topk=3) == three
    impossible = qa_pipe(question="Who?", context=SHORT, top_k=50, handle_impossible_answer=True)
    assert any(a == {**a, "start": 0, "end": 0, "answer": ""} and a["score"] > 0 for a in impossible)


def test_batching_never_changes_answers_and_pads_to_the_longest(tiny_checkpoint):
    pipe = npbert.pipeline("question-answering", model=tiny_checkpoint)
    questions = ["Who?", "Which river flows through city 7?", "Where do I live?", "What does sentence 50 say?"]
    contexts = [SHORT, LONG, SHORT, LONG]
    singles = [pipe(question=q, context=c, top_k=2, batch_size=1) for q, c in zip(questions, contexts)]
    encoded = pipe.tokenizer.encode_pairs(questions, contexts, 384, 128)
    windows = [len(ws) for ws in encoded]
    lengths = sorted(len(w) for ws in encoded for w in ws)
    short = max(len(w) for i in (0, 2) for w in encoded[i])  # the two questions on SHORT
    assert windows[1] > 1 and short < 30  # long contexts overflow; short ones stay short
    pipe.model = Recorder(pipe.model)
    batched = pipe(question=questions, context=contexts, top_k=2, batch_size=1)
    assert batched == singles
    for batch_size in (3, 64):
        pipe.model.shapes.clear()
        assert_same_answers(pipe(question=questions, context=contexts, top_k=2, batch_size=batch_size), singles)
        # all questions' windows, sorted by length, in forwards of at most batch_size, each as long as its
        # longest window; the short windows never padded to a long one's length
        groups = forward_groups(lengths, batch_size)
        assert pipe.model.shapes == [(len(g), lengths[g.stop - 1]) for g in groups]
        assert all(rows <= batch_size for rows, _ in pipe.model.shapes)
        assert sum(rows for rows, _ in pipe.model.shapes) == len(lengths)
        assert pipe.model.shapes[0][1] == short < min(len(w) for i in (1, 3) for w in encoded[i])
    pipe.model.shapes.clear()
    pipe(question="Who?", context=SHORT)
    assert pipe.model.shapes == [(1, len(pipe.tokenizer.encode_pair("Who?", SHORT)[0]))]  # never padded to 384


def padded_cost(lengths, groups):  # what a split costs: each forward's rows x its longest, plus its fixed cost
    return sum(len(g) * max(lengths[i] for i in g) + FORWARD_COST_TOKENS for g in groups)


def every_split(n, batch_size):  # all splits of range(n) into consecutive groups of at most batch_size
    if n == 0:
        yield []
        return
    for size in range(1, min(batch_size, n) + 1):
        for rest in every_split(n - size, batch_size):
            yield [range(size)] + [range(g.start + size, g.stop + size) for g in rest]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(3, 384), max_size=9), st.integers(1, 5))
def test_forward_groups_is_the_cheapest_split(lengths, batch_size):
    """The forwards forward_groups picks split the sorted windows into consecutive groups of at most
    batch_size, and no split costs less (every split tried)."""
    lengths = sorted(lengths)
    groups = forward_groups(lengths, batch_size)
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    assert all(1 <= len(g) <= batch_size for g in groups)
    assert padded_cost(lengths, groups) == min(padded_cost(lengths, s) for s in every_split(len(lengths), batch_size))


def test_forward_groups_on_squad_like_lengths():
    """Equal lengths fill every forward; a chunk of mixed lengths (the eval's 32 questions) is padded far
    less than `batch_size` windows at a time were."""
    assert sorted(len(g) for g in forward_groups([180] * 20, 8)) == [4, 8, 8]
    rng = np.random.default_rng(0)
    lengths = sorted(rng.integers(120, 385, 33).tolist())
    fixed = [range(i, min(i + 8, 33)) for i in range(0, 33, 8)]
    groups = forward_groups(lengths, 8)
    padding = lambda split: padded_cost(lengths, split) - len(split) * FORWARD_COST_TOKENS - sum(lengths)  # noqa: E731
    assert padding(groups) < padding(fixed) / 3


def test_parameters(qa_pipe):
    base = qa_pipe(question="Which river flows through city 7?", context=LONG, top_k=5)
    short = qa_pipe(question="Which river flows through city 7?", context=LONG, top_k=5, max_answer_len=1)
    assert all(len(a["answer"].split()) == 1 for a in short)  # one token, widened to its (one) word
    raw = qa_pipe(
        question="Which river flows through city 7?", context=LONG, top_k=5, align_to_words=False, max_answer_len=1
    )
    assert all(len(qa_pipe.tokenizer.tokenize(a["answer"])) == 1 for a in raw)
    windows = qa_pipe(
        question="Which river flows through city 7?", context=LONG, top_k=5, max_seq_len=64, doc_stride=16
    )
    assert windows != base and len(windows) == 5
    defaults = npbert.pipeline("question-answering", model=qa_pipe.folder, top_k=5)  # pipeline(...) defaults
    assert defaults(question="Which river flows through city 7?", context=LONG) == base
    assert qa_pipe(question="Who?", context=SHORT, max_question_len=1) == qa_pipe(question="Who?", context=SHORT)
    assert qa_pipe(question="Who?", context=SHORT, padding="max_length")["answer"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(question="", context=SHORT), "`question` cannot be empty"),
        (dict(question="Who?", context=""), "`context` cannot be empty"),
        (dict(question=None, context=SHORT), "question and context must be strings"),
        (dict(question=3, context=SHORT), "question and context must be strings"),
        (dict(question=["Who?", 3], context=SHORT), "`question` must be a string"),
        (dict(question=["a", "b"], context=["c"]), "don't have the same lengths"),
        (dict(question="Who?"), "give question= and context="),
        (dict(question="Who?", context=SHORT, top_k=0), r"top_k parameter should be >= 1 \(got 0\)"),
        (dict(question="Who?", context=SHORT, top_k=1.5), "top_k must be an integer"),
        (dict(question="Who?", context=SHORT, max_answer_len=0), "max_answer_len parameter should be >= 1"),
        (dict(question="Who?", context=SHORT, doc_stride=200, max_seq_len=100), r"`doc_stride` \(200\) is larger"),
        (
            dict(question="Who?", context=LONG, max_seq_len=600),
            "window 0 of the context is 600 tokens long, over the model's 512 positions",
        ),
        (dict(question="word " * 80, context=LONG, max_seq_len=64), "no room is left for the context"),
        (dict(question="Who?", context=SHORT, handle_impossible_answer="yes"), "must be True or False"),
        (dict(question="Who?", context=SHORT, top_kk=2), "unknown parameters"),
        (dict(question="Who?", context=SHORT, batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_bad_input_is_a_clear_value_error(qa_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        qa_pipe(**kwargs)


def test_max_windows_refuses_a_context_that_makes_too_many(tiny_checkpoint):
    capped = npbert.pipeline("question-answering", model=str(tiny_checkpoint), max_windows=3)
    n = len(capped.tokenizer.encode_pair("Who?", LONG, 64, 32))
    assert n > 3
    with pytest.raises(
        ValueError,
        match=f"the context makes {n} windows of max_seq_len 64 with doc_stride 32, "
        "over this pipeline's limit of 3: use a larger max_seq_len",
    ):
        capped(question="Who?", context=LONG, max_seq_len=64, doc_stride=32)
    with pytest.raises(ValueError, match=f"context 1 makes {n} windows"):  # names which one, in a list
        capped(question=["Who?", "Who?"], context=[SHORT, LONG], max_seq_len=64, doc_stride=32)
    assert capped(question="Who?", context=SHORT)["answer"]  # one window: answered
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_windows must be a positive integer or None"):
            npbert.QuestionAnsweringPipeline(capped.model, capped.tokenizer, max_windows=bad)
    capped.max_windows = None  # no limit, as transformers
    assert capped(question="Who?", context=LONG, max_seq_len=64, doc_stride=32)["answer"]


def test_bad_items(qa_pipe):
    with pytest.raises(ValueError, match=r"keys \{question:..., context:...\}"):
        qa_pipe({"question": "Who?"})
    with pytest.raises(ValueError, match="`context` cannot be None"):
        qa_pipe([{"question": "Who?", "context": None}])
    with pytest.raises(ValueError, match="needs to be a"):
        qa_pipe(42)
    assert qa_pipe([]) == [] and qa_pipe(question=[], context=[]) == []  # as transformers


def test_forward_batch_reuses_qa_module(qa_pipe):
    """The pipeline's answers are qa.answers over its windows (the same function the teaching tools show)."""
    (w,) = qa_pipe.tokenizer.encode_pair("Who?", SHORT)
    out = qa_pipe.model(w.input_ids[None], attention_mask=w.attention_mask[None])
    direct = qa.answers(
        [(out.start_logits, out.end_logits, w.p_mask[None], w.attention_mask[None], w.encoding)], SHORT, top_k=3
    )
    assert direct == qa_pipe(question="Who?", context=SHORT, top_k=3)


def test_never_imports_torch_or_transformers(tiny_checkpoint):
    code = (
        "import sys, npbert; p = npbert.pipeline('question-answering', model=sys.argv[1]); "
        "print(p(question='Who?', context='John lives here')['answer']); "
        "assert not {'torch', 'transformers'} & set(sys.modules), 'imported torch/transformers'"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tiny_checkpoint)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


# --- issue 14: what transformers users pass (each differential case against transformers: tests/parity) ----


def test_bool_parameters_take_0_and_1(qa_pipe):
    for name in ("handle_impossible_answer", "align_to_words"):
        for number, flag in ((0, False), (1, True), (np.int64(1), True)):
            assert qa_pipe(question="Who?", context=SHORT, top_k=3, **{name: number}) == qa_pipe(
                question="Who?", context=SHORT, top_k=3, **{name: flag}
            )
        with pytest.raises(ValueError, match=f"{name} must be True or False \\(or 1 or 0\\), found 2"):
            qa_pipe(question="Who?", context=SHORT, **{name: 2})


def test_a_generator_is_answered_lazily_and_equals_the_list(qa_pipe):
    questions = [f"Which river flows through city {i}?" for i in range(40)]
    contexts = [LONG if i % 3 == 0 else SHORT for i in range(40)]
    read = []

    def items():
        for q, c in zip(questions, contexts):
            read.append(q)
            yield {"question": q, "context": c}

    for batch_size in (None, 1, 3):
        read.clear()
        answers = qa_pipe(items(), top_k=2, batch_size=batch_size)
        assert not isinstance(answers, list) and read == []  # nothing read before the first answer is asked for
        first = next(answers)
        assert 0 < len(read) < 40  # answered a few batches in, not after reading everything
        # the same answers (scores to float32 rounding: the forwards group windows differently)
        assert_same_answers(
            [first, *answers], qa_pipe(question=questions, context=contexts, top_k=2, batch_size=batch_size)
        )
        assert len(read) == 40


def test_stream_errors_name_the_item(qa_pipe):
    answers = qa_pipe(iter_items := ({"question": q, "context": SHORT} for q in ["Who?", ""]))
    assert iter_items is not None
    with pytest.raises(ValueError, match="`question` cannot be empty"):
        list(answers)
    with pytest.raises(ValueError, match=r"`doc_stride` \(200\) is larger"):  # settings: at the call
        qa_pipe(({"question": "Who?", "context": SHORT} for _ in range(2)), doc_stride=200, max_seq_len=100)


class Example:
    """Like transformers' SquadExample, as far as the pipeline reads it."""

    def __init__(self, question, context):
        self.question_text, self.context_text = question, context


def test_more_input_forms(qa_pipe):
    one = qa_pipe(question="Who?", context=SHORT)
    two = qa_pipe(question=["Who?", "Where?"], context=[SHORT, LONG])
    assert qa_pipe([Example("Who?", SHORT)]) == qa_pipe(Example("Who?", SHORT)) == one
    assert qa_pipe([Example("Who?", SHORT), Example("Where?", LONG)]) == two
    # a dict of lists is always a list of results (transformers: create_sample makes a list)
    assert qa_pipe({"question": ["Who?", "Where?"], "context": [SHORT, LONG]}) == two
    assert qa_pipe({"question": ["Who?"], "context": [SHORT]}) == [one]
    with pytest.raises(ValueError, match="a dict of lists needs a list of contexts as long"):
        qa_pipe({"question": ["Who?", "Where?"], "context": [SHORT]})
    # precedence: positional, then X=, then data=, then question=/context=
    assert qa_pipe({"question": "Who?", "context": SHORT}, question="Where?", context=LONG) == one
    with pytest.warns(FutureWarning):
        assert (
            qa_pipe(
                X={"question": "Who?", "context": SHORT},
                data={"question": "Where?", "context": LONG},
                question="Where?",
                context=LONG,
            )
            == one
        )
    with pytest.warns(FutureWarning):
        assert qa_pipe(data={"question": "Who?", "context": SHORT}, question="Where?", context=LONG) == one
    assert qa_pipe(iter([{"question": "Who?", "context": SHORT}])) == one  # an iterator is read as a list
    with pytest.raises(ValueError, match=r"unknown parameters \['max_seq_length'\]"):  # typos stay refused
        qa_pipe({"question": "Who?", "context": SHORT}, max_seq_length=64)


def test_construction_keywords(tiny_checkpoint, qa_pipe):
    want = qa_pipe(question="Who?", context=SHORT, top_k=2)
    for kwargs in (
        dict(device="cpu"),
        dict(device=-1),
        dict(framework="pt"),
        dict(torch_dtype="auto"),
        dict(dtype="auto"),
        dict(dtype="float32"),
        dict(torch_dtype=np.float32),
        dict(use_fast=True),
        dict(token=None),
        dict(trust_remote_code=False),
        dict(trust_remote_code=True),
        dict(
            model_kwargs={
                "attn_implementation": "eager",
                "low_cpu_mem_usage": True,
                "torch_dtype": "float32",
                "local_files_only": True,
            }
        ),
    ):
        pipe = npbert.pipeline("question-answering", model=tiny_checkpoint, **kwargs)
        assert pipe.model.dtype == np.float32, kwargs
        assert pipe(question="Who?", context=SHORT, top_k=2) == want, kwargs
    for kwargs in (dict(dtype="float64"), dict(torch_dtype="double"), dict(model_kwargs={"dtype": "torch.float64"})):
        assert npbert.pipeline("question-answering", model=tiny_checkpoint, **kwargs).model.dtype == np.float64
    for kwargs, message in (
        (dict(device=0), r"device=0: npbert runs on the CPU only"),
        (dict(device="cuda:0"), r"device='cuda:0': npbert runs on the CPU only"),
        (dict(device="mps"), r"device='mps'"),
        (dict(framework="tf"), r"framework='tf'"),
        (dict(torch_dtype="float16"), r"torch_dtype='float16': npbert computes in float32 or float64"),
        (dict(dtype="bfloat16"), r"dtype='bfloat16'"),
        (dict(dtype="float64", torch_dtype="float32"), "the dtype is given twice, differently"),
        (dict(use_fast=False), "use_fast=False: npbert has only the fast tokenizer"),
        (dict(token="hf_abc"), "token=: npbert downloads with huggingface-hub's own token"),
        (dict(model_kwargs={"cache_dir": "x"}), r"model_kwargs \['cache_dir'\] have no meaning on npbert"),
        (dict(model_kwargs={"attn_implementation": "flash_attention_2"}), "attn_implementation="),
        (dict(model_kwargs={"revision": "v1"}, revision="v2"), "revision is given twice"),
        (dict(max_seq_length=64), r"unknown parameters \['max_seq_length'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            npbert.pipeline("question-answering", model=tiny_checkpoint, **kwargs)


@pytest.fixture(scope="module")
def short_positions(tmp_path_factory):
    """A checkpoint with 256 positions, below the default max_seq_len of 384."""
    import checkpoints

    cfg = {**checkpoints.TINY, "max_position_embeddings": 256}
    return checkpoints.write_checkpoint(tmp_path_factory.mktemp("p256"), seed=3, qa_scale=40.0, **cfg)


def test_max_seq_len_beyond_the_position_table(short_positions):
    pipe = npbert.pipeline("question-answering", model=short_positions)
    assert pipe(question="Who?", context=SHORT)["answer"]  # default max_seq_len 384 > 256: the window fits
    assert pipe(question="Who?", context=SHORT, max_seq_len=600) == pipe(question="Who?", context=SHORT)
    assert pipe(question="Who?", context=LONG, max_seq_len=256)["answer"]
    n = len(pipe.tokenizer.encode_pair("Who?", LONG, 384, 128)[0])
    with pytest.raises(
        ValueError,
        match=f"window 0 of the context is {n} tokens long, over the model's 256 "
        "positions .* at max_seq_len 384: use max_seq_len <= 256",
    ):
        pipe(question="Who?", context=LONG)
    with pytest.raises(ValueError, match="window 0 of context 1 is"):
        pipe(question=["Who?", "Who?"], context=[SHORT, LONG])


THREADED_CONTEXT = " ".join(f"In {1900 + i} the river {i} was renamed by the council of city {i}." for i in range(40))
THREADED_CALLS = [
    dict(
        question=f"Which river was renamed in {1900 + t}?",
        context=THREADED_CONTEXT,
        top_k=1 + t % 3,
        max_seq_len=48 + 8 * (t % 4),
        doc_stride=16,
    )
    for t in range(8)
]


def answered_by_threads(call, calls: list[dict], repeats: int = 6) -> list[list]:
    """8 threads released together by a barrier, thread t making calls[t] `repeats` times: every result."""
    import threading

    barrier, results, errors = threading.Barrier(len(calls)), [[None] * repeats for _ in calls], []

    def work(t):
        try:
            barrier.wait()
            for r in range(repeats):
                results[t][r] = call(**calls[t])
        except Exception as e:  # noqa: BLE001  reported below, with the thread
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return results


def test_one_pipeline_shared_by_threads_answers_as_serial_calls(qa_pipe):
    """8 threads, each calling the same pipeline 6 times (long contexts, several windows, other parameters
    per thread): every answer equals the serial call's, its score to float32 rounding (issue 16: 99 of 120
    such calls raised 'Already borrowed' from the tokenizers backend before). What docs/pipeline.md
    promises without NPBERT_BLAS_THREADS=1: not bit-identical scores, since OpenBLAS's thread count follows
    the machine's load and some of its kernels round with it (issue 27: scores differed in the 10th digit
    in 1 of 3 runs)."""
    serial = [qa_pipe(**kw) for kw in THREADED_CALLS]
    for t, runs in enumerate(answered_by_threads(qa_pipe, THREADED_CALLS)):
        for got in runs:
            want = serial[t] if isinstance(serial[t], list) else [serial[t]]
            got = got if isinstance(got, list) else [got]
            assert [(a["answer"], a["start"], a["end"]) for a in got] == [
                (a["answer"], a["start"], a["end"]) for a in want
            ]
            assert [a["score"] for a in got] == pytest.approx([a["score"] for a in want], rel=1e-5, abs=1e-9)


def test_threads_get_bit_identical_logits_with_one_blas_thread(tiny_checkpoint):
    """With NPBERT_BLAS_THREADS=1 (docs/pipeline.md: the setting for bit-identical results under threads)
    every forward a thread makes is bit-identical to the serial one, on OpenBLAS's AVX2 (Haswell) kernels
    and its GEMM for the linear layers: the case whose rounding depends on the thread count (before the
    change in npbert/threads.py, 1 or 2 of the 22 distinct forwards differed, by up to 1e-6, in 4 of 4 runs)."""
    script = f"""
import hashlib, json, sys, threading
import numpy as np
import npbert
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_pipeline import THREADED_CALLS, answered_by_threads

qa = npbert.pipeline("question-answering", model={str(tiny_checkpoint)!r})
model, seen, lock, differ = qa.model, {{}}, threading.Lock(), []


class Recorder:
    def __getattr__(self, name):
        return getattr(model, name)

    def __call__(self, input_ids, **kw):
        out = model(input_ids, **kw)
        key = hashlib.sha256(input_ids.tobytes() + repr(input_ids.shape).encode()).hexdigest()
        with lock:
            first = seen.setdefault(key, (out.start_logits.copy(), out.end_logits.copy()))
            if not (np.array_equal(first[0], out.start_logits) and np.array_equal(first[1], out.end_logits)):
                differ.append(input_ids.shape)
        return out


qa.model = Recorder()
for kw in THREADED_CALLS:
    qa(**kw)
for _ in range(3):
    answered_by_threads(qa, THREADED_CALLS)
print(json.dumps({{"forwards": len(seen), "differ": len(differ)}}))
"""
    env = {**os.environ, "NPBERT_BLAS_THREADS": "1", "OPENBLAS_CORETYPE": "Haswell", "NPBERT_GEMM": "blas"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["forwards"] > 10 and result["differ"] == 0, result
