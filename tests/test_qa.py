"""npbert.qa: span selection against a brute-force search, and against transformers 4.57.6's own functions
(`select_starts_ends`, `decode_spans`) on random logits, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from npbert import qa
from npbert.tokenizer import Tokenizer


def window_arrays(seed, S, n_question, n_pad, spread=8.0, ties=False):
    """Random float32 logits [1, S] and the masks of `[CLS] q.. [SEP] c.. [SEP] [PAD]..`."""
    rng = np.random.default_rng(seed)
    start = (spread * rng.standard_normal((1, S))).astype(np.float32)
    end = (spread * rng.standard_normal((1, S))).astype(np.float32)
    if ties:  # few distinct values: equal span scores everywhere
        start, end = np.round(start / spread), np.round(end / spread)
    p_mask = np.ones((1, S), dtype=bool)
    p_mask[0, n_question + 2 : S - n_pad - 1] = False  # the context
    p_mask[0, 0] = False  # [CLS]
    attention = np.ones((1, S), dtype=np.int64)
    attention[0, S - n_pad :] = 0
    return start.astype(np.float32), end.astype(np.float32), p_mask, attention


def fit(S, n_question, n_pad):
    """Question and padding lengths leaving at least one context token in S."""
    n_question = min(n_question, S - 4)
    return n_question, max(min(n_pad, S - n_question - 4), 0)


window_params = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(6, 60), st.integers(1, 5), st.integers(0, 5), st.booleans()
)


@given(params=window_params, top_k=st.integers(1, 40), max_answer_len=st.integers(1, 20), impossible=st.booleans())
@example(params=(0, 6, 1, 0, False), top_k=36, max_answer_len=15, impossible=False)  # top_k == S * S
@example(params=(1, 6, 1, 1, True), top_k=36, max_answer_len=3, impossible=True)
def test_select_starts_ends_equals_transformers(params, top_k, max_answer_len, impossible):
    """Equal to transformers wherever it answers. With top_k == S * S transformers' decode_spans calls
    np.argpartition out of bounds and raises; npbert then answers as transformers does with one more
    (its sort-everything branch)."""
    ref = pytest.importorskip(
        "transformers.pipelines.question_answering", reason="transformers (the parity extra) is not installed"
    )
    seed, S, n_q, n_pad, ties = params
    n_q, n_pad = fit(S, n_q, n_pad)
    start, end, p_mask, attention = window_arrays(seed, S, n_q, n_pad, ties=ties)
    got = qa.select_starts_ends(start, end, p_mask, attention, 0.5, top_k, impossible, max_answer_len)
    try:
        want = ref.select_starts_ends(start, end, p_mask, attention, 0.5, top_k, impossible, max_answer_len)
    except ValueError as e:
        assert top_k == S * S and "out of bounds" in str(e), e
        want = ref.select_starts_ends(start, end, p_mask, attention, 0.5, top_k + 1, impossible, max_answer_len)
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype
    assert got[3] == want[3]


@given(params=window_params, max_answer_len=st.integers(1, 20))
def test_best_span_is_the_brute_force_best(params, max_answer_len):
    """Top-1 is the context span maximising p_start * p_end under the length limit (independent check)."""
    seed, S, n_q, n_pad, _ = params
    n_q, n_pad = fit(S, n_q, n_pad)
    start, end, p_mask, attention = window_arrays(seed, S, n_q, n_pad)
    starts, ends, scores, _ = qa.select_starts_ends(
        start, end, p_mask, attention, top_k=1, max_answer_len=max_answer_len
    )
    context = [i for i in range(S) if not p_mask[0, i] and attention[0, i] and i > 0]
    ps = np.exp(np.float64(start[0, context]) - start[0, context].max())
    ps /= ps.sum() + np.exp(np.float64(start[0, 0]) - start[0, context].max())
    pe = np.exp(np.float64(end[0, context]) - end[0, context].max())
    pe /= pe.sum() + np.exp(np.float64(end[0, 0]) - end[0, context].max())
    best = max(
        (
            (ps[a] * pe[b], context[a], context[b])
            for a in range(len(context))
            for b in range(len(context))
            if 0 <= b - a < max_answer_len
        ),
        key=lambda t: t[0],
    )
    assert (starts[0], ends[0]) == best[1:]
    assert scores[0] == pytest.approx(best[0], rel=1e-4)


def test_cls_quirk_and_null_score():
    """[CLS] passes the 'desired' test (transformers' nonzero() quirk) and gives the null score."""
    start = np.array([[5.0, -1, -1, 0.0, 1.0, 2.0, -1]], dtype=np.float32)  # [CLS] q [SEP] c c c [SEP]
    end = np.array([[5.0, -1, -1, 2.0, 1.0, 0.0, -1]], dtype=np.float32)
    p_mask = np.array([[0, 1, 1, 0, 0, 0, 1]], dtype=bool)
    starts, ends, scores, null = qa.select_starts_ends(
        start, end, p_mask, None, top_k=40, handle_impossible_answer=True
    )
    ps = np.exp(start[0, [0, 3, 4, 5]] - 5.0)
    pe = np.exp(end[0, [0, 3, 4, 5]] - 5.0)
    assert null == pytest.approx((ps[0] / ps.sum()) * (pe[0] / pe.sum()), rel=1e-6)
    assert 0 in starts  # zero-score spans from [CLS] survive the filter
    assert scores[:6].min() > 0 and (starts[:6] >= 3).all()  # the 6 real spans come first


def logits_at(S, high: dict):
    start = np.full((1, S), -5.0, dtype=np.float32)
    end = np.full((1, S), -5.0, dtype=np.float32)
    for i, (s, e) in high.items():
        start[0, i], end[0, i] = s, e
    return start, end


def test_answers_merge_equal_text(tiny_checkpoint):
    tok = Tokenizer.from_folder(tiny_checkpoint)
    context = "The the"
    (w,) = tok.encode_pair("Where?", context)
    c0, c1 = [i for i, s in enumerate(w.sequence_ids) if s == 1]
    start, end = logits_at(len(w), {c0: (3.0, 3.0), c1: (3.0, 2.0)})
    window = [(start, end, w.p_mask[None], w.attention_mask[None], w.encoding)]
    top = qa.answers(window, context, top_k=3)
    p_start = 1.0 / (2.0 + np.exp(-8.0))  # softmax over [CLS] and the two context tokens
    p_end0 = 1.0 / (1.0 + np.exp(-1.0) + np.exp(-8.0))
    p_end1 = np.exp(-1.0) * p_end0
    # (c0, c0) "The" and (c1, c1) "the" are one answer (case-insensitive), scores added, the first one's span
    assert [(a["answer"], a["start"], a["end"]) for a in top] == [("The", 0, 3), ("The the", 0, 7), ("", 0, 0)]
    assert top[0]["score"] == pytest.approx(p_start * (p_end0 + p_end1), rel=1e-5)
    assert top[1]["score"] == pytest.approx(p_start * p_end1, rel=1e-5)
    assert top[2]["score"] == 0.0  # only 3 real spans: transformers' [CLS] quirk fills the rest with score 0
    with_null = qa.answers(window, context, top_k=10, handle_impossible_answer=True)
    assert with_null[2] == {
        "score": pytest.approx(p_start * np.exp(-8.0) * p_end0 * np.exp(-8.0), rel=1e-4),
        "start": 0,
        "end": 0,
        "answer": "",
    }


def test_answers_align_to_words(tiny_checkpoint):
    tok = Tokenizer.from_folder(tiny_checkpoint)
    context = "It is Supercalifragilistic today"
    (w,) = tok.encode_pair("What?", context)
    pieces = [i for i, s in enumerate(w.sequence_ids) if s == 1 and w.encoding.token_to_word(i) == 2]
    assert len(pieces) > 2  # the long word is split into word pieces
    middle = pieces[1]
    start, end = logits_at(len(w), {middle: (4.0, 4.0)})
    window = [(start, end, w.p_mask[None], w.attention_mask[None], w.encoding)]
    aligned = qa.answers(window, context)
    assert (aligned["answer"], aligned["start"], aligned["end"]) == ("Supercalifragilistic", 6, 26)
    raw = qa.answers(window, context, align_to_words=False)
    assert (raw["start"], raw["end"]) == tuple(w.offsets[middle])
    assert raw["answer"] == tok.convert_ids_to_tokens([w.input_ids[middle]])[0].removeprefix("##")
