"""Attention pictures (npbert/viz.py) and `npbert attention`: the picture's size follows the documented
rule, its axes carry the tokens, and it shows the model's own attention probabilities."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="attention pictures need the viz extra (matplotlib)")
from PIL import Image  # noqa: E402  (pillow comes with matplotlib)

import npbert  # noqa: E402
from npbert import viz  # noqa: E402

QUESTION, CONTEXT = "What's my name?", "My name is John and I live in Seattle"


def npbert_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "npbert", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def heat_maps(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def softmax_rows(rng, shape):
    e = np.exp(rng.standard_normal(shape))
    return e / e.sum(-1, keepdims=True)


def test_one_head_figure(tmp_path):
    tokens = ["[CLS]", "Who", "?", "[SEP]", "Ann", "[SEP]"]
    probs = softmax_rows(np.random.default_rng(0), (6, 6))
    fig = viz.attention_figure(probs, tokens, title="layer 1, head 0")
    (ax,) = heat_maps(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    np.testing.assert_array_equal(ax.images[0].get_array(), probs)  # row = query, column = key
    assert fig._suptitle.get_text() == "layer 1, head 0"
    side = viz.panel_inches(6) + viz.MARGIN
    assert tuple(fig.get_size_inches()) == pytest.approx((side, side))
    path = viz.save_png(fig, tmp_path / "one.png", dpi=80, description="test")
    with Image.open(path) as im:
        assert im.size == (round(side * 80), round(side * 80)) and im.text["Description"] == "test"


def test_grid_of_heads():
    S, H = 9, 12
    tokens = [f"t{i}" for i in range(S)]
    probs = softmax_rows(np.random.default_rng(1), (H, S, S))
    fig = viz.attention_figure(probs, tokens)
    maps = heat_maps(fig)
    assert viz.grid_shape(H) == (3, 4) and len(maps) == H
    assert [ax.get_title() for ax in maps] == [f"head {h}" for h in range(H)]
    for h, ax in enumerate(maps):
        np.testing.assert_array_equal(ax.images[0].get_array(), probs[h])
        assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    side = viz.panel_inches(S, many=True) + viz.MARGIN
    assert tuple(fig.get_size_inches()) == pytest.approx((4 * side, 3 * side))
    with pytest.raises(ValueError, match="S = 8 tokens"):
        viz.attention_figure(probs, tokens[:-1])


def test_panel_size_grows_with_tokens_within_bounds():
    assert viz.panel_inches(3) == 2.5 and viz.panel_inches(40) == 8.0 and viz.panel_inches(400) == 16.0
    assert viz.panel_inches(400, many=True) == 8.0


def test_attention_command(tiny_checkpoint, tmp_path):
    from tokenizers import Tokenizer

    tokens = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json")).encode(QUESTION, CONTEXT).tokens
    n = len(tokens)
    one, grid = tmp_path / "head.png", tmp_path / "layer.png"
    base = ["attention", "--model", tiny_checkpoint, "--question", QUESTION, "--context", CONTEXT]
    r = npbert_cli(*base, "--layer", 0, "--head", 2, "--out", one, "--dpi", 50)
    assert r.returncode == 0, r.stderr
    side = viz.panel_inches(n) + viz.MARGIN
    with Image.open(one) as im:
        assert im.size == (round(side * 50), round(side * 50))
        assert im.text["Description"] == f"npbert attention layer 0, head 2: {' '.join(tokens)}"
    r = npbert_cli(*base, "--out", grid)  # default: every head of the last layer
    assert r.returncode == 0, r.stderr
    side = viz.panel_inches(n, many=True) + viz.MARGIN
    with Image.open(grid) as im:
        assert im.size == (round(4 * side * 100), round(side * 100))  # the tiny model has 4 heads: one row
        assert im.text["Description"].startswith("npbert attention layer 1, all heads: [CLS]")
    assert "layer 1, all heads" in r.stdout and str(grid) in r.stdout
    # The pixels are the model's probabilities: a different head draws a different picture.
    r = npbert_cli(*base, "--layer", 0, "--head", 3, "--out", tmp_path / "other.png", "--dpi", 50)
    with Image.open(one) as a, Image.open(tmp_path / "other.png") as b:
        assert a.size == b.size and np.asarray(a).tobytes() != np.asarray(b).tobytes()


def test_attention_command_rejects_bad_choices(tiny_checkpoint, tmp_path):
    base = [
        "attention",
        "--model",
        tiny_checkpoint,
        "--question",
        QUESTION,
        "--context",
        CONTEXT,
        "--out",
        tmp_path / "x.png",
    ]
    r = npbert_cli(*base, "--layer", 2)
    assert r.returncode == 2 and "--layer 2 is out of range: there are 2 layers in the model (0 to 1)" in r.stderr
    r = npbert_cli(*base, "--head", -1)
    assert r.returncode == 2 and "--head -1" in r.stderr
    r = npbert_cli(*base, "--window", 1)
    assert r.returncode == 2 and "1 window(s)" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_figure_of_the_models_attention(tiny_checkpoint):
    # The Python API route the command takes: model attentions -> one head's picture.
    from tokenizers import Tokenizer

    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint)
    ids = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json")).encode("When is", "The").ids
    probs = model(ids, output_attentions=True).attentions[1][0]
    fig = viz.attention_figure(probs[3], model_tokens := [str(i) for i in ids])
    np.testing.assert_array_equal(heat_maps(fig)[0].images[0].get_array(), probs[3].astype(np.float64))
    assert [t.get_text() for t in heat_maps(fig)[0].get_yticklabels()] == model_tokens
