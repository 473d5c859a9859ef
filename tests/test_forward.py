"""The one forward (npbert/model.py): it runs on the loader's plain tree as on the re-laid one, its tap keeps
exactly trace.py's names, and reading a checkpoint needs none of the speed machinery (numba, layout.py).

Every family's stored fixture checkpoint (tests/fixtures/reference/), so DeBERTa's attention and ALBERT's
shared blocks are covered as well as the BERT-like families.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npbert
from npbert import layout, model as M, ops, trace as T, weights as W
from npbert.config import Config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir())


def inputs(config, seed=0):  # two rows, the second right-padded
    ids = np.random.default_rng(seed).integers(5, config.vocab_size, (2, 13))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask


def linears(tree):
    encoder = tree.encoder
    for layer in encoder.transformer.layer:
        yield from (*layer.attention[:4], layer.ffn.lin1, layer.ffn.lin2)
    yield tree.qa_outputs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_the_forward_runs_on_the_loaders_plain_tree(family, dtype, rtol):
    # The tree weights.load returns: separate q, k, v, every matrix [out, in] as stored, no derived tables.
    folder = FIXTURES / family
    config = Config.from_file(folder / "config.json")
    plain = W.load(folder, config, np.dtype(dtype))
    assert not any(layout.is_relaid(lin) for lin in linears(plain) if lin.weight.shape[0] > 1)
    assert all(
        getattr(layer.attention, "qkv", None) is None and layer.pos_tables is None
        for layer in plain.encoder.transformer.layer
    )
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype)  # re-laid, numba kernels
    ids, mask = inputs(config)
    expected = model(ids, mask, output_hidden_states=True)
    ids, keep, types = M.prepare_inputs(ids, mask, config)
    for chosen in (ops.NUMPY, ops.NUMBA):
        x, hidden, _ = M.encoder(ids, types, keep, plain.encoder, config, chosen, output_hidden_states=True)
        start, end = M.qa_head(x, plain.qa_outputs)
        for got, want in [
            (start, expected.start_logits),
            (end, expected.end_logits),
            *zip(hidden, expected.hidden_states),
        ]:
            scale = np.abs(want).max()
            assert np.abs(got - want).max() <= rtol * scale, (family, chosen.name)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tap_keeps_trace_names_and_changes_nothing(family):
    # With the reference kernels a forward with a tap computes exactly what one without computes; the tap
    # holds every name of trace.py's table, in its order, with the shapes the names promise.
    folder = FIXTURES / family
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype="float64", kernels="numpy")
    config = model.config
    ids, mask = inputs(config, seed=1)
    ids, keep, types = M.prepare_inputs(ids, mask, config)
    plain, _, _ = M.encoder(ids, types, keep, model.encoder_weights, config, ops.NUMPY)
    tap = M.Tap()
    tapped, _, _ = M.encoder(ids, types, keep, model.encoder_weights, config, ops.NUMPY, tap=tap)
    np.testing.assert_array_equal(tapped, plain)
    n_layers = len(model.encoder_weights.transformer.layer)
    np.testing.assert_array_equal(tap[f"layer.{n_layers - 1}.output_layer_norm"], plain)
    t = model.trace(ids, mask)
    terms = tuple(term for term in ("c2c", "c2p", "p2c") if f"layer.0.attention.{term}" in t)
    disentangled = config.disentangled_attention
    assert list(t) == T.names(
        n_layers,
        True,
        types is not None,
        model.encoder_weights.embeddings.projection is not None,
        not disentangled or config.position_biased_input,
        terms,
        disentangled and config.relative_attention,
    )
    assert t["layer.0.attention.probs"].shape == (2, config.n_heads, 13, 13)
    # A layer's scope reads back what the layer wrote.
    assert tap.scope("layer.0").scope("attention")["probs"] is tap["layer.0.attention.probs"]


def test_a_tap_with_the_numba_kernels_records_what_the_references_compute():
    # The numba attention never forms the unmasked scores: given a tap, it runs its reference twin.
    folder = FIXTURES / "bert"
    fast = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype="float64", kernels="numba")
    ids, mask = inputs(fast.config, seed=2)
    ids, keep, types = M.prepare_inputs(ids, mask, fast.config)
    tap = M.Tap()
    M.encoder(ids, types, keep, fast.encoder_weights, fast.config, ops.NUMBA, tap=tap)
    reference = fast.trace(ids, mask)
    for name in ("layer.0.attention.scores", "layer.1.attention.probs", "layer.1.ffn.pre_activation"):
        np.testing.assert_allclose(tap[name], reference[name], rtol=1e-12, atol=1e-12)


def test_reading_a_checkpoint_imports_no_numba():
    # weights.py (and what it imports) loaded under a bare parent package, so npbert/__init__.py's own
    # imports (the model classes) do not count: the loader alone must not pull in numba or layout.py.
    script = f"""
import importlib.util, sys, types
from pathlib import Path
package = types.ModuleType("npbert")
package.__path__ = [{str(ROOT / "npbert")!r}]
sys.modules["npbert"] = package
from npbert import weights as W
from npbert.config import Config
folder = Path({str(FIXTURES / "deberta-v2")!r})
tree = W.load(folder, Config.from_file(folder / "config.json"))
assert tree.qa_outputs.weight.shape[0] == 2
speed = ("npbert.layout", "npbert.ops")
print(sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite") or m in speed))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.replace("'", '"')) == []
