"""Write the stored reference fixture that tests parity where torch is not installed.

    python tools/make_reference.py        # needs the parity extra: pip install -e '.[parity]'

Into tests/fixtures/reference/<model_type>/, for every family npbert runs, it writes a tiny random
checkpoint saved by transformers' `save_pretrained` (config.json, model.safetensors), right-padded inputs
(with question/context token types where the model has them), transformers' outputs (every hidden state,
every attention map, start and end logits; float32 and float64) in reference.safetensors, and
reference.json: the format version, the transformers, torch and numpy versions, the config and the
inputs' lengths. tests/test_reference_fixture.py reads it with `read_fixture`, which fails with a hint to
rerun this script when the fixture is stale (another format version, a missing file, a shape that does
not match its config). Regenerating is deterministic (fixed seeds), so an unchanged reference stack
rewrites identical files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference"
FIXTURE = FIXTURES / "distilbert"
FILES = ("config.json", "model.safetensors", "reference.safetensors", "reference.json")
HINT = "regenerate it with `python tools/make_reference.py` (needs the parity extra: pip install -e '.[parity]')"

# Small enough to keep each family's fixture under 100 KB; odd FFN widths, 4 heads of 4, peaked attention;
# every family difference present (token types, RoBERTa's positions, ELECTRA's and ALBERT's projections,
# ALBERT's shared groups, DeBERTa-v3's disentangled attention with log buckets).
_BERT = dict(
    vocab_size=64,
    hidden_size=16,
    num_attention_heads=4,
    intermediate_size=37,
    num_hidden_layers=2,
    max_position_embeddings=24,
    initializer_range=0.2,
)
_ROBERTA = dict(_BERT, type_vocab_size=1, pad_token_id=1, max_position_embeddings=26, layer_norm_eps=1e-5)
CONFIGS = {
    "distilbert": dict(
        vocab_size=64, dim=16, n_heads=4, hidden_dim=37, n_layers=2, max_position_embeddings=24, initializer_range=0.2
    ),
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": dict(_BERT, embedding_size=8),
    "albert": dict(_BERT, embedding_size=8, num_hidden_layers=4, num_hidden_groups=2, hidden_act="gelu_new"),
    "deberta-v2": dict(
        _BERT,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=24,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
    ),
}
CONFIG = CONFIGS["distilbert"]
LENGTHS = [12, 7, 1]  # a full row, a padded row, a row with one kept token
SEED = 2


class StaleFixture(AssertionError):
    """The stored fixture does not match what this version of the test reads."""


def expected_shapes(model_type: str, config: dict, batch: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Every array in reference.safetensors, by name, with its shape."""
    from npbert.config import Config

    c = Config.from_dict({**config, "model_type": model_type})
    B, S, D, H = batch, seq_len, c.dim, c.n_heads
    shapes = {"input_ids": (B, S), "attention_mask": (B, S)}
    if c.type_vocab_size >= 2:
        shapes["token_type_ids"] = (B, S)
    for dtype in ("float32", "float64"):
        for i in range(c.n_layers + 1):
            shapes[f"{dtype}.hidden_states.{i}"] = (B, S, D)
        for i in range(c.n_block_runs):
            shapes[f"{dtype}.attentions.{i}"] = (B, H, S, S)
        shapes[f"{dtype}.start_logits"] = (B, S)
        shapes[f"{dtype}.end_logits"] = (B, S)
    return shapes


def read_fixture(folder: Path = FIXTURE) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of the stored fixture, checked against this format; StaleFixture otherwise."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise StaleFixture(f"reference fixture {folder}: missing {', '.join(missing)}; {HINT}")
    meta = json.loads((folder / "reference.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise StaleFixture(
            f"reference fixture {folder}: format version {meta.get('format_version')!r}, this test "
            f"reads version {FORMAT_VERSION}; {HINT}"
        )
    config = json.loads((folder / "config.json").read_text())
    changed = [k for k, v in meta["config"].items() if config.get(k) != v]
    if changed:
        raise StaleFixture(f"reference fixture {folder}: config.json differs from reference.json in {changed}; {HINT}")
    arrays = load_file(str(folder / "reference.safetensors"))
    expected = expected_shapes(meta["model_type"], meta["config"], len(meta["lengths"]), meta["seq_len"])
    problem = arrays_problem("reference.safetensors", arrays, expected)
    if problem:
        raise StaleFixture(f"reference fixture {folder}: {problem}; {HINT}")
    return meta, arrays


def arrays_problem(file: str, arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> str | None:
    """What makes a fixture's arrays unlike the `expected` names and shapes, or None (also read by
    tools/make_gradients.py)."""
    if set(arrays) != set(expected):
        return f"{file} holds {sorted(set(arrays) ^ set(expected))[:4]} unlike this format"
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            return f"{name} has shape {list(arrays[name].shape)}, its config says {list(shape)}"
    return None


def write_family(model_type: str, folder: Path) -> int:
    """One family's fixture; returns its size in bytes."""
    import copy

    import torch
    import transformers
    from safetensors.numpy import save_file

    from parity_helpers import family_checkpoint, family_inputs, transformers_outputs

    folder.mkdir(parents=True, exist_ok=True)
    config = CONFIGS[model_type]
    _, model = family_checkpoint(folder, model_type, seed=SEED, **config)
    arrays = family_inputs(np.random.default_rng(SEED), LENGTHS, model.config)
    for dtype, m in (("float32", model), ("float64", copy.deepcopy(model).double())):
        out = transformers_outputs(
            m, arrays["input_ids"], arrays["attention_mask"], token_type_ids=arrays.get("token_type_ids")
        )
        for field in ("hidden_states", "attentions"):
            arrays.update({f"{dtype}.{field}.{i}": a for i, a in enumerate(out[field])})
        arrays[f"{dtype}.start_logits"], arrays[f"{dtype}.end_logits"] = out["start_logits"], out["end_logits"]
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "reference.safetensors"))
    meta = {
        "format_version": FORMAT_VERSION,
        "generated_by": "tools/make_reference.py",
        "model_type": model_type,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "attn_implementation": "eager",
        "seed": SEED,
        "config": config,
        "lengths": LENGTHS,
        "seq_len": int(arrays["input_ids"].shape[1]),
    }
    (folder / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    read_fixture(folder)  # what was written is what the test reads
    return sum((folder / name).stat().st_size for name in FILES)


def main(root: Path = FIXTURES) -> None:
    import torch
    import transformers

    sys.path.insert(0, str(ROOT / "tests" / "parity"))
    sys.path.insert(0, str(ROOT))
    for model_type in CONFIGS:
        size = write_family(model_type, root / model_type)
        print(
            f"wrote {root / model_type} ({size / 1024:.0f} KB) with transformers {transformers.__version__}, "
            f"torch {torch.__version__}"
        )


if __name__ == "__main__":
    main()
