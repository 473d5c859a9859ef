"""npbert init-model's random checkpoints (npbert/init_weights.py) against transformers 4.57.6: the folder
loads in `AutoModelForQuestionAnswering.from_pretrained` with no key missing or unexpected and answers as
npbert does, and every tensor is drawn as transformers' own `_init_weights` draws the same config's (the
model `from_config` makes): the same tensors at 1, the same at 0, the same zero rows, the rest normal with
the same spread."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

import npbert  # noqa: E402
from npbert import init_weights, templated  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    data = templated.dataset("train", 30, seed=0)
    return templated.train_tokenizer(templated.texts(data), tmp_path_factory.mktemp("tok"))


def kind(t: np.ndarray) -> tuple:
    """What a tensor is: all ones, all zeros, or drawn (with the indices of its rows that are all zero)."""
    if (t == 1).all():
        return ("ones",)
    if (t == 0).all():
        return ("zeros",)
    zero_rows = tuple(np.flatnonzero((t == 0).all(axis=1))) if t.ndim == 2 else ()
    return ("drawn", zero_rows)


@pytest.mark.parametrize("family", init_weights.FAMILIES)
def test_drawn_as_transformers_draws_and_loaded_by_it(tokenizer, tmp_path, family):
    from safetensors.numpy import load_file

    folder = init_weights.write_random_model(
        tmp_path / family, tokenizer, family, n_layers=2, dim=64, n_heads=2, seed=1
    )
    ours = load_file(str(folder / "model.safetensors"))

    model, info = transformers.AutoModelForQuestionAnswering.from_pretrained(
        folder, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(folder)
    reference = transformers.AutoModelForQuestionAnswering.from_config(config)
    theirs = {k: v.detach().numpy() for k, v in reference.state_dict().items() if k in ours}
    assert theirs.keys() == ours.keys()
    drawn_ours, drawn_theirs = [], []
    for key in ours:
        assert ours[key].shape == theirs[key].shape, key
        assert kind(ours[key]) == kind(theirs[key]), key
        if kind(ours[key])[0] == "drawn":
            drawn_ours.append(ours[key].ravel())
            drawn_theirs.append(theirs[key].ravel())
    std_ours, std_theirs = np.concatenate(drawn_ours).std(), np.concatenate(drawn_theirs).std()
    assert std_ours == pytest.approx(std_theirs, rel=0.02) and std_theirs == pytest.approx(0.02, rel=0.02)

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    question, context = "Where was Anna Berg born?", "Anna Berg was born in Oslo. Leon Dahl lives in Riga."
    enc = tok(question, context, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**enc)
    got = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)(**{k: v.numpy() for k, v in enc.items()})
    np.testing.assert_allclose(got.start_logits, expected.start_logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(got.end_logits, expected.end_logits.numpy(), atol=1e-5)
    assert type(tok).__name__ == {"distilbert": "DistilBertTokenizerFast", "bert": "BertTokenizerFast"}[family]
