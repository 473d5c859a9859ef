"""npbert.pipeline vs transformers 4.57.6 `pipeline("question-answering")` on the same checkpoint folder.

Every answer, start and end identical; scores within 1e-4 relative (1e-12 absolute floor for scores that
are float32 rounding noise anyway). Full size: the `full_checkpoint` fixture (28996 x 768 x 6, real cased
vocab when ../shared exists, QA head x12 so scores are spread), a few batched calls. Every parameter
combination: the tiny checkpoint (same tokenizer), where a call costs milliseconds.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

import npbert

transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
# transformers' postprocess calls np.array on a torch tensor: numpy 2 warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

UNICODE = [
    "Café naïve résumé: the Ångström façade was built in 1887 by Zoë Saldaña's great-grandfather.",
    "Cafe\u0301 and nai\u0308ve are spelled with combining marks; the fiance\u0301e arrived on Monday.",
    "東京は日本の首都です。 The capital of Japan is 東京 (Tokyo), and 北京 is the capital of China.",
    "The party 🎉 started at 9 pm 😀 and ended at dawn 👍🏽; the flag 🇫🇷 hung above the door.",
    "zero\u200bwidth spaces\u200c and joiners\u200d hide in this\ufeff sentence about Paris.",
    "In Hebrew שלום means peace, in Arabic سلام means peace, and \u202ekcab\u202c is reversed text.",
    "Columns\tseparated\tby\ttabs   and   runs     of      spaces\n\nname the river Danube.",
]
SHORT = "My name is John and I live in Seattle."
LONG = " ".join(
    f"In {1800 + i}, the river number {i} was renamed {name} by the council of city {i}."
    for i, name in enumerate(["Thames", "Seine", "Danube", "Rhine", "Elbe", "Oder"] * 12)
)
QUESTIONS = [
    "Where does John live?",
    "What was renamed by the council?",
    "Which capital is mentioned?",
    "When did it start?",
    "What does the sentence say?",
    "What does it mean?",
    "Which river?",
]


def assert_parity(got, want, where=""):
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"]), where
        assert got["score"] == pytest.approx(want["score"], rel=1e-4, abs=1e-12), where
    else:
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_parity(g, w, f"{where}[{i}]")


def reference(folder):
    return transformers.pipeline("question-answering", model=str(folder), tokenizer=str(folder), device="cpu")


@pytest.fixture(scope="module")
def full_pair(full_checkpoint):
    return npbert.pipeline("question-answering", model=full_checkpoint), reference(full_checkpoint)


def test_full_size_lists_short_long_unicode(full_pair):
    """One call: short, multi-window (> 384 tokens) and unicode contexts, every window of all questions
    batched; then the same inputs with transformers' padded batching (batch_size=4) on both sides."""
    mine, ref = full_pair
    questions = ["Where does John live?", "Which river was renamed in 1830?"] + QUESTIONS[: len(UNICODE)]
    contexts = [SHORT, LONG[:2700]] + UNICODE  # LONG[:2700]: ~640 tokens with the real vocabulary, 3 windows
    assert len(mine.tokenizer.encode_pair(questions[1], contexts[1])) >= 3  # first, middle(s) and last windows
    for kwargs in (dict(top_k=3), dict(top_k=2, batch_size=4)):
        assert_parity(
            mine(question=questions, context=contexts, **kwargs),
            ref(question=questions, context=contexts, **kwargs),
            str(kwargs),
        )


def test_full_size_parameters(full_pair):
    mine, ref = full_pair
    inputs = dict(question=["Which river was renamed in 1830?", "Where does John live?"], context=[LONG[:1200], SHORT])
    for kwargs in (
        dict(top_k=5, handle_impossible_answer=True, max_answer_len=4, max_seq_len=128, doc_stride=32),
        dict(align_to_words=False, max_seq_len=200, doc_stride=100, top_k=2, padding="max_length"),
    ):
        assert_parity(mine(**inputs, **kwargs), ref(**inputs, **kwargs), str(kwargs))
    one = {"question": "Who is mentioned?", "context": UNICODE[0]}
    assert_parity(mine(one), ref(one))
    assert_parity(
        mine(question=["Who?", "When?"], context=UNICODE[0]), ref(question=["Who?", "When?"], context=UNICODE[0])
    )


@pytest.fixture(scope="module")
def tiny_pair(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=tiny_checkpoint), reference(tiny_checkpoint)


@settings(max_examples=25)
@given(
    top_k=st.sampled_from([1, 2, 5, 20]),
    max_answer_len=st.sampled_from([1, 3, 15, 30]),
    window=st.sampled_from([(None, None), (48, 12), (64, 0), (32, 8), (100, 50)]),
    handle_impossible_answer=st.booleans(),
    align_to_words=st.booleans(),
    padding=st.sampled_from(["do_not_pad", "longest", "max_length"]),
    batch_size=st.sampled_from([None, 1, 3, 8]),
)
def test_every_parameter_tiny(
    tiny_pair, top_k, max_answer_len, window, handle_impossible_answer, align_to_words, padding, batch_size
):
    mine, ref = tiny_pair
    kwargs = dict(
        top_k=top_k,
        max_answer_len=max_answer_len,
        handle_impossible_answer=handle_impossible_answer,
        align_to_words=align_to_words,
        padding=padding,
    )
    if window[0] is not None:
        kwargs.update(max_seq_len=window[0], doc_stride=window[1])
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    questions = ["Where?", "Which river was renamed in 1830?", "Who?"] + QUESTIONS[:3]
    contexts = [SHORT, LONG[:800], "Seattle"] + UNICODE[:3]  # LONG[:800]: 170 tokens, several windows at 48
    assert_parity(
        mine(question=questions, context=contexts, **kwargs),
        ref(question=questions, context=contexts, **kwargs),
        str(kwargs),
    )


@pytest.mark.parametrize("context", UNICODE + ["a", "  padded  ", "\t\n", "x" * 400, "[SEP] [CLS] [MASK]"])
def test_unicode_and_edge_contexts_tiny(tiny_pair, context):
    mine, ref = tiny_pair
    for kwargs in (dict(top_k=10), dict(top_k=3, align_to_words=False, handle_impossible_answer=True)):
        assert_parity(
            mine(question="What is it?", context=context, **kwargs),
            ref(question="What is it?", context=context, **kwargs),
            str(kwargs),
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(question="", context=SHORT),
        dict(question="Who?", context=""),
        dict(question=["a", "b"], context=["c"]),
        dict(question="Who?", context=SHORT, top_k=0),
        dict(question="Who?", context=SHORT, max_answer_len=0),
        dict(question="Who?", context=SHORT, doc_stride=200, max_seq_len=100),
        dict(question="word " * 80, context=LONG, max_seq_len=64),
        dict(question="word " * 50, context=LONG, max_seq_len=64, doc_stride=20),
    ],
)
def test_both_reject_the_same_bad_input(tiny_pair, kwargs):
    mine, ref = tiny_pair
    with pytest.raises(ValueError):
        mine(**kwargs)
    try:
        ref(**kwargs)
    except BaseException as e:  # tokenizers' truncation panic is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
    else:
        pytest.fail(f"transformers accepted {kwargs}")


# --- issue 14: the forms transformers answers and npbert refused (each case through both pipelines) ----------

ITEMS = [{"question": q, "context": c} for q, c in zip(QUESTIONS, [SHORT, LONG[:800], "Seattle"] + UNICODE[:4])]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(top_k=2, batch_size=3),
        dict(batch_size=8, handle_impossible_answer=1),
        dict(top_k=3, align_to_words=0, batch_size=2, max_seq_len=48, doc_stride=12),
    ],
)
def test_streams_equal_transformers(tiny_pair, kwargs):
    """A generator and a torch Dataset are answered lazily (an iterator back), an iterator as a list."""
    import torch.utils.data

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(ITEMS)

        def __getitem__(self, i):
            return ITEMS[i]

    mine, ref = tiny_pair
    for make in (lambda: (x for x in ITEMS), Items):
        got, want = mine(make(), **kwargs), ref(make(), **kwargs)
        assert not isinstance(got, list) and not isinstance(want, list)
        assert_parity(list(got), list(want), f"{make} {kwargs}")
    assert_parity(mine(iter(ITEMS), **kwargs), ref(iter(ITEMS), **kwargs), str(kwargs))
    assert_parity(next(iter(mine(X=(x for x in ITEMS), **kwargs))), next(iter(ref(X=(x for x in ITEMS), **kwargs))))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_input_forms_equal_transformers(tiny_pair):
    mine, ref = tiny_pair
    examples = [transformers.SquadExample(None, x["question"], x["context"], None, None, None) for x in ITEMS]
    lists = {"question": [x["question"] for x in ITEMS[:3]], "context": [x["context"] for x in ITEMS[:3]]}
    one = {"question": [ITEMS[1]["question"]], "context": [ITEMS[1]["context"]]}
    cases = [
        ((examples,), {}),
        ((examples[:1],), {}),
        ((examples[2:],), {"top_k": 2}),
        ((lists,), {}),
        ((one,), {}),
        ((lists,), {"top_k": 2}),
        ((ITEMS[0],), {"question": "Who?", "context": LONG}),
        ((ITEMS[:2],), {"question": "Who?", "context": LONG, "top_k": 2}),
        ((), {"X": ITEMS[0], "question": "Who?", "context": LONG}),
        ((), {"data": ITEMS[:2], "question": "Who?", "context": LONG}),
        ((), {"X": ITEMS[1], "data": ITEMS[:2]}),
        ((), {"question": "Who?", "context": SHORT, "handle_impossible_answer": 1, "top_k": 3}),
        ((), {"question": "Who?", "context": SHORT, "align_to_words": 0, "top_k": 3}),
    ]
    for args, kwargs in cases:
        assert_parity(mine(*args, **kwargs), ref(*args, **kwargs), f"{args} {kwargs}")


def test_construction_keywords_equal_transformers(tiny_checkpoint):
    import torch

    inputs = dict(question=[x["question"] for x in ITEMS], context=[x["context"] for x in ITEMS], top_k=2)
    for kwargs in (
        dict(device="cpu"),
        dict(device=-1),
        dict(framework="pt"),
        dict(torch_dtype="auto"),
        dict(dtype=torch.float32),
        dict(dtype="float32"),
        dict(use_fast=True),
        dict(trust_remote_code=False),
        dict(model_kwargs={"attn_implementation": "eager", "low_cpu_mem_usage": True}),
    ):
        mine = npbert.pipeline("question-answering", model=tiny_checkpoint, tokenizer=str(tiny_checkpoint), **kwargs)
        ref = transformers.pipeline(
            "question-answering", model=str(tiny_checkpoint), tokenizer=str(tiny_checkpoint), **kwargs
        )
        assert_parity(mine(**inputs), ref(**inputs), str(kwargs))


@pytest.fixture(scope="module")
def short_positions_pair(tmp_path_factory):
    """A checkpoint whose 256 positions are fewer than the default max_seq_len (384)."""
    import checkpoints

    folder = checkpoints.write_checkpoint(
        tmp_path_factory.mktemp("p256"), seed=3, qa_scale=40.0, **{**checkpoints.TINY, "max_position_embeddings": 256}
    )
    return npbert.pipeline("question-answering", model=folder), reference(folder)


def test_max_seq_len_beyond_the_positions_equals_transformers(short_positions_pair):
    mine, ref = short_positions_pair
    for kwargs in (dict(), dict(max_seq_len=600), dict(max_seq_len=256, top_k=3), dict(max_seq_len=1000, top_k=2)):
        for question, context in (("Who?", SHORT), ("Which river?", UNICODE[2]), ("Which river?", LONG[:1000])):
            if len(mine.tokenizer.encode_pair(question, context, kwargs.get("max_seq_len", 384))[0]) > 256:
                continue  # the window does not fit: below
            assert_parity(
                mine(question=question, context=context, **kwargs),
                ref(question=question, context=context, **kwargs),
                f"{kwargs} {context[:20]}",
            )
    with pytest.raises(ValueError, match="window 0 of the context is 384 tokens long, over the model's 256 positions"):
        mine(question="Which river?", context=LONG)
    with pytest.raises(Exception):  # torch's index error: the window cannot run there either
        ref(question="Which river?", context=LONG)


def test_null_scores_are_transformers_empty_answer_scores(tiny_pair):
    """na_probs.json's number: npbert's null_scores equal the score transformers gives the empty answer with
    handle_impossible_answer, asked for every candidate span of every window (short ones: top_k 10**6) so that
    the empty answer is always among its answers."""
    mine, ref = tiny_pair
    questions = ["Where does John live?", "Who?", "Which capital is mentioned?", "Which river was renamed?"]
    contexts = [SHORT, "Seattle", UNICODE[0][:60], LONG[:400]]
    kwargs = dict(max_seq_len=32, doc_stride=8)  # the last context makes several windows
    nulls = []
    mine(question=questions, context=contexts, null_scores=nulls, **kwargs)
    want = ref(
        question=questions, context=contexts, handle_impossible_answer=True, top_k=10**6, align_to_words=False, **kwargs
    )
    assert len(nulls) == len(want) == 4
    for got, answers in zip(nulls, want):
        empty = max(a["score"] for a in answers if (a["answer"], a["start"], a["end"]) == ("", 0, 0))
        assert got == pytest.approx(empty, rel=1e-4, abs=1e-12)
