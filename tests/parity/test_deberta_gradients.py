"""DeBERTa-v2/v3 gradients against torch autograd, llm.c style: transformers 4.57.6
`DebertaV2ForQuestionAnswering` (eager attention), `outputs.loss.backward()` with start/end positions,
against npbert's `model.gradients` with the same positions (qa_loss).

The tiny checkpoints are test_deberta_parity.py's (every setting of the attention and the embeddings:
relative_attention on and off, share_att_key on and off, pos_att_type c2p, p2c, both and none,
position_biased_input, token types, norm_rel_ebd layer_norm or none, log buckets on and off), plus one whose
norm_rel_ebd LayerNorm is stored without relative_attention (a parameter the loss never reaches: zeros).
Inputs are right-padded batches. Every weight's gradient and the gradient of the embeddings module's output
(after DeBERTa's mask multiply) are compared, each as max |ours - torch| / max |torch| (relative_diffs):
within 1e-4 in float32 and 1e-9 in float64. A failure prints the table, one row per tensor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import npbert
from npbert import weights as W
from parity_helpers import assert_close, family_checkpoint, family_inputs, table
from test_deberta_parity import TINY

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

CONFIGS = {
    **TINY,
    "rel-layer-norm-unused": dict(TINY["no-relative-attention"], norm_rel_ebd="layer_norm", share_att_key=False),
}
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-9}


@pytest.fixture(scope="module", params=list(CONFIGS))
def tiny_deberta(request, tmp_path_factory):
    return family_checkpoint(
        tmp_path_factory.mktemp(request.param),
        "deberta-v2",
        seed=700 + list(CONFIGS).index(request.param),
        **CONFIGS[request.param],
    )


@pytest.fixture(scope="module")
def tiny_deberta_float64(tiny_deberta):
    return copy.deepcopy(tiny_deberta[1]).double()


def qa_inputs(rng, config, lengths, seq_len=None):
    """Right-padded inputs and answer positions: random tokens of each row, and with two rows or more, one
    end position past the sequence (clamped to S, then ignored by the loss, as in transformers; with every
    row ignored the loss is 0 / 0). One kept token is the padding id:
    nn.Embedding(padding_idx=pad) gives its row no gradient even there (padded positions get none anyway:
    DeBERTa multiplies their embeddings by 0)."""
    inputs = family_inputs(rng, lengths, config, seq_len)
    inputs["input_ids"][0, lengths[0] // 2] = config.pad_token_id
    S = inputs["input_ids"].shape[1]
    starts = np.array([rng.integers(0, n) for n in lengths])
    ends = np.array([rng.integers(s, n) for s, n in zip(starts, lengths)])
    if len(lengths) > 1:
        ends[-1] = S + 5
    return inputs, starts, ends


def torch_gradients(torch_model, inputs, starts, ends):
    """loss, d(embeddings module output) [B, S, D], {checkpoint key: grad} from transformers' own loss."""
    torch_model.zero_grad()
    kept = {}

    def keep_output(module, args, output):
        output.retain_grad()
        kept["embeddings"] = output

    hook = torch_model.deberta.embeddings.register_forward_hook(keep_output)
    try:
        out = torch_model(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
            token_type_ids=None if "token_type_ids" not in inputs else torch.from_numpy(inputs["token_type_ids"]),
            start_positions=torch.from_numpy(starts),
            end_positions=torch.from_numpy(ends),
        )
        out.loss.backward()
    finally:
        hook.remove()
    grads = {
        name: np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy()
        for name, p in torch_model.named_parameters()
    }
    return out.loss.item(), kept["embeddings"].grad.numpy(), grads


def relative_diffs(ours: dict, theirs: dict) -> dict:
    """name -> max |ours - theirs| / max |theirs|, each tensor against its own largest gradient. Some
    gradients are zero but for rounding: qa_outputs.bias (each row's softmax gradient sums to zero) and,
    through qa_outputs, the last LayerNorm's bias; a tensor the loss never reaches is exactly zero. Those are
    measured against 1/100 of the model's largest gradient instead (their rounding is the model's, not theirs)."""
    floor = 1e-2 * max(np.abs(t).max() for t in theirs.values())
    diffs = {name: np.abs(np.asarray(ours[name], np.float64) - t).max() for name, t in theirs.items()}
    # (every gradient is 0 when S = 1: one position, whose softmax is 1 whatever the logit)
    return {name: float(d and d / max(np.abs(theirs[name]).max(), floor)) for name, d in diffs.items()}


def gradient_rows(model, torch_model, inputs, starts, ends):
    """The comparison table's rows, (tensor, max |diff| / max |grad|): the loss, the embeddings output, and
    every parameter by checkpoint key; and the two gradients' results for further checks."""
    ours = model.gradients(
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs.get("token_type_ids"),
        start_positions=starts,
        end_positions=ends,
    )
    loss, d_embedded, theirs = torch_gradients(torch_model, inputs, starts, ends)
    named = ours.named(model.config)
    assert sorted(named) == sorted(theirs), "npbert's gradients name other tensors than torch's parameters"
    diffs = relative_diffs({"embeddings output": ours.embeddings, **named}, {"embeddings output": d_embedded, **theirs})
    rows = [("loss", abs(float(ours.loss) - loss) / max(abs(loss), 1.0)), *diffs.items()]
    for key in named:
        assert named[key].shape == theirs[key].shape and named[key].dtype == model.dtype, key
    return rows, ours


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_tiny_deberta_gradients_equal_torch_autograd(tiny_deberta, tiny_deberta_float64, kernels, dtype):
    folder, torch_model = tiny_deberta
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    if dtype == np.float64:
        torch_model = tiny_deberta_float64
    rng = np.random.default_rng(5)
    S = config.max_position_embeddings
    inputs, starts, ends = qa_inputs(rng, config, [S, int(rng.integers(2, S)), 1])
    rows, ours = gradient_rows(model, torch_model, inputs, starts, ends)
    assert_close(rows, {"": TOLERANCE[dtype]}, f"{folder.name} {kernels} {np.dtype(dtype).name}: max|diff| / max|grad|")
    # weights=False: the same gradient of the embeddings output, and no weights'.
    inputs_only = model.gradients(
        inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), start_positions=starts,
        end_positions=ends, weights=False,
    )
    assert inputs_only.weights is None
    np.testing.assert_array_equal(inputs_only.embeddings, ours.embeddings)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tiny_deberta_gradients_random_batches(tiny_deberta, tiny_deberta_float64, data):
    folder, torch_model = tiny_deberta[0], tiny_deberta_float64
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64)
    S = data.draw(st.integers(1, torch_model.config.max_position_embeddings), label="S")
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=3), label="lengths")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    inputs, starts, ends = qa_inputs(rng, torch_model.config, lengths, S)
    rows, _ = gradient_rows(model, torch_model, inputs, starts, ends)
    assert_close(rows, {"": TOLERANCE[np.float64]}, f"{folder.name} S={S} lengths={lengths}")


def test_tiny_deberta_gradient_table_names_every_tensor(tiny_deberta):
    # The report llm.c prints: one row per tensor, here every weight of the checkpoint (the table a failure
    # shows), and the gradients' tree is named like the weights.
    folder, torch_model = tiny_deberta
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    inputs, starts, ends = qa_inputs(np.random.default_rng(2), torch_model.config, [9, 4])
    rows, ours = gradient_rows(model, torch_model, inputs, starts, ends)
    text = table(rows, {"": TOLERANCE[np.float32]}, folder.name)
    for key in W.canonical_keys(model.config).values():
        assert key in text
    tree = ours.tree(model.config)
    assert tree.encoder.embeddings.word_embeddings.weight.shape == (model.config.vocab_size, model.config.dim)
    assert not tree.encoder.embeddings.word_embeddings.weight[model.config.pad_token_id].any()  # padding_idx
