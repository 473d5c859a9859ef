"""Export transformers' intermediate activations under npbert's trace names (npbert/trace.py).

    python tools/export_transformers_activations.py --model FOLDER --inputs npbert-trace.safetensors --out hf.safetensors
    python tools/export_transformers_activations.py --model FOLDER --question Q --context C --out hf.safetensors
    npbert diff npbert-trace.safetensors hf.safetensors

Runs transformers 4.57.6 `DistilBertForQuestionAnswering` (eager attention, eval mode) and records every
intermediate with forward hooks on its modules. The attention scores are a local variable inside
`MultiHeadSelfAttention.forward`, so they are taken where that code hands them to `masked_fill`
(a TorchFunctionMode active only inside attention). `--inputs` reuses the exact input_ids and
attention_mask of an npbert trace; `--question/--context` tokenizes with transformers' own tokenizer
as its question-answering pipeline does (question first, only_second truncation, overflow windows).

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
    """Inside one attention forward, keep the tensor passed to `masked_fill`: q k^T / sqrt(Dh)."""

    def __init__(self, out: dict, name: str):
        super().__init__()
        self.out, self.name = out, name

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.masked_fill and self.name not in self.out:
            self.out[self.name] = args[0].detach().clone()
        return func(*args, **(kwargs or {}))


def _register_hooks(model, out: dict) -> list:
    def keep_output(name):
        return lambda module, args, output: out.__setitem__(name, output.detach().clone())

    def keep_input(name):
        return lambda module, args: out.__setitem__(name, args[0].detach().clone())

    handles = []

    def hook(module, name, on_input=False):
        handles.append(module.register_forward_pre_hook(keep_input(name)) if on_input
                       else module.register_forward_hook(keep_output(name)))

    emb = model.distilbert.embeddings
    hook(emb.word_embeddings, "embeddings.word")
    hook(emb.position_embeddings, "embeddings.position")
    hook(emb, "embeddings")
    for i, layer in enumerate(model.distilbert.transformer.layer):
        p, a = f"layer.{i}.", layer.attention
        hook(a.q_lin, p + "attention.q")
        hook(a.k_lin, p + "attention.k")
        hook(a.v_lin, p + "attention.v")
        hook(a.dropout, p + "attention.probs")  # dropout is the identity in eval mode: its output is the softmax
        hook(a.out_lin, p + "attention.context", on_input=True)
        hook(a.out_lin, p + "attention.output")
        hook(layer.sa_layer_norm, p + "sa_layer_norm")
        hook(layer.ffn.lin1, p + "ffn.pre_activation")
        hook(layer.ffn.lin2, p + "ffn.activation", on_input=True)
        hook(layer.ffn.lin2, p + "ffn.output")
        hook(layer.output_layer_norm, p + "output_layer_norm")
        mode = {}

        def enter(module, args, kwargs, p=p, mode=mode):
            mode["m"] = _CaptureScores(out, p + "attention.scores")
            mode["m"].__enter__()

        def leave(module, args, output, mode=mode):
            mode.pop("m").__exit__(None, None, None)

        handles.append(a.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(a.register_forward_hook(leave))
    hook(model.qa_outputs, "logits")
    return handles


def export(model_folder: str | Path, input_ids, attention_mask, dtype: str = "float32") -> dict[str, np.ndarray]:
    """transformers' activations for these inputs, named as npbert.trace names them."""
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(model_folder), attn_implementation="eager")
    model = model.to(getattr(torch, dtype)).eval()
    out: dict = {}
    handles = _register_hooks(model, out)
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    try:
        with torch.no_grad():
            result = model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    out["start_logits"], out["end_logits"] = result.start_logits, result.end_logits
    tensors = {"input_ids": ids, "attention_mask": mask, **out}
    return {k: np.ascontiguousarray(v.numpy()) for k, v in tensors.items()}


def encode(model_folder, question: str, context: str, max_seq_len: int = 384, doc_stride: int = 128):
    """transformers' pipeline encoding: all overflow windows, padded to the longest."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_folder))
    enc = tok(question, context, truncation="only_second", max_length=min(max_seq_len, tok.model_max_length),
              stride=doc_stride, return_overflowing_tokens=True, padding="longest", return_tensors="np")
    return enc["input_ids"], enc["attention_mask"]


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
        ids, mask = given["input_ids"], given["attention_mask"]
    elif args.question and args.context:
        ids, mask = encode(args.model, args.question, args.context, args.max_seq_len, args.doc_stride)
    else:
        ap.error("give --inputs TRACE, or --question and --context")
    tensors = export(args.model, ids, mask, args.dtype)
    from safetensors.numpy import save_file

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "npbert-trace", "producer": json.dumps("transformers"), "model": json.dumps(str(args.model))}
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
