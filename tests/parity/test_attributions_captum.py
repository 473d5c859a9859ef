"""npbert's attributions against Captum 0.9.0 on transformers 4.57.6, every family whose transformers class
exposes the embeddings module (DistilBERT, BERT, RoBERTa, XLM-R, ELECTRA with its projection, ALBERT,
DeBERTa-v2/v3): the same checkpoint (saved by transformers), the same ids, float32.

- Integrated gradients: Captum's `LayerIntegratedGradients` on `model.<base>.embeddings` with a forward
  function returning the start (end) logit at the answer's start (end) token, the tutorial's baseline
  (question and context ids replaced by the pad id, specials kept), n_steps 50, Gauss-Legendre, and
  `return_convergence_delta=True`, against `attributions.integrated_gradients`.
- Grad x Input: `LayerGradientXActivation` on the same layer, against `attributions.grad_x_input`.
- SmoothGrad: `NoiseTunnel(InputXGradient, nt_type="smoothgrad")` on a forward from the embeddings module's
  output (a hook replaces that output, as Captum's layer methods do), with torch.normal made to return
  npbert's own noise (`attributions.smoothgrad_noise`), so both average over the same noisy points.

Every token's attribution (the tutorial's summary: summed over the hidden dimension) is within 1e-4 of the
largest |token attribution|, every [S, E] element within 1e-4 of the tensor's largest, and the convergence
deltas agree within 1e-4 of |f(x) - f(baseline)|. A failure prints the table per family."""

from __future__ import annotations

import numpy as np
import pytest

import npbert
from npbert import attributions as A
from parity_helpers import family_checkpoint

pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
captum_attr = pytest.importorskip("captum.attr", reason="captum (the parity extra) is not installed")
torch = pytest.importorskip("torch")

from test_family_parity import COMMON, TINY  # noqa: E402  one tiny configuration per family, below

FAMILIES = {}
for model_type, cfg in TINY:  # the first of each family: ELECTRA with its projection, ALBERT with groups
    FAMILIES.setdefault(model_type, cfg)
TOL = 1e-4
N_STEPS = 50
CLS, SEP = 2, 3  # any ids other than the pad id: the tiny models have no tokenizer


def window_inputs(config, rng, n_question=4, n_context=9):
    """[CLS] question [SEP] context [SEP] as ids, with sequence ids, a full mask and token types (0 for the
    question, 1 for the context, where the model has two types); targets inside the context."""
    pad = config.pad_token_id
    text = rng.integers(4, config.vocab_size, size=n_question + n_context)
    text = np.where(text == pad, (pad + 1) % config.vocab_size or 4, text)
    ids = np.concatenate([[CLS], text[:n_question], [SEP], text[n_question:], [SEP]]).astype(np.int64)
    sequence_ids = (None,) + (0,) * n_question + (None,) + (1,) * n_context + (None,)
    types = None
    if getattr(config, "type_vocab_size", 0) >= 2:
        types = np.array([0] * (n_question + 2) + [1] * (n_context + 1), np.int64)
    start = n_question + 2 + 2
    return ids, sequence_ids, types, start, start + 3


def torch_forward(torch_model, which: int, index: int):
    """Captum's forward function: the start (which 0) or end (1) logit at token `index`."""

    def f(input_ids, attention_mask, token_type_ids):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = torch_model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return (out.start_logits, out.end_logits)[which][:, index]

    return f


def from_embedded(torch_model, ids):
    """A forward whose input is the embeddings module's output (a hook replaces it), for NoiseTunnel."""
    module = torch_model.base_model.embeddings

    def g(embedded, attention_mask, token_type_ids, which, index):
        handle = module.register_forward_hook(lambda m, i, o: embedded)
        try:
            n = len(embedded)
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out = torch_model(input_ids=ids.expand(n, -1), attention_mask=attention_mask, **extra)
        finally:
            handle.remove()
        return (out.start_logits, out.end_logits)[which][:, index]

    return g


def rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module", params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family(request, tmp_path_factory):
    model_type = request.param
    seed = 300 + sorted(FAMILIES).index(model_type)
    folder, torch_model = family_checkpoint(
        tmp_path_factory.mktemp(model_type), model_type, seed=seed, **{**COMMON, **FAMILIES[model_type]}
    )
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    ids, sequence_ids, types, start, end = window_inputs(torch_model.config, np.random.default_rng(seed))
    window = A.Window(ids, None, types, start, end)
    t = {
        "ids": torch.from_numpy(ids[None]),
        "mask": torch.ones((1, len(ids)), dtype=torch.int64),
        "types": None if types is None else torch.from_numpy(types[None]),
    }
    base = A.baseline_ids(ids, sequence_ids, torch_model.config.pad_token_id)
    return model_type, model, torch_model, window, base, t


def test_integrated_gradients_equal_captums(family):
    model_type, model, torch_model, window, base, t = family
    ours = A.integrated_gradients(model, window, base, n_steps=N_STEPS)
    rows = []
    for which, name, index in ((0, "start", window.start), (1, "end", window.end)):
        lig = captum_attr.LayerIntegratedGradients(
            torch_forward(torch_model, which, index), torch_model.base_model.embeddings
        )
        attr, delta = lig.attribute(
            inputs=t["ids"],
            baselines=torch.from_numpy(base[None]),
            additional_forward_args=(t["mask"], t["types"]),
            n_steps=N_STEPS,
            method="gausslegendre",
            return_convergence_delta=True,
        )
        theirs = attr[0].detach().numpy()
        with torch.no_grad():
            f = torch_forward(torch_model, which, index)
            gap = float(f(t["ids"], t["mask"], t["types"]) - f(torch.from_numpy(base[None]), t["mask"], t["types"]))
        per_token = rel(ours[name].sum(axis=-1), theirs.sum(axis=-1))
        summary = float(np.abs(A.summarize(ours[name]) - A.summarize(theirs)).max())
        rows.append(
            (name, rel(ours[name], theirs), per_token, summary, ours[f"delta_{name}"], float(delta[0]), abs(gap))
        )
    report = "\n".join(
        f"{model_type:<12} {n:<5} elements {e:.2e}  tokens {p:.2e}  summary {s:.2e}  "
        f"delta npbert {d:+.3e} captum {c:+.3e}  |f(x)-f(x')| {g:.3e}"
        for n, e, p, s, d, c, g in rows
    )
    print("\n" + report)
    for _, elements, per_token, summary, d_ours, d_theirs, gap in rows:
        assert elements <= TOL and per_token <= TOL and summary <= TOL, report
        assert abs(d_ours - d_theirs) <= TOL * gap, report


def test_grad_x_input_equals_captums(family):
    model_type, model, torch_model, window, _, t = family
    ours = A.grad_x_input(model, window)
    for which, name, index in ((0, "start", window.start), (1, "end", window.end)):
        layer = captum_attr.LayerGradientXActivation(
            torch_forward(torch_model, which, index), torch_model.base_model.embeddings
        )
        theirs = layer.attribute(t["ids"], additional_forward_args=(t["mask"], t["types"]))[0].detach().numpy()
        print(f"\n{model_type:<12} {name:<5} grad-x-input elements {rel(ours[name], theirs):.2e}")
        assert rel(ours[name], theirs) <= TOL, f"{model_type} {name}: {rel(ours[name], theirs):.2e}"
        assert rel(ours[name].sum(axis=-1), theirs.sum(axis=-1)) <= TOL


def test_smoothgrad_equals_noise_tunnel_with_the_same_noise(family, monkeypatch):
    model_type, model, torch_model, window, _, t = family
    samples, noise, seed = 6, 0.1, 7
    ours = A.smoothgrad(model, window, samples=samples, noise=noise, seed=seed)
    x = model.embed(window.input_ids, window.attention_mask, window.token_type_ids)
    drawn = A.smoothgrad_noise(seed, samples, x.shape[1:], ours["stdev"], np.float32)
    monkeypatch.setattr(torch, "normal", lambda mean, std: torch.from_numpy(drawn.reshape(std.shape)))
    for which, name, index in ((0, "start", window.start), (1, "end", window.end)):
        tunnel = captum_attr.NoiseTunnel(captum_attr.InputXGradient(from_embedded(torch_model, t["ids"])))
        theirs = (
            tunnel.attribute(
                torch.from_numpy(x),
                nt_type="smoothgrad",
                nt_samples=samples,
                stdevs=ours["stdev"],
                additional_forward_args=(t["mask"], t["types"], which, index),
            )[0]
            .detach()
            .numpy()
        )
        print(f"\n{model_type:<12} {name:<5} smoothgrad elements {rel(ours[name], theirs):.2e}")
        assert rel(ours[name], theirs) <= TOL, f"{model_type} {name}: {rel(ours[name], theirs):.2e}"
