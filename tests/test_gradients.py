"""The backward pass without torch (issue 24, item 2): npbert's gradients are the derivatives of its own
forward, checked by central finite differences in float64 along random directions on tiny random models
of every family but DeBERTa (tests/test_deberta.py has its own) and variant (BERT with erf and tanh GELU and
ReLU, RoBERTa, XLM-R, ELECTRA with and without its projection, ALBERT with shared groups and inner groups,
DistilBERT with ReLU and with a sinusoidal table), for the QA loss and for given upstream gradients of the
logits, with respect to each weight tensor and to the embeddings module's output; `qa_loss` against its
definition (transformers' *ForQuestionAnswering.forward: positions clamped to [0, S], S ignored, the mean
cross-entropy over the rows kept, start and end averaged) and its edge cases; and against the stored torch
gradients of tests/fixtures/gradients/ (tools/make_gradients.py) for every family, within 1e-4 (float32)
or 1e-9 (float64) of each tensor's max |gradient|, printed per tensor when it fails.

A stale gradient fixture (another format version, a missing file or array, a shape that does not match,
a reference fixture regenerated since) fails with a hint to regenerate it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from safetensors.numpy import load_file, save_file

import npbert
from npbert import weights as W
from npbert.config import Config
from npbert.model import encoder, encoder_layers, prepare_inputs, qa_head, qa_loss
from npbert.ops import NUMPY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
from parity_helpers import (  # noqa: E402  (no torch at import)
    EMBEDDINGS_OUTPUT,
    GRADIENT_TOLERANCES,
    assert_gradients_close,
    gradient_rows,
)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_gradients = _load_tool("make_gradients")
make_reference = make_gradients.make_reference

# --- tiny random models of every family, made here (no torch) --------------------------------------------

_BERT = dict(
    model_type="bert",
    vocab_size=23,
    hidden_size=8,
    num_attention_heads=2,
    intermediate_size=11,
    num_hidden_layers=2,
    max_position_embeddings=12,
)
_ROBERTA = dict(_BERT, type_vocab_size=1, pad_token_id=1, max_position_embeddings=14, layer_norm_eps=1e-5)
_DISTILBERT = dict(
    model_type="distilbert", vocab_size=23, dim=8, n_heads=2, hidden_dim=11, n_layers=2, max_position_embeddings=12
)
FAMILIES = {
    "bert": _BERT,
    "bert-relu": dict(_BERT, hidden_act="relu", type_vocab_size=3),
    "bert-tanh-gelu": dict(_BERT, hidden_act="gelu_pytorch_tanh", num_attention_heads=4),
    "roberta": _ROBERTA,
    "xlm-roberta": dict(_ROBERTA, model_type="xlm-roberta"),
    "electra-projection": dict(_BERT, model_type="electra", embedding_size=6),
    "electra": dict(_BERT, model_type="electra", embedding_size=8),
    "albert-groups": dict(
        _BERT, model_type="albert", embedding_size=6, num_hidden_layers=4, num_hidden_groups=2, hidden_act="gelu_new"
    ),
    "albert-inner-groups": dict(
        _BERT, model_type="albert", embedding_size=6, num_hidden_layers=2, num_hidden_groups=1, inner_group_num=2
    ),
    "distilbert-relu": dict(_DISTILBERT, activation="relu"),
    "distilbert-sinusoidal": dict(_DISTILBERT, sinusoidal_pos_embds=True),
}
LENGTHS = [7, 4, 1]


def random_model(name: str | dict, seed: int = 0):
    """(config, canonical name -> float64 weights, inputs) for FAMILIES[name] (or a config dict: DeBERTa's in
    tests/test_deberta.py): every weight drawn, biases and LayerNorms too, and a sinusoidal table where the
    config says so. Inputs are right-padded, with two token types where the model has them; the padding id
    appears only in the padding."""
    config = Config.from_dict(FAMILIES[name] if isinstance(name, str) else name)
    rng = np.random.default_rng(seed)
    by_key = W.expected_shapes(config)
    shapes = {n: by_key[key] for n, key in W.canonical_keys(config).items()}
    tensors = {}
    for n, shape in shapes.items():
        if n.endswith("norm.weight") or n.endswith("LayerNorm.weight"):
            tensors[n] = 1.0 + 0.2 * rng.standard_normal(shape)
        else:  # 0.5: peaked attention, a spread of logits; tables and biases drawn too
            tensors[n] = (0.5 if n.endswith("weight") else 0.2) * rng.standard_normal(shape)
    if config.sinusoidal_pos_embds:
        tensors["embeddings.position_embeddings.weight"] = W.sinusoidal_table(
            config.max_position_embeddings, config.dim
        )
    S = max(LENGTHS)
    keep = np.arange(S)[None, :] < np.array(LENGTHS)[:, None]
    ids = rng.integers(0, config.vocab_size - 1, keep.shape)
    ids = np.where(ids >= config.pad_token_id, ids + 1, ids)
    inputs = {"input_ids": np.where(keep, ids, config.pad_token_id), "attention_mask": keep.astype(np.int64)}
    if config.type_vocab_size:
        inputs["token_type_ids"] = (np.arange(S)[None, :] >= 2) * keep * (config.type_vocab_size - 1)
    return config, tensors, inputs


def model_of(config, tensors, dtype=np.float64, kernels="numpy"):
    tree = W.build_tree({n: t.astype(dtype) for n, t in tensors.items()}, config)
    return npbert.AutoModelForQuestionAnswering(config, tree, dtype=dtype, kernels=kernels)


def logits_of(config, tensors, inputs):
    """npbert's forward (reference kernels) on a tree of float64 weights: start and end logits [B, S]."""
    ids, keep, types = prepare_inputs(
        inputs["input_ids"], inputs["attention_mask"], config, inputs.get("token_type_ids")
    )
    tree = W.build_tree(tensors, config)
    x, _, _ = encoder(ids, types, keep, tree.encoder, config, NUMPY)
    return qa_head(x, tree.qa_outputs)


def logits_from_embedded(config, tensors, embedded, keep):
    tree = W.build_tree(tensors, config)
    x, _, _ = encoder_layers(embedded, keep, tree.encoder, config, NUMPY, False, False)
    return qa_head(x, tree.qa_outputs)


def objective(kind, rng, B, S):
    """A scalar function of the logits and its kwargs for model.gradients: the QA loss (one start past the
    sequence, ignored; one end below 0, clamped), or a fixed linear form given by upstream gradients."""
    if kind == "loss":
        start, end = np.array([2, S + 1, 0]), np.array([5, 3, -1])
        return (lambda s, e: qa_loss(s, e, start, end)[0]), dict(start_positions=start, end_positions=end)
    d_start, d_end = rng.standard_normal((2, B, S))
    return (lambda s, e: float((d_start * s).sum() + (d_end * e).sum())), dict(
        d_start_logits=d_start, d_end_logits=d_end
    )


def frozen_rows(config) -> dict[str, int]:
    """Rows torch gives no gradient (nn.Embedding padding_idx): the padding id's word embedding, and
    RoBERTa's padding position."""
    rows = {"embeddings.word_embeddings.weight": config.pad_token_id}
    if config.positions_after_padding:
        rows["embeddings.position_embeddings.weight"] = config.pad_token_id
    return rows


def central_difference(f, h=1e-5):
    """f'(0) by the five-point central stencil: its error is about h^4 |f^(5)| / 30 + eps |f| / h, ~1e-11
    here in float64 (directions have norm 1), where the two-point one's h^2 term reaches 1e-9 (ALBERT's four
    runs of tanh GELU). h is small so that a ReLU's kink is rarely within the 2h the stencil spans; the
    seeds are fixed, and none is."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def unit(direction):
    return direction / np.linalg.norm(direction)


def assert_directional(f, analytic, what):
    """f'(0) (f: the objective along a direction) equals the gradient's projection on that direction, up to
    1e-7 of it plus the stencil's rounding (eps |f| / h: a few 1e-11 |f|)."""
    fd = central_difference(f)
    tol = 1e-7 * abs(analytic) + 1e-9 * max(1.0, abs(f(0.0)))
    assert abs(fd - analytic) <= tol, f"{what}: finite difference {fd!r}, gradient {analytic!r}"


@pytest.mark.parametrize("kind", ["loss", "upstream"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_weight_gradients_are_the_forwards_derivatives(family, kind):
    config, tensors, inputs = random_model(family)
    rng = np.random.default_rng(1)
    f, kw = objective(kind, rng, *inputs["input_ids"].shape)
    g = model_of(config, tensors).gradients(**inputs, **kw)
    names = list(W.canonical_keys(config))
    assert set(g.weights) == set(names)
    if config.sinusoidal_pos_embds:  # frozen in transformers (requires_grad False): zeros, as torch's optimisers see it
        assert not g.weights["embeddings.position_embeddings.weight"].any()
        names.remove("embeddings.position_embeddings.weight")
    for name in names:
        direction = rng.standard_normal(tensors[name].shape)
        if name in frozen_rows(config):
            direction[frozen_rows(config)[name]] = 0.0  # torch's convention: tested below
        direction = unit(direction)
        assert g.weights[name].shape == tensors[name].shape and g.weights[name].dtype == np.float64

        def along(h, name=name, direction=direction):
            return f(*logits_of(config, {**tensors, name: tensors[name] + h * direction}, inputs))

        assert_directional(along, float((g.weights[name] * direction).sum()), name)


@pytest.mark.parametrize("kind", ["loss", "upstream"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_embeddings_output_gradient_is_the_derivative(family, kind):
    config, tensors, inputs = random_model(family, seed=2)
    rng = np.random.default_rng(3)
    f, kw = objective(kind, rng, *inputs["input_ids"].shape)
    model = model_of(config, tensors)
    g = model.gradients(**inputs, **kw)
    embedded = model.embed(**inputs)
    keep = inputs["attention_mask"].astype(bool)
    assert g.embeddings.shape == embedded.shape == (*keep.shape, config.embedding_width)
    for _ in range(3):
        direction = unit(rng.standard_normal(embedded.shape))
        along = lambda h: f(*logits_from_embedded(config, tensors, embedded + h * direction, keep))  # noqa: E731
        assert_directional(along, float((g.embeddings * direction).sum()), "embeddings output")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_from_embedded_equals_gradients(family):
    # the same backward started from the embeddings module's output (what Captum's layer methods substitute)
    config, tensors, inputs = random_model(family, seed=6)
    f, kw = objective("upstream", np.random.default_rng(7), *inputs["input_ids"].shape)
    model = model_of(config, tensors)
    g = model.gradients(**inputs, **kw)
    again = model.gradients_from_embedded(model.embed(**inputs), inputs["attention_mask"], **kw, weights=True)
    assert again.loss is None
    np.testing.assert_array_equal(again.start_logits, g.start_logits)
    np.testing.assert_allclose(again.embeddings, g.embeddings, rtol=0, atol=1e-13)
    # every weight after the embeddings module, the same; the tables and their LayerNorm are not reached
    assert set(again.weights) == {n for n in g.weights if not n.startswith("embeddings.") or "projection" in n}
    for name, grad in again.weights.items():
        np.testing.assert_allclose(grad, g.weights[name], rtol=0, atol=1e-13, err_msg=name)
    assert model.gradients_from_embedded(model.embed(**inputs), inputs["attention_mask"], **kw).weights is None


@pytest.mark.parametrize("family", ["bert", "roberta", "albert-groups", "distilbert-relu"])
def test_padding_rows_get_no_gradient(family):
    # torch's nn.Embedding(padding_idx=pad) gives the padding id's row no gradient although the padded
    # positions reach the logits (their embeddings output's gradient is not 0): npbert does the same.
    config, tensors, inputs = random_model(family, seed=4)
    f, kw = objective("loss", np.random.default_rng(0), *inputs["input_ids"].shape)
    g = model_of(config, tensors).gradients(**inputs, **kw)
    assert np.abs(g.embeddings[inputs["attention_mask"] == 0]).max() > 1e-6
    for name, row in frozen_rows(config).items():
        assert not g.weights[name][row].any(), name
        assert g.weights[name].any()


@pytest.mark.parametrize("family", ["bert", "albert-inner-groups", "distilbert-relu"])
def test_float32_gradients_follow_float64(family):
    config, tensors, inputs = random_model(family, seed=5)
    f, kw = objective("loss", np.random.default_rng(0), *inputs["input_ids"].shape)
    g64 = model_of(config, tensors).gradients(**inputs, **kw)
    for kernels in ("numpy", "numba"):
        g32 = model_of(config, tensors, np.float32, kernels).gradients(**inputs, **kw)
        assert g32.embeddings.dtype == np.float32 and all(a.dtype == np.float32 for a in g32.weights.values())
        order = {name: name for name in g64.weights}
        ours = {**g32.weights, EMBEDDINGS_OUTPUT: g32.embeddings}
        theirs = {**g64.weights, EMBEDDINGS_OUTPUT: g64.embeddings}
        assert_gradients_close(gradient_rows(ours, theirs, order), 1e-4, f"{family} float32 ({kernels}) vs float64")


def test_weights_false_gives_the_embeddings_gradient_only():
    config, tensors, inputs = random_model("bert")
    _, kw = objective("loss", np.random.default_rng(0), *inputs["input_ids"].shape)
    model = model_of(config, tensors)
    full, only = model.gradients(**inputs, **kw), model.gradients(**inputs, **kw, weights=False)
    assert only.weights is None and only.loss == full.loss
    np.testing.assert_array_equal(only.embeddings, full.embeddings)


def test_named_and_tree_follow_the_checkpoint():
    config, tensors, inputs = random_model("albert-groups")
    _, kw = objective("loss", np.random.default_rng(0), *inputs["input_ids"].shape)
    g = model_of(config, tensors).gradients(**inputs, **kw)
    keys = W.canonical_keys(config)
    assert set(g.named(config)) == set(keys.values())
    for name, key in keys.items():
        assert g.named(config)[key] is g.weights[name]
    tree = g.tree(config)
    assert tree.encoder.transformer.layer[0].ffn.lin1.weight is g.weights["transformer.layer.0.ffn.lin1.weight"]
    # ALBERT: the runs of a shared block are one tree node, its gradient accumulated over them
    order = config.block_order()
    assert tree.encoder.transformer.layer[0] is tree.encoder.transformer.layer[order.index(order[0], 1)]


# --- qa_loss: transformers' definition, with its clamped and ignored positions ---------------------------


def cross_entropy_mean(logits, positions):
    """torch.nn.CrossEntropyLoss(ignore_index=S) after clamping to [0, S], written out in float64: the
    mean over the rows not ignored of -log softmax(row)[position] (nan when every row is ignored), and its
    gradient (softmax - one hot) / rows kept on the kept rows, 0 on the ignored ones."""
    logits = np.asarray(logits, np.float64)
    B, S = logits.shape
    positions = np.clip(positions, 0, S)
    kept = positions < S
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = int(kept.sum())
    loss = -log_p[kept, positions[kept]].sum() / n if n else float("nan")
    grad = np.zeros_like(logits)
    if n:
        grad[kept] = np.exp(log_p[kept])
        grad[kept, positions[kept]] -= 1.0
        grad /= n
    return loss, grad


qa_batches = st.tuples(st.integers(1, 5), st.integers(1, 10), st.integers(0, 2**32 - 1)).map(
    lambda t: (np.random.default_rng(t[2]).normal(0, 4, (2, t[0], t[1])), np.random.default_rng(t[2] + 1))
)


@given(batch=qa_batches, dtype=st.sampled_from([np.float32, np.float64]))
def test_qa_loss_is_transformers_definition(batch, dtype):
    (start_logits, end_logits), rng = batch
    B, S = start_logits.shape
    start, end = rng.integers(-3, S + 3, B), rng.integers(-3, S + 3, B)
    loss, d_start, d_end = qa_loss(start_logits.astype(dtype), end_logits.astype(dtype), start, end)
    (ls, gs), (le, ge) = cross_entropy_mean(start_logits, start), cross_entropy_mean(end_logits, end)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert d_start.dtype == d_end.dtype == dtype
    if np.isnan(ls) or np.isnan(le):  # torch: (nan + x) / 2 is nan; the other side's gradient stays
        assert np.isnan(loss)
    else:
        assert loss == pytest.approx((ls + le) / 2, rel=tol, abs=tol)
    np.testing.assert_allclose(d_start, gs / 2, rtol=tol, atol=tol)
    np.testing.assert_allclose(d_end, ge / 2, rtol=tol, atol=tol)


@given(batch=qa_batches)
def test_qa_loss_gradient_is_its_derivative(batch):
    (start_logits, end_logits), rng = batch
    B, S = start_logits.shape
    start, end = rng.integers(0, S, B), rng.integers(-1, S + 2, B)
    end[0] = min(max(end[0], 0), S - 1)  # one start and one end kept: a finite loss
    _, d_start, d_end = qa_loss(start_logits, end_logits, start, end)
    u, v = unit(rng.standard_normal((2, B, S)))
    along = lambda h: qa_loss(start_logits + h * u, end_logits + h * v, start, end)[0]  # noqa: E731
    assert_directional(along, float((d_start * u).sum() + (d_end * v).sum()), "qa_loss")


@given(batch=qa_batches, shift=st.floats(-50, 50))
def test_qa_loss_ignores_a_shift_of_a_row(batch, shift):
    # softmax does not see a constant added to a row: the loss and its gradient stay; a kept row's
    # gradient sums to 0 (so the QA head's bias, which shifts every logit of a row, gets none from it)
    (start_logits, end_logits), rng = batch
    B, S = start_logits.shape
    start, end = rng.integers(0, S, B), rng.integers(0, S, B)
    loss, d_start, d_end = qa_loss(start_logits, end_logits, start, end)
    loss2, d_start2, d_end2 = qa_loss(start_logits + shift, end_logits - shift, start, end)
    assert loss2 == pytest.approx(loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(d_start2, d_start, atol=1e-12)
    np.testing.assert_allclose(d_end2, d_end, atol=1e-12)
    np.testing.assert_allclose(d_start.sum(axis=1), 0, atol=1e-12)


@given(batch=qa_batches, past=st.integers(0, 1000), below=st.integers(1, 1000))
def test_qa_loss_clamps_positions(batch, past, below):
    # past the sequence: clamped to S and ignored, like a row whose position is S; below 0: position 0
    (start_logits, end_logits), rng = batch
    B, S = start_logits.shape
    start, end = rng.integers(0, S, B), rng.integers(0, S, B)
    start[0], end[-1] = S + past, -below
    clamped = qa_loss(start_logits, end_logits, np.where(start >= S, S, start), np.where(end < 0, 0, end))
    for ours, expected in zip(qa_loss(start_logits, end_logits, start, end), clamped):
        np.testing.assert_array_equal(ours, expected)
    _, d_start, _ = clamped
    assert not d_start[0].any()  # an ignored row gets no gradient


def test_qa_loss_every_row_ignored():
    # torch's CrossEntropyLoss(ignore_index) over no rows is nan (0 / 0), and its gradient 0 everywhere;
    # transformers adds the two and halves: nan, and the kept side's gradient halved as usual
    logits = np.random.default_rng(0).normal(size=(2, 2, 5))
    loss, d_start, d_end = qa_loss(logits[0], logits[1], [5, 9], [6, 7])
    assert np.isnan(loss) and not d_start.any() and not d_end.any()
    loss, d_start, d_end = qa_loss(logits[0], logits[1], [5, 9], [1, 7])
    assert np.isnan(loss) and not d_start.any()
    np.testing.assert_allclose(d_end, cross_entropy_mean(logits[1], np.array([1, 7]))[1] / 2, atol=1e-15)


# --- the stored torch gradients (tests/fixtures/gradients/, tools/make_gradients.py) -----------------------


def test_every_family_has_a_gradient_fixture():
    assert sorted(p.name for p in make_gradients.FIXTURES.iterdir()) == sorted(npbert.SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("loss", make_gradients.LOSSES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
@pytest.mark.parametrize("model_type", list(make_reference.CONFIGS))
def test_npbert_matches_stored_torch_gradients(model_type, kernels, dtype, loss):
    meta, arrays = make_gradients.read_fixture(model_type)
    folder = make_reference.FIXTURES / model_type
    _, ref = make_reference.read_fixture(folder)
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.dtype(dtype), kernels=kernels)
    inputs = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in ref}
    if loss == "positions":
        kw = dict(start_positions=meta["start_positions"], end_positions=meta["end_positions"])
    else:
        kw = {k: arrays[f"upstream.{k}"].astype(dtype) for k in ("d_start_logits", "d_end_logits")}
    g = model.gradients(**inputs, **kw)
    keys = W.canonical_keys(model.config)
    ours = {**g.named(model.config), EMBEDDINGS_OUTPUT: g.embeddings}
    theirs = {key: arrays[f"{loss}.weights.{key}"] for key in keys.values()}
    theirs[EMBEDDINGS_OUTPUT] = arrays[f"{loss}.embeddings"]
    rel = GRADIENT_TOLERANCES[np.dtype(dtype)]
    title = (
        f"stored {model_type} torch gradients (transformers {meta['transformers_version']}, torch "
        f"{meta['torch_version']}, float64) loss={loss} kernels={kernels} dtype={dtype}"
    )
    assert_gradients_close(gradient_rows(ours, theirs, keys), rel, title)
    if loss == "positions":
        assert g.loss == pytest.approx(float(arrays["positions.loss"][0]), rel=10 * rel)
        out = model(**inputs)  # torch's gradient of its loss wrt the logits: qa_loss's
        _, d_start, d_end = qa_loss(out.start_logits, out.end_logits, meta["start_positions"], meta["end_positions"])
        np.testing.assert_allclose(d_start, arrays["positions.d_start_logits"], rtol=0, atol=10 * rel)
        np.testing.assert_allclose(d_end, arrays["positions.d_end_logits"], rtol=0, atol=10 * rel)


@pytest.mark.parametrize("model_type", list(make_reference.CONFIGS))
def test_gradient_fixture_is_small(model_type):
    size = sum(p.stat().st_size for p in (make_gradients.FIXTURES / model_type).iterdir())
    assert size < 200_000, f"the {model_type} gradient fixture is {size} bytes; keep it under 200 KB"


# --- a stale or mismatched gradient fixture fails with a hint to regenerate ---------------------------------


@pytest.fixture
def copy_of_fixtures(tmp_path):
    return Path(shutil.copytree(make_gradients.FIXTURES, tmp_path / "gradients"))


def stale_message(root, model_type="bert") -> str:
    with pytest.raises(make_gradients.StaleFixture) as e:
        make_gradients.read_fixture(model_type, root)
    assert "python tools/make_gradients.py" in str(e.value)
    return str(e.value)


def test_other_format_version(copy_of_fixtures):
    path = copy_of_fixtures / "bert" / "gradients.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 0}))
    assert f"format version 0, this test reads version {make_gradients.FORMAT_VERSION}" in stale_message(
        copy_of_fixtures
    )


def test_missing_file(copy_of_fixtures):
    (copy_of_fixtures / "bert" / "gradients.safetensors").unlink()
    assert "missing gradients.safetensors" in stale_message(copy_of_fixtures)


def test_missing_array(copy_of_fixtures):
    path = copy_of_fixtures / "bert" / "gradients.safetensors"
    arrays = load_file(str(path))
    del arrays["upstream.weights.bert.encoder.layer.1.output.dense.bias"]
    save_file(arrays, str(path))
    assert "upstream.weights.bert.encoder.layer.1.output.dense.bias" in stale_message(copy_of_fixtures)


def test_shape_mismatch(copy_of_fixtures):
    path = copy_of_fixtures / "bert" / "gradients.safetensors"
    arrays = load_file(str(path))
    arrays["positions.embeddings"] = arrays["positions.embeddings"][:, :5].copy()
    save_file(arrays, str(path))
    assert "positions.embeddings has shape [3, 5, 16], its config says [3, 12, 16]" in stale_message(copy_of_fixtures)


def test_reference_regenerated_since(copy_of_fixtures):
    path = copy_of_fixtures / "bert" / "gradients.json"
    meta = json.loads(path.read_text())
    meta["reference_sha256"]["model.safetensors"] = "0" * 64
    path.write_text(json.dumps(meta))
    assert "(model.safetensors changed since)" in stale_message(copy_of_fixtures)
