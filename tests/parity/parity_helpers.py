"""Helpers for the parity tests: checkpoints made by transformers itself (`save_pretrained`), its outputs
as numpy, random right-padded inputs, and the llm.c-style comparison table: one row per tensor
(embeddings, each layer, attentions, logits) with its max |diff|, so a failing assertion points at the
first layer that drifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FULL_SIZE = dict(
    vocab_size=28996,
    dim=768,
    n_layers=6,
    n_heads=12,
    hidden_dim=3072,
    max_position_embeddings=512,
    sinusoidal_pos_embds=True,
)


def transformers_checkpoint(folder: Path, seed: int, cls_name: str = "DistilBertForQuestionAnswering", **config):
    """A random model built and saved by transformers (`torch.manual_seed(seed)`, then its own init), with
    biases and LayerNorm parameters randomised as well so every term of the forward is exercised.
    Returns (folder, the eval-mode torch model, eager attention)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.DistilBertConfig(**config, attn_implementation="eager")
    model = getattr(transformers, cls_name)(cfg).eval()
    return _randomise_and_save(model, folder)


def _randomise_and_save(model, folder: Path):
    """Biases and LayerNorm parameters drawn too (transformers initialises them to 0 and 1), then
    save_pretrained: safetensors, as transformers 4.57.6 writes it by default."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "LayerNorm" in name or "layer_norm" in name:
                p.normal_(1.0, 0.1)
    model.save_pretrained(folder)
    return Path(folder), model


def family_checkpoint(folder: Path, model_type: str, seed: int, encoder_only: bool = False, **config):
    """`transformers_checkpoint` for any family: AutoModelForQuestionAnswering (or AutoModel) built from
    `AutoConfig.for_model(model_type, **config)` with eager attention, biases and LayerNorms randomised,
    saved by save_pretrained. Returns (folder, the eval-mode torch model)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(model_type, **config, attn_implementation="eager")
    auto = transformers.AutoModel if encoder_only else transformers.AutoModelForQuestionAnswering
    model = auto.from_config(cfg, attn_implementation="eager").eval()
    return _randomise_and_save(model, folder)


def family_inputs(rng, lengths, config, seq_len=None):
    """Random right-padded model inputs for a transformers config of any family: ids avoid the padding id
    (RoBERTa's positions depend on it) and padding holds it; token types are 0 up to a random split, then
    1 (question, then context, as the tokenizers make them) where the model has two types.
    Returns a dict of int64 [B, S] arrays: input_ids, attention_mask (and token_type_ids)."""
    S = seq_len or max(lengths)
    pad = config.pad_token_id
    mask = (np.arange(S)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(0, config.vocab_size - 1, size=mask.shape)
    ids = np.where(ids >= pad, ids + 1, ids)  # every id but pad
    out = {"input_ids": np.where(mask == 1, ids, pad).astype(np.int64), "attention_mask": mask}
    if getattr(config, "type_vocab_size", 0) >= 2:
        split = rng.integers(0, np.maximum(np.asarray(lengths), 1))[:, None]
        out["token_type_ids"] = ((np.arange(S)[None, :] >= split) & (mask == 1)).astype(np.int64)
    return out


def transformers_outputs(
    model, ids: np.ndarray, mask: np.ndarray, attentions: bool = True, token_type_ids: np.ndarray | None = None
) -> dict:
    """The torch model's outputs as float numpy arrays, under the names npbert uses."""
    import torch

    extra = {} if token_type_ids is None else {"token_type_ids": torch.from_numpy(token_type_ids)}
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
            output_attentions=attentions,
            **extra,
        )
    result = {"hidden_states": [h.numpy() for h in out.hidden_states]}
    if attentions:
        result["attentions"] = [a.numpy() for a in out.attentions]
    for name in ("start_logits", "end_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            result[name] = getattr(out, name).numpy()
    return result


def right_padded(rng, lengths, vocab_size, seq_len=None):
    """Random ids [B, S] (S = max length unless given) and a right-padded 0/1 mask; padding ids are 0."""
    S = seq_len or max(lengths)
    mask = (np.arange(S)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab_size, size=mask.shape) * mask
    return ids.astype(np.int64), mask


def max_abs_diff(ours, theirs, rows_kept=None) -> float:
    """max |ours - theirs| over the rows selected by `rows_kept` ([B, S] bool over the first two axes of a
    [B, S, ...] tensor), or over everything."""
    d = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    return float(d[rows_kept].max() if rows_kept is not None else d.max())


def compare(ours, theirs, keep) -> list[tuple[str, float]]:
    """(name, max|diff|) per tensor at unpadded positions. `ours` is an npbert QuestionAnsweringModelOutput
    (or BaseModelOutput), `theirs` the transformers output as numpy dict with the same field names."""
    hidden = [max_abs_diff(a, b, keep) for a, b in zip(ours.hidden_states or (), theirs.get("hidden_states", ()))]
    # [B, H, S, S]: rows of unpadded queries, every key (masked keys must be exactly 0 on both sides).
    attention = [
        max_abs_diff(a.transpose(0, 2, 1, 3), b.transpose(0, 2, 1, 3), keep)
        for a, b in zip(ours.attentions or (), theirs.get("attentions", ()))
    ]
    rows = [("embeddings", hidden[0])] if hidden else []
    for i in range(max(len(hidden) - 1, len(attention))):  # in forward order: layer i's attention, then its output
        if i < len(attention):
            rows.append((f"layer {i} attention", attention[i]))
        if i + 1 < len(hidden):
            rows.append((f"layer {i} hidden", hidden[i + 1]))
    for name in ("last_hidden_state", "start_logits", "end_logits"):
        if name in theirs and hasattr(ours, name):
            rows.append((name, max_abs_diff(getattr(ours, name), theirs[name], keep)))
    return rows


def table(rows: list[tuple[str, float]], tolerances: dict[str, float], title: str = "") -> str:
    """The rows as a fixed-width table; tolerances map a name prefix ('layer', 'start') to its limit."""
    lines = [title, f"{'tensor':<24} {'max|diff|':>10} {'tol':>8}"]
    flagged = False
    for name, diff in rows:
        tol = limit(name, tolerances)
        mark = ""
        if tol is not None and not diff <= tol:
            mark = "  <-- FIRST OVER" if not flagged else "  <-- over"
            flagged = True
        lines.append(f"{name:<24} {diff:>10.3e} {'' if tol is None else f'{tol:.0e}':>8}{mark}")
    return "\n".join(lines)


def limit(name: str, tolerances: dict[str, float]) -> float | None:
    for prefix, tol in tolerances.items():
        if name.startswith(prefix) or name.endswith(prefix):
            return tol
    return None


def assert_close(rows, tolerances, title=""):
    over = [(n, d) for n, d in rows if limit(n, tolerances) is not None and not d <= limit(n, tolerances)]
    assert not over, "\n" + table(rows, tolerances, title)


# --- gradients (issue 24): torch autograd's, and the per-tensor table, llm.c style (test_gpt2.c) ----------

# A gradient tensor passes when max |ours - torch's| <= rel x max |torch's gradient of that tensor|.
GRADIENT_TOLERANCES = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
EMBEDDINGS_OUTPUT = "embeddings output"


def torch_gradients(
    model, inputs: dict, start_positions=None, end_positions=None, d_start_logits=None, d_end_logits=None
) -> dict:
    """torch autograd's gradients of an eval-mode transformers QA model (float32 or, after `.double()`,
    float64): with positions, of transformers' own loss (`model(..., start_positions=, end_positions=)
    .loss.backward()`); else of the logits, given their upstream gradients d_start_logits, d_end_logits [B, S].
    Returns numpy arrays: "loss" (None without positions), "start_logits", "end_logits", "d_start_logits",
    "d_end_logits" [B, S], "embeddings" (the gradient of the embeddings module's output [B, S, E], caught by
    a forward hook) and "weights" {parameter name, which is the checkpoint key: gradient}. A frozen parameter
    (DistilBERT's sinusoidal table: requires_grad False) or one the forward does not reach has no entry."""
    import torch

    dtype = next(model.parameters()).dtype
    caught = []

    def keep_output(module, args, output):
        output.retain_grad()
        caught.append(output)

    model.zero_grad(set_to_none=True)
    hook = model.base_model.embeddings.register_forward_hook(keep_output)
    try:
        kw = {name: torch.from_numpy(np.asarray(a)) for name, a in inputs.items() if a is not None}
        if start_positions is not None:
            kw["start_positions"] = torch.from_numpy(np.asarray(start_positions, np.int64))
            kw["end_positions"] = torch.from_numpy(np.asarray(end_positions, np.int64))
        out = model(**kw)
        out.start_logits.retain_grad()
        out.end_logits.retain_grad()
        if start_positions is not None:
            out.loss.backward()
        else:
            torch.autograd.backward(
                [out.start_logits, out.end_logits],
                [torch.as_tensor(np.asarray(d), dtype=dtype) for d in (d_start_logits, d_end_logits)],
            )
    finally:
        hook.remove()
    (embedded,) = caught
    as_numpy = lambda t: t.detach().numpy().copy()  # noqa: E731
    return {
        "loss": None if out.loss is None else float(out.loss.detach()),
        "start_logits": as_numpy(out.start_logits),
        "end_logits": as_numpy(out.end_logits),
        "d_start_logits": as_numpy(out.start_logits.grad),
        "d_end_logits": as_numpy(out.end_logits.grad),
        "embeddings": as_numpy(embedded.grad),
        "weights": {name: as_numpy(p.grad) for name, p in model.named_parameters() if p.grad is not None},
    }


def tensor_class(name: str) -> str:
    """The class a canonical tensor name belongs to in the report: embeddings, attention, ffn, layernorm,
    qa head (and EMBEDDINGS_OUTPUT, the gradient of the embeddings module's output)."""
    if name == EMBEDDINGS_OUTPUT:
        return name
    if name.startswith("qa_outputs"):
        return "qa head"
    if "norm" in name.lower():  # the embeddings' LayerNorm, sa_layer_norm, output_layer_norm, rel_layer_norm
        return "layernorm"
    if name.startswith("embeddings"):
        return "embeddings"  # the tables, and ELECTRA's / ALBERT's projection
    if ".ffn." in name:
        return "ffn"
    return "attention"  # q, k, v, out; DeBERTa's relative-position table and its projections


def gradient_scale(name: str, theirs: dict, order: dict) -> float:
    """max |torch's gradient| of a tensor (canonical `name`; `theirs` keyed by checkpoint key via `order`),
    the unit of its tolerance. A bias is measured against the larger of its own and its weight's: a bias
    whose every use shifts a softmax row by one constant has a true gradient of exactly 0 (the attention's
    key bias; under the QA loss, qa_outputs.bias and the last LayerNorm's bias), and both sides then hold
    rounding noise of the size of the weight's gradient times the dtype's epsilon."""
    scale = float(np.abs(theirs[order[name]]).max())
    weight = name.removesuffix("bias") + "weight"
    if name.endswith(".bias") and weight in order:
        scale = max(scale, float(np.abs(theirs[order[weight]]).max()))
    return scale


def gradient_rows(ours: dict, theirs: dict, order) -> list[tuple[str, str, float, float]]:
    """(checkpoint key, tensor class, max|diff|, max|torch grad|) per tensor in forward order: `order`'s
    (canonical name -> checkpoint key, weights.canonical_keys), with EMBEDDINGS_OUTPUT (when both sides have
    it) where the forward makes it, after the embeddings' tables and LayerNorm, before a projection. A
    tensor one side lacks gets max|diff| inf."""
    names = [(n, k) for n, k in order.items()]
    if EMBEDDINGS_OUTPUT in ours or EMBEDDINGS_OUTPUT in theirs:
        at = next((i for i, (n, _) in enumerate(names) if not n.startswith("embeddings.") or "projection" in n), 0)
        names.insert(at, (EMBEDDINGS_OUTPUT, EMBEDDINGS_OUTPUT))
    rows = []
    for name, key in names:
        if key not in theirs or key not in ours:
            rows.append((key, tensor_class(name), float("inf"), float("nan")))
            continue
        scale = gradient_scale(name, theirs, {**order, EMBEDDINGS_OUTPUT: EMBEDDINGS_OUTPUT})
        rows.append((key, tensor_class(name), max_abs_diff(ours[key], theirs[key]), scale))
    return rows


def gradient_table(rows, rel: float, title: str = "") -> str:
    """The rows as a fixed-width table in forward order: one line per tensor, its tolerance (rel x max|torch
    grad|), and "<-- FIRST OVER" at the tensor past it that the backward computes first (the last in forward
    order: an error made at one layer's backward reaches every tensor before it)."""
    over = [i for i, (_, _, diff, scale) in enumerate(rows) if not diff <= rel * scale]
    width = max([len(r[0]) for r in rows] + [24])
    lines = [title, f"{'tensor':<{width}} {'max|diff|':>10} {'max|grad|':>10} {'tol':>9} {'diff/grad':>9}"]
    for i, (key, _, diff, scale) in enumerate(rows):
        mark = ("  <-- FIRST OVER" if i == over[-1] else "  <-- over") if i in over else ""
        relative = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        lines.append(f"{key:<{width}} {diff:>10.3e} {scale:>10.3e} {rel * scale:>9.2e} {relative:>9.2e}{mark}")
    return "\n".join(lines)


def assert_gradients_close(rows, rel: float, title: str = "") -> None:
    """Every tensor within rel x max|torch grad| (a gradient torch holds as exactly 0 must be exactly 0)."""
    assert rows and all(diff <= rel * scale for _, _, diff, scale in rows), "\n" + gradient_table(rows, rel, title)


def class_summary(rows) -> dict[str, float]:
    """Per tensor class, the largest max|diff| / max|torch grad| of its tensors (the issue's report)."""
    out: dict[str, float] = {}
    for _, group, diff, scale in rows:
        relative = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        out[group] = max(out.get(group, 0.0), relative)
    return out
