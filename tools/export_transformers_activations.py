"""Export transformers' intermediate activations under npbert's trace names (npbert/trace.py).

    python tools/export_transformers_activations.py --model FOLDER --inputs npbert-trace.safetensors --out hf.safetensors
    python tools/export_transformers_activations.py --model FOLDER --question Q --context C --out hf.safetensors
    npbert diff npbert-trace.safetensors hf.safetensors

Runs transformers 4.57.6 `AutoModelForQuestionAnswering` (eager attention, eval mode) of any family npbert
runs and records every intermediate with forward hooks on its modules (the module of each name, per
family, in `_modules`). The attention scores are a local variable inside the attention's forward, so
they are taken with a TorchFunctionMode active only inside attention: where DistilBERT hands them to
`masked_fill`, where the other families divide them by sqrt(Dh); DeBERTa's three score terms where
`DisentangledSelfAttention` makes them (the first bmm: c2c; the divisions by the scale after it: c2p,
p2c) and their sum where it goes to `masked_fill`. ALBERT's shared blocks are hooked once
and named by their run. `--inputs` reuses the exact input_ids, attention_mask (and token_type_ids) of an
npbert trace; `--question/--context` tokenizes with transformers' own tokenizer as its
question-answering pipeline does (question first, only_second truncation, overflow windows).

Needs the `parity` extra (transformers, torch). npbert itself never imports either.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode


class _CaptureScores(TorchFunctionMode):
    """Inside one attention forward, keep q k^T / sqrt(Dh) before the mask: the tensor DistilBERT passes to
    `masked_fill`, the result of the other families' division by sqrt(Dh)."""

    def __init__(self, out: dict, name: str, at_masked_fill: bool):
        super().__init__()
        self.out, self.name, self.at_masked_fill = out, name, at_masked_fill

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self.name not in self.out:
            if self.at_masked_fill and func is torch.Tensor.masked_fill:  # DistilBERT (it scales q, not scores)
                self.out[self.name] = args[0].detach().clone()
            elif not self.at_masked_fill and func in (torch.Tensor.__truediv__, torch.Tensor.div, torch.div):
                self.out[self.name] = result.detach().clone()
        return result


class _CaptureDebertaTerms(TorchFunctionMode):
    """Inside one DeBERTa attention forward (modeling_deberta_v2.py DisentangledSelfAttention): the first
    bmm is c2c (q times k^T already divided by the scale); the first division scales k, the next ones are
    the c2p and then the p2c term over the scale (in that order in disentangled_attention_bias); the tensor
    passed to masked_fill is their sum. [B*H, S, S] tensors, kept as [B, H, S, S]."""

    def __init__(self, out: dict, prefix: str, terms: tuple, n_heads: int):
        super().__init__()
        self.out, self.prefix, self.n_heads = out, prefix, n_heads
        self.divisions = ["k scaled"] + [t for t in ("c2p", "p2c") if t in terms]
        self.seen_bmm = False

    def keep(self, name, tensor):
        self.out[self.prefix + name] = tensor.detach().clone().reshape(-1, self.n_heads, *tensor.shape[-2:])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.bmm and not self.seen_bmm:
            self.seen_bmm = True
            self.keep("c2c", result)
        elif func in (torch.Tensor.__truediv__, torch.Tensor.div, torch.div) and self.divisions:
            name = self.divisions.pop(0)
            if name != "k scaled":
                self.keep(name, result)
        elif func is torch.Tensor.masked_fill and self.prefix + "scores" not in self.out:
            self.keep("scores", args[0])
        return result


def _modules(model):
    """(embedding modules by name, blocks [(module, {trace name: (submodule, 'in' | 'out')}, attention)])."""
    base = getattr(model, model.base_model_prefix)
    emb = base.embeddings
    names = {"embeddings.word": (emb.word_embeddings, "out")}
    if getattr(emb, "position_embeddings", None) is not None:  # DeBERTa-v3 has none
        names["embeddings.position"] = (emb.position_embeddings, "out")
    if getattr(emb, "token_type_embeddings", None) is not None:
        names["embeddings.token_type"] = (emb.token_type_embeddings, "out")
    projection = getattr(base, "embeddings_project", None) or getattr(
        getattr(base, "encoder", None), "embedding_hidden_mapping_in", None
    )
    if projection is not None:  # ELECTRA (E != D), ALBERT
        names["embeddings.normalized"], names["embeddings"] = (emb, "out"), (projection, "out")
    else:
        names["embeddings"] = (emb, "out")
    if model.config.model_type == "deberta-v2" and hasattr(base.encoder, "LayerNorm"):
        names["rel_embeddings"] = (base.encoder.LayerNorm, "out")  # the normalised relative-position table
    if model.config.model_type == "deberta-v2":
        blocks = [
            (
                layer,
                {
                    "attention.q": (s.query_proj, "out"),
                    "attention.k": (s.key_proj, "out"),
                    "attention.v": (s.value_proj, "out"),
                    "attention.probs": (s.dropout, "out"),
                    "attention.context": (layer.attention.output.dense, "in"),
                    "attention.output": (layer.attention.output.dense, "out"),
                    "sa_layer_norm": (layer.attention.output.LayerNorm, "out"),
                    "ffn.pre_activation": (layer.intermediate.dense, "out"),
                    "ffn.activation": (layer.output.dense, "in"),
                    "ffn.output": (layer.output.dense, "out"),
                    "output_layer_norm": (layer.output.LayerNorm, "out"),
                },
                s,
            )
            for layer in base.encoder.layer
            for s in (layer.attention.self,)
        ]
    elif model.config.model_type == "distilbert":
        blocks = [
            (
                layer,
                {
                    "attention.q": (layer.attention.q_lin, "out"),
                    "attention.k": (layer.attention.k_lin, "out"),
                    "attention.v": (layer.attention.v_lin, "out"),
                    "attention.probs": (layer.attention.dropout, "out"),  # identity in eval: the softmax
                    "attention.context": (layer.attention.out_lin, "in"),
                    "attention.output": (layer.attention.out_lin, "out"),
                    "sa_layer_norm": (layer.sa_layer_norm, "out"),
                    "ffn.pre_activation": (layer.ffn.lin1, "out"),
                    "ffn.activation": (layer.ffn.lin2, "in"),
                    "ffn.output": (layer.ffn.lin2, "out"),
                    "output_layer_norm": (layer.output_layer_norm, "out"),
                },
                layer.attention,
            )
            for layer in base.transformer.layer
        ]
    elif model.config.model_type == "albert":
        blocks = [
            (
                layer,
                {
                    "attention.q": (layer.attention.query, "out"),
                    "attention.k": (layer.attention.key, "out"),
                    "attention.v": (layer.attention.value, "out"),
                    "attention.probs": (layer.attention.attention_dropout, "out"),
                    "attention.context": (layer.attention.dense, "in"),
                    "attention.output": (layer.attention.dense, "out"),
                    "sa_layer_norm": (layer.attention.LayerNorm, "out"),
                    "ffn.pre_activation": (layer.ffn, "out"),
                    "ffn.activation": (layer.ffn_output, "in"),
                    "ffn.output": (layer.ffn_output, "out"),
                    "output_layer_norm": (layer.full_layer_layer_norm, "out"),
                },
                layer.attention,
            )
            for group in base.encoder.albert_layer_groups
            for layer in group.albert_layers
        ]
    else:  # bert, roberta, xlm-roberta, electra
        blocks = [
            (
                layer,
                {
                    "attention.q": (layer.attention.self.query, "out"),
                    "attention.k": (layer.attention.self.key, "out"),
                    "attention.v": (layer.attention.self.value, "out"),
                    "attention.probs": (layer.attention.self.dropout, "out"),
                    "attention.context": (layer.attention.output.dense, "in"),
                    "attention.output": (layer.attention.output.dense, "out"),
                    "sa_layer_norm": (layer.attention.output.LayerNorm, "out"),
                    "ffn.pre_activation": (layer.intermediate.dense, "out"),
                    "ffn.activation": (layer.output.dense, "in"),
                    "ffn.output": (layer.output.dense, "out"),
                    "output_layer_norm": (layer.output.LayerNorm, "out"),
                },
                layer.attention.self,
            )
            for layer in base.encoder.layer
        ]
    return names, blocks


def _register_hooks(model, out: dict) -> list:
    handles = []

    def hook(module, name, side):
        # name: a string, or a callable giving it at call time (ALBERT's shared blocks: the current run)
        def keep(value):
            # the first call wins: DeBERTa's query_proj/key_proj also project the relative-position table
            out.setdefault(name() if callable(name) else name, value.detach().clone())

        if side == "in":
            handles.append(module.register_forward_pre_hook(lambda m, args: keep(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, output: keep(output)))

    embeddings, blocks = _modules(model)
    for name, (module, side) in embeddings.items():
        hook(module, name, side)
    runs = {"next": 0, "current": 0}  # block runs, in forward order (ALBERT runs one block several times)
    at_masked_fill = model.config.model_type == "distilbert"

    def start_block(module, args):
        runs["current"], runs["next"] = runs["next"], runs["next"] + 1

    for block, names, attention in blocks:
        handles.append(block.register_forward_pre_hook(start_block))
        for name, (module, side) in names.items():
            hook(module, lambda name=name: f"layer.{runs['current']}.{name}", side)
        mode = {}

        def enter(module, args, kwargs, mode=mode):
            if model.config.model_type == "deberta-v2":
                terms = tuple(model.config.pos_att_type or ()) if model.config.relative_attention else ()
                mode["m"] = _CaptureDebertaTerms(
                    out, f"layer.{runs['current']}.attention.", terms, model.config.num_attention_heads
                )
            else:
                mode["m"] = _CaptureScores(out, f"layer.{runs['current']}.attention.scores", at_masked_fill)
            mode["m"].__enter__()

        def leave(module, args, output, mode=mode):
            mode.pop("m").__exit__(None, None, None)

        handles.append(attention.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(attention.register_forward_hook(leave))
    hook(model.qa_outputs, "logits", "out")
    return handles


def export(
    model_folder: str | Path, input_ids, attention_mask, dtype: str = "float32", token_type_ids=None
) -> dict[str, np.ndarray]:
    """transformers' activations for these inputs, named as npbert.trace names them."""
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(model_folder), attn_implementation="eager")
    model = model.to(getattr(torch, dtype)).eval()
    out: dict = {}
    handles = _register_hooks(model, out)
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    extra = {}
    if token_type_ids is not None:
        extra["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long)
    try:
        with torch.no_grad():
            result = model(input_ids=ids, attention_mask=mask, **extra)
    finally:
        for h in handles:
            h.remove()
    out["start_logits"], out["end_logits"] = result.start_logits, result.end_logits
    encoder = getattr(getattr(model, model.base_model_prefix), "encoder", None)
    if getattr(encoder, "relative_attention", False) and "rel_embeddings" not in out:  # DeBERTa, not normalised
        out["rel_embeddings"] = encoder.rel_embeddings.weight.detach().clone()
    if "embeddings.token_type" in out and not extra:  # transformers' default: every token of type 0
        extra["token_type_ids"] = torch.zeros_like(ids)
    tensors = {"input_ids": ids, "attention_mask": mask, **extra, **out}
    return {k: np.ascontiguousarray(v.numpy()) for k, v in tensors.items()}


def encode(model_folder, question: str, context: str, max_seq_len: int = 384, doc_stride: int = 128):
    """transformers' pipeline encoding: all overflow windows, padded to the longest (input_ids,
    attention_mask, and token_type_ids where the tokenizer's model_input_names has them, else None)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_folder))
    enc = tok(
        question,
        context,
        truncation="only_second",
        max_length=min(max_seq_len, tok.model_max_length),
        stride=doc_stride,
        return_overflowing_tokens=True,
        padding="longest",
        return_tensors="np",
    )
    types = enc["token_type_ids"] if "token_type_ids" in tok.model_input_names else None
    return enc["input_ids"], enc["attention_mask"], types


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--inputs", help="an npbert trace: reuse its input_ids and attention_mask")
    ap.add_argument("--question")
    ap.add_argument("--context")
    ap.add_argument("--max-seq-len", type=int, default=384)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.inputs:
        from safetensors.numpy import load_file

        given = load_file(args.inputs)
        ids, mask, types = given["input_ids"], given["attention_mask"], given.get("token_type_ids")
    elif args.question and args.context:
        ids, mask, types = encode(args.model, args.question, args.context, args.max_seq_len, args.doc_stride)
    else:
        ap.error("give --inputs TRACE, or --question and --context")
    tensors = export(args.model, ids, mask, args.dtype, types)
    from safetensors.numpy import save_file

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "npbert-trace", "producer": json.dumps("transformers"), "model": json.dumps(str(args.model))}
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
