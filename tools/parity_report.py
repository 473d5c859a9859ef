"""Print npbert's max |diff| against transformers 4.57.6 per family: logits and hidden states, float32 and
float64 (transformers `model.double()`), on random checkpoints saved by transformers' `save_pretrained`.

    python tools/parity_report.py                 # tiny shapes for every family, base size for bert, roberta
    python tools/parity_report.py --base all      # base size (768 x 12 layers) for every family
    python tools/parity_report.py --families deberta-v2 --base deberta-v2 --per-tensor   # one row per tensor
    python tools/parity_report.py --gradients --base distilbert   # the backward: gradients against torch autograd

Needs the parity extra (pip install -e '.[parity]'). The figures in docs/parity.md come from this script.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
sys.path.insert(0, str(ROOT / "tools"))

TINY = dict(
    hidden_size=48,
    num_attention_heads=4,
    intermediate_size=131,
    num_hidden_layers=3,
    vocab_size=200,
    max_position_embeddings=66,
    initializer_range=0.1,
)
BASE = dict(
    hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12, max_position_embeddings=512
)
FAMILY = {  # the base-size shape of each family's best-known QA checkpoint
    "distilbert": dict(vocab_size=28996, dim=768, n_heads=12, hidden_dim=3072, n_layers=6, max_position_embeddings=512),
    "bert": dict(BASE, vocab_size=28996),
    "roberta": dict(
        BASE, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5
    ),
    "xlm-roberta": dict(
        BASE, vocab_size=50000, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5
    ),
    "electra": dict(BASE, vocab_size=30522, embedding_size=768),
    "albert": dict(BASE, vocab_size=30000, embedding_size=128, hidden_act="gelu_new"),
    # deberta-v3-base (deepset/deberta-v3-base-squad2): disentangled attention, 256 log buckets, no absolute
    # positions, no token types
    "deberta-v2": dict(
        BASE,
        vocab_size=128100,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        relative_attention=True,
        position_buckets=256,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
    ),
}


def tiny_config(model_type: str) -> dict:
    if model_type == "distilbert":
        return dict(
            vocab_size=200,
            dim=48,
            n_heads=4,
            hidden_dim=131,
            n_layers=3,
            max_position_embeddings=66,
            initializer_range=0.1,
        )
    extra = {
        "roberta": dict(type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
        "xlm-roberta": dict(type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
        "electra": dict(embedding_size=16),
        "albert": dict(embedding_size=16, hidden_act="gelu_new", num_hidden_groups=1),
        "deberta-v2": dict(
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            position_biased_input=False,
        ),
    }.get(model_type, {})
    return {**TINY, **extra}


def measure(model_type: str, config: dict, lengths: list[int], folder: Path) -> dict:
    import npbert
    from parity_helpers import compare, family_checkpoint, family_inputs, transformers_outputs

    _, torch_model = family_checkpoint(folder, model_type, seed=0, **config)
    inputs = family_inputs(np.random.default_rng(0), lengths, torch_model.config)
    keep = inputs["attention_mask"].astype(bool)
    row = {}
    for dtype, m in (("fp32", torch_model), ("fp64", copy.deepcopy(torch_model).double())):
        model = npbert.AutoModelForQuestionAnswering.from_pretrained(
            folder, dtype=np.float32 if dtype == "fp32" else np.float64
        )
        ours = model(
            inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs.get("token_type_ids"),
            output_hidden_states=True,
        )
        theirs = transformers_outputs(
            m, inputs["input_ids"], inputs["attention_mask"], False, inputs.get("token_type_ids")
        )
        d = lambda a, b: float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))[keep].max())  # noqa: E731
        row[f"{dtype} logits"] = max(
            d(ours.start_logits, theirs["start_logits"]), d(ours.end_logits, theirs["end_logits"])
        )
        row[f"{dtype} hidden"] = max(d(a, b) for a, b in zip(ours.hidden_states, theirs["hidden_states"]))
        row[f"{dtype} per tensor"] = compare(ours, theirs, keep)
    return row


GRADIENT_CLASSES = ("embeddings", "attention", "ffn", "layernorm", "qa head", "embeddings output")


def measure_gradients(model_type: str, config: dict, lengths: list[int], folder: Path) -> dict:
    """Per dtype, the largest max|diff| / max|torch grad| over the tensors of each class (parity_helpers.
    tensor_class), for transformers' QA loss from positions inside each row, in eval mode."""
    import npbert
    from npbert.weights import canonical_keys
    from parity_helpers import (
        EMBEDDINGS_OUTPUT,
        class_summary,
        family_checkpoint,
        family_inputs,
        gradient_rows,
        torch_gradients,
    )

    _, torch_model = family_checkpoint(folder, model_type, seed=0, **config)
    rng = np.random.default_rng(0)
    inputs = family_inputs(rng, lengths, torch_model.config)
    start = np.array([rng.integers(0, n) for n in lengths])
    end = np.minimum(start + 3, np.array(lengths) - 1)
    row = {}
    for dtype, m in (("fp32", torch_model), ("fp64", copy.deepcopy(torch_model).double())):
        model = npbert.AutoModelForQuestionAnswering.from_pretrained(
            folder, dtype=np.float32 if dtype == "fp32" else np.float64
        )
        theirs = torch_gradients(m, inputs, start_positions=start, end_positions=end)
        try:
            g = model.gradients(**inputs, start_positions=start, end_positions=end)
        except NotImplementedError as e:
            return {"error": str(e)}
        keys = canonical_keys(model.config)
        if model.config.sinusoidal_pos_embds:  # frozen in transformers: no gradient to compare
            del keys["embeddings.position_embeddings.weight"]
        rows = gradient_rows(
            {**g.named(model.config), EMBEDDINGS_OUTPUT: g.embeddings},
            {**theirs["weights"], EMBEDDINGS_OUTPUT: theirs["embeddings"]},
            keys,
        )
        row[dtype] = class_summary(rows)
    return row


def gradients_main(jobs) -> None:
    print(f"{'family':<12} {'shape':<6} {'lengths':<10} {'dtype':<5} " + " ".join(f"{c:>11}" for c in GRADIENT_CLASSES))
    print("(max |npbert - torch| / max |torch gradient| of the worst tensor of each class; the loss from positions)")
    for model_type, shape, config, lengths in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure_gradients(model_type, config, lengths, Path(tmp))
        head = f"{model_type:<12} {shape:<6} {'/'.join(map(str, lengths)):<10}"
        if "error" in r:
            print(f"{head} {r['error']}", flush=True)
            continue
        for dtype in ("fp32", "fp64"):
            cells = " ".join(f"{r[dtype][c]:>11.1e}" if c in r[dtype] else f"{'':>11}" for c in GRADIENT_CLASSES)
            print(f"{head} {dtype:<5} {cells}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="bert,roberta", help="families measured at base size too (or 'all')")
    p.add_argument("--families", default="all", help="families measured at tiny size (comma-separated, or 'all')")
    p.add_argument("--per-tensor", action="store_true", help="also print max |diff| of every hidden state")
    p.add_argument("--gradients", action="store_true", help="compare the backward instead (torch autograd)")
    args = p.parse_args()
    base = list(FAMILY) if args.base == "all" else [f for f in args.base.split(",") if f]
    tiny = list(FAMILY) if args.families == "all" else [f for f in args.families.split(",") if f]
    if args.gradients:
        jobs = [(t, "tiny", tiny_config(t), [64, 37, 1]) for t in tiny]
        return gradients_main(jobs + [(t, "base", FAMILY[t], [128, 77]) for t in base])
    print(
        f"{'family':<12} {'shape':<6} {'lengths':<14} {'fp32 logits':>11} {'fp32 hidden':>11} "
        f"{'fp64 logits':>11} {'fp64 hidden':>11}"
    )
    jobs = [(t, "tiny", tiny_config(t), [64, 37, 1]) for t in tiny]
    jobs += [(t, "base", FAMILY[t], [384, 211]) for t in base]
    for model_type, shape, config, lengths in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(model_type, config, lengths, Path(tmp))
        print(
            f"{model_type:<12} {shape:<6} {'/'.join(map(str, lengths)):<14} {r['fp32 logits']:>11.2e} "
            f"{r['fp32 hidden']:>11.2e} {r['fp64 logits']:>11.2e} {r['fp64 hidden']:>11.2e}",
            flush=True,
        )
        if args.per_tensor:
            for name, fp32 in r["fp32 per tensor"]:
                fp64 = dict(r["fp64 per tensor"])[name]
                print(f"    {name:<22} fp32 {fp32:.2e}  fp64 {fp64:.2e}", flush=True)


if __name__ == "__main__":
    main()
