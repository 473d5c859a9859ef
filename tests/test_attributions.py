"""npbert/attributions.py: the methods on a model whose integrals are known in closed form (a quadratic in the
embeddings output), then `explain` on a real checkpoint: completeness, the JSON fields, windows, words,
spans, seeds. Equality with Captum on every family: tests/parity/test_attributions_captum.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import npbert
from checkpoints import LONG, SMALL_WINDOWS
from npbert import attributions as A
from npbert.pipeline import WindowLimitError

# --- a model with known integrals --------------------------------------------------------------------------


class Quadratic:
    """embed: a table lookup plus a token-type row. The start logit at token i is
    w_s[i] . x + q_s[i] . (x * x) (likewise the end), so grad = w[i] + 2 q[i] * x and integrated gradients
    along x0 -> x are d * (w[i] + q[i] * (x + x0)) exactly, summing to f(x) - f(x0)."""

    def __init__(self, S=7, E=5, V=20, seed=0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.table = rng.normal(size=(V, E)).astype(dtype)
        self.types = rng.normal(size=(2, E)).astype(dtype)
        self.w = rng.normal(size=(2, S, S, E)).astype(dtype)  # [start/end, target token, S, E]
        self.q = rng.normal(size=(2, S, S, E)).astype(dtype)
        self.calls = []  # rows of each gradients_from_embedded call
        self.config = SimpleNamespace(n_heads=2)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None):
        x = self.table[input_ids]
        if token_type_ids is not None:
            x = x + self.types[token_type_ids]
        return x

    def logits(self, x):
        return tuple(
            np.einsum("tse,bse->bt", self.w[k], x) + np.einsum("tse,bse->bt", self.q[k], x * x) for k in (0, 1)
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=False):
        start, end = self.logits(self.embed(input_ids, attention_mask, token_type_ids))
        return SimpleNamespace(start_logits=start, end_logits=end)

    def gradients_from_embedded(self, embedded, attention_mask, d_start_logits, d_end_logits, weights=False):
        assert weights is False and embedded.dtype == self.dtype
        self.calls.append(len(embedded))
        g = sum(
            np.einsum("bt,tse->bse", d, self.w[k]) + 2 * embedded * np.einsum("bt,tse->bse", d, self.q[k])
            for k, d in ((0, d_start_logits), (1, d_end_logits))
        )
        start, end = self.logits(embedded)
        return SimpleNamespace(loss=None, start_logits=start, end_logits=end, embeddings=g)


def exact_ig(model, x, x0, k, target):
    return (x - x0) * (model.w[k, target] + model.q[k, target] * (x + x0))


@pytest.fixture
def setup():
    model = Quadratic()
    ids = np.array([1, 5, 6, 2, 9, 11, 2])
    types = np.array([0, 0, 0, 0, 1, 1, 1])
    sequence_ids = (None, 0, 0, None, 1, 1, None)
    window = A.Window(ids, None, types, start=4, end=5)
    base = A.baseline_ids(ids, sequence_ids, pad_token_id=0)
    return model, window, base


def test_baseline_keeps_specials_and_pads_the_text():
    assert A.baseline_ids([101, 7, 8, 102, 9, 102], (None, 0, 0, None, 1, None), 0).tolist() == [101, 0, 0, 102, 0, 102]


@pytest.mark.parametrize("method, tol", [("gausslegendre", 1e-12), ("riemann_middle", 1e-6)])
def test_ig_on_a_quadratic_is_exact_and_complete(setup, method, tol):
    # The integrand is linear in alpha: Gauss-Legendre and the midpoint rule integrate it exactly, so the
    # attributions equal the closed form and the deltas vanish. (Captum's trapezoid does not: its steps are
    # 1/n, halved at the ends, summing to (n - 1)/n; npbert keeps Captum's rule.)
    model, window, base = setup
    got = A.integrated_gradients(model, window, base, n_steps=9, method=method)
    x, x0 = (
        model.embed(window.input_ids[0], None, window.token_type_ids[0]),
        model.embed(base, None, window.token_type_ids[0]),
    )
    # (Riemann alphas pass through float32, as Captum's torch.linspace: the midpoint rule is exact to ~1e-8.)
    np.testing.assert_allclose(got["start"], exact_ig(model, x, x0, 0, window.start), rtol=tol, atol=tol)
    np.testing.assert_allclose(got["end"], exact_ig(model, x, x0, 1, window.end), rtol=tol, atol=tol)
    assert abs(got["delta_start"]) < 100 * tol and abs(got["delta_end"]) < 100 * tol


def test_riemann_left_is_the_left_sum(setup):
    # (1/n) sum_{k<n} grad(x0 + k/n d) = w + 2 q (x0 + d (n - 1) / (2 n)): the rule's own error, not zero.
    model, window, base = setup
    n = 6
    got = A.integrated_gradients(model, window, base, n_steps=n, method="riemann_left")
    types = window.token_type_ids[0]
    x, x0 = model.embed(window.input_ids[0], None, types), model.embed(base, None, types)
    d = x - x0
    want = d * (model.w[0, 4] + 2 * model.q[0, 4] * (x0 + d * (n - 1) / (2 * n)))
    np.testing.assert_allclose(got["start"], want, rtol=1e-6)  # alphas pass through float32, as Captum's
    assert abs(got["delta_start"]) > 1e-3


def test_internal_batches_bound_the_rows_and_change_nothing(setup):
    model, window, base = setup
    whole = A.integrated_gradients(model, window, base, n_steps=11, batch_size=100)
    model.calls.clear()
    pieces = A.integrated_gradients(model, window, base, n_steps=11, batch_size=4)
    assert max(model.calls) <= 4 and sum(model.calls) == 2 * 11
    for k in ("start", "end"):
        np.testing.assert_allclose(pieces[k], whole[k], rtol=1e-13, atol=1e-14)


def test_grad_x_input(setup):
    model, window, _ = setup
    got = A.grad_x_input(model, window)
    x = model.embed(window.input_ids[0], None, window.token_type_ids[0])
    np.testing.assert_allclose(got["start"], x * (model.w[0, 4] + 2 * model.q[0, 4] * x), rtol=1e-12)
    np.testing.assert_allclose(got["end"], x * (model.w[1, 5] + 2 * model.q[1, 5] * x), rtol=1e-12)


def test_smoothgrad_is_seeded_and_the_mean_of_noisy_grad_x_input(setup):
    model, window, _ = setup
    a = A.smoothgrad(model, window, samples=8, noise=0.2, seed=3, batch_size=4)
    b = A.smoothgrad(model, window, samples=8, noise=0.2, seed=3)
    c = A.smoothgrad(model, window, samples=8, noise=0.2, seed=4)
    np.testing.assert_array_equal(a["start"], b["start"])
    assert not np.allclose(a["start"], c["start"])
    x = model.embed(window.input_ids[0], None, window.token_type_ids[0])
    assert a["stdev"] == pytest.approx(0.2 * (x.max() - x.min()))
    rng = np.random.Generator(np.random.PCG64(3))  # the documented draw, made here independently
    points = x + rng.standard_normal((8, *x.shape)) * a["stdev"]
    want = np.mean([p * (model.w[0, 4] + 2 * model.q[0, 4] * p) for p in points], axis=0)
    np.testing.assert_allclose(a["start"], want, rtol=1e-10)
    zero = A.smoothgrad(model, window, samples=3, noise=0.0)
    np.testing.assert_allclose(zero["start"], A.grad_x_input(model, window)["start"], rtol=1e-12)


def test_rollout_of_uniform_attention():
    # Each layer: (uniform + I) / 2; two layers: its square, computed by hand.
    S = 4
    uniform = np.full((1, 3, S, S), 1 / S)
    one = 0.5 / S + 0.5 * np.eye(S)
    np.testing.assert_allclose(A.rollout_matrix([uniform]), one)
    np.testing.assert_allclose(A.rollout_matrix([uniform, uniform]), one @ one)
    probs = np.random.default_rng(0).dirichlet(np.ones(S), size=(1, 2, S))
    r = A.rollout_matrix([probs, uniform, probs])
    np.testing.assert_allclose(r.sum(axis=1), 1)


def test_summarize_is_the_tutorials():
    a = np.arange(12.0).reshape(4, 3) - 5
    per_token = a.sum(axis=1)
    np.testing.assert_allclose(A.summarize(a), per_token / np.sqrt((per_token**2).sum()))
    assert A.summarize(np.zeros((3, 2))).tolist() == [0, 0, 0]


def test_approximations_are_captums():
    steps, alphas = A.approximation("gausslegendre", 5)
    assert steps.sum() == pytest.approx(1) and 0 < alphas.min() < alphas.max() < 1
    steps, alphas = A.approximation("riemann_trapezoid", 5)
    assert steps.tolist() == [0.1, 0.2, 0.2, 0.2, 0.1] and alphas.tolist() == [0, 0.25, 0.5, 0.75, 1]
    for bad, field in (("riemann_left", "n_steps"), ("simpson", "approximation")):
        with pytest.raises(A.AttributionError) as e:
            A.approximation(bad, 1)
        assert e.value.field == field
    with pytest.raises(A.AttributionError, match="n_steps must be an integer >= 1"):
        A.approximation("gausslegendre", 0)


# --- a real checkpoint -------------------------------------------------------------------------------------

QUESTION = "Where do I live?"
CONTEXT = "My name is John and I live in Seattle. I work in Paris."


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


@pytest.fixture(scope="module")
def qa64(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint), dtype=np.float64)


def model_window(qa, question, context, start, end, **settings):
    (w,) = (
        qa.tokenizer.encode_pair(question, context, **settings)
        if settings
        else qa.tokenizer.encode_pair(question, context)[:1]
    )
    return w, A.Window(w.input_ids, w.attention_mask, None, start, end)


def test_gradients_are_the_logits_derivatives(qa64):
    # Central differences of the start (end) logit along a random direction of the embeddings output, from
    # the forward alone (float64): the targets' upstream gradients reach the right logits.
    model = qa64.model
    w, window = model_window(qa64, QUESTION, CONTEXT, 11, 13)
    x = model.embed(window.input_ids)
    v = np.random.default_rng(0).normal(size=x.shape)
    g_start, g_end = A.target_gradients(model, window, x)
    h = 1e-5
    plus, minus = (
        model.gradients_from_embedded(x + s * h * v, None, np.zeros((1, len(w))), np.zeros((1, len(w))))
        for s in (1, -1)
    )
    for g, logits in ((g_start, "start_logits"), (g_end, "end_logits")):
        index = window.start if logits == "start_logits" else window.end
        fd = (getattr(plus, logits)[0, index] - getattr(minus, logits)[0, index]) / (2 * h)
        assert np.sum(g * v) == pytest.approx(fd, rel=1e-6)


def test_ig_is_complete_on_the_model(qa64):
    # The baseline built here from the tokens (text -> [PAD], specials kept) and f from plain forwards.
    model, tok = qa64.model, qa64.tokenizer
    w, window = model_window(qa64, QUESTION, CONTEXT, 11, 13)
    specials = {tok.cls_token_id, tok.sep_token_id}
    base = np.array([i if i in specials else tok.pad_token_id for i in w.input_ids])
    got = A.integrated_gradients(model, window, base, n_steps=50)
    out, ref = model(w.input_ids[None]), model(base[None])
    gap = out.start_logits[0, 11] - ref.start_logits[0, 11]
    assert got["start"].sum() - gap == pytest.approx(got["delta_start"], abs=1e-12)
    assert abs(got["delta_start"]) < 1e-4 * abs(gap)  # Gauss-Legendre with 50 nodes on a smooth model


def test_explain_json_against_tokenizer_pipeline_and_methods(qa):
    r = A.explain(qa, QUESTION, CONTEXT)
    best = qa(question=QUESTION, context=CONTEXT)
    assert (r["answer"], r["span"], r["score"]) == (
        best["answer"],
        [best["start"], best["end"]],
        pytest.approx(best["score"]),
    )
    (w,) = qa.tokenizer.encode_pair(QUESTION, CONTEXT, 384, 128)
    assert r["tokens"] == qa.tokenizer.convert_ids_to_tokens(w.input_ids) and "windows" not in r
    t = r["target"]
    assert t["holds_answer"] and w.offsets[t["start"], 0] == best["start"] and w.offsets[t["end"], 1] == best["end"]
    # the per-token lists are the summary of the method's own attributions for that target
    window = A.Window(w.input_ids, w.attention_mask, None, t["start"], t["end"])
    base = A.baseline_ids(w.input_ids, w.sequence_ids, qa.tokenizer.pad_token_id)
    ig = A.integrated_gradients(qa.model, window, base)
    np.testing.assert_allclose(r["start"], A.summarize(ig["start"]), rtol=1e-12)
    np.testing.assert_allclose(r["raw_end"], ig["end"].sum(axis=-1, dtype=np.float64), rtol=1e-12)
    assert (r["delta_start"], r["delta_end"]) == (ig["delta_start"], ig["delta_end"])
    assert np.linalg.norm(r["start"]) == pytest.approx(1) and len(r["end"]) == len(r["tokens"])
    # words: every token once, in order; a word's score is the sum of its tokens'
    assert [i for word in r["words"] for i in word["tokens"]] == list(range(len(r["tokens"])))
    for word in r["words"]:
        assert word["start"] == pytest.approx(sum(r["start"][i] for i in word["tokens"]))
    assert [
        x["text"] for x in r["words"] if x["part"] == "context"
    ] == "My name is John and I live in Seattle . I work in Paris .".split()
    rollout = A.explain(qa, QUESTION, CONTEXT, "rollout")
    out = qa.model(w.input_ids[None], output_attentions=True)
    np.testing.assert_allclose(rollout["raw_start"], A.rollout_matrix(out.attentions)[t["start"]], rtol=1e-6)
    gxi = A.explain(qa, QUESTION, CONTEXT, "grad-x-input")
    np.testing.assert_allclose(gxi["start"], A.summarize(A.grad_x_input(qa.model, window)["start"]), rtol=1e-12)


def test_smoothgrad_same_call_same_numbers(qa):
    a, b = (A.explain(qa, QUESTION, CONTEXT, "smoothgrad", samples=4, seed=5) for _ in range(2))
    c = A.explain(qa, QUESTION, CONTEXT, "smoothgrad", samples=4, seed=6)
    assert a == b and a["start"] != c["start"]
    assert a["settings"] == {"max_seq_len": 384, "doc_stride": 128, "samples": 4, "noise": 0.15, "seed": 5}


def test_every_window_of_a_long_context(qa):
    windows = qa.tokenizer.encode_pair(LONG["question"], LONG["context"], 48, 16)
    # every window: as many as the context makes (more with the generated vocabulary than with the real one)
    r = A.explain(qa, **LONG, method="grad-x-input", params=SMALL_WINDOWS, max_windows=len(windows))
    assert len(r["windows"]) == len(windows) > 1 and "tokens" not in r
    c0, c1 = r["span"]
    held = 0
    for got, w in zip(r["windows"], windows):
        assert got["tokens"] == qa.tokenizer.convert_ids_to_tokens(w.input_ids)
        assert len(got["start"]) == len(got["end"]) == len(w)
        t = got["target"]
        inside = [i for i, s in enumerate(w.sequence_ids) if s == 1 and w.offsets[i, 0] >= c0 and w.offsets[i, 1] <= c1]
        holds = bool(inside) and w.offsets[inside[0], 0] == c0 and w.offsets[inside[-1], 1] == c1
        assert t["holds_answer"] == holds
        if holds:
            held += 1
            assert (t["start"], t["end"]) == (inside[0], inside[-1])
        else:  # its own best span, inside its context
            assert w.sequence_ids[t["start"]] == 1 or t["start"] == 0
    assert held >= 1


def test_a_given_span_and_bad_input(qa):
    start = CONTEXT.index("Paris")
    r = A.explain(qa, QUESTION, CONTEXT, "grad-x-input", span=(start, start + 5))
    assert r["answer"] == "Paris" and r["score"] is None and r["tokens"][r["target"]["start"]] == "Paris"
    for span, why in (
        ((50, 80), "outside the context"),
        ((start + 1, start + 5), "not on token boundaries"),
        ((5, 5), "outside"),
    ):
        with pytest.raises(A.AttributionError, match=why) as e:
            A.explain(qa, QUESTION, CONTEXT, "rollout", span=span)
        assert e.value.field == "span"
    for kwargs, field in (
        ({"method": "lime"}, "method"),
        ({"n_steps": 0}, "n_steps"),
        ({"approximation_method": "simpson"}, "approximation"),
        ({"method": "smoothgrad", "samples": 0}, "samples"),
        ({"method": "smoothgrad", "noise": -1.0}, "noise"),
    ):
        with pytest.raises(A.AttributionError) as e:
            A.explain(qa, QUESTION, CONTEXT, **kwargs)
        assert e.value.field == field
    with pytest.raises(WindowLimitError, match="over this pipeline's limit of 2"):
        A.explain(qa, **LONG, params=SMALL_WINDOWS, max_windows=2)
