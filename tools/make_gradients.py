"""Write the stored gradient fixture that tests the backward pass where torch is not installed.

    python tools/make_gradients.py        # needs the parity extra: pip install -e '.[parity]'

For every family of the stored reference fixture (tests/fixtures/reference/<model_type>/, written by
tools/make_reference.py: a tiny checkpoint saved by transformers and right-padded inputs), it loads that
checkpoint into transformers (eager attention, eval mode, float64) and writes torch autograd's gradients
into tests/fixtures/gradients/<model_type>/:

- gradients.safetensors: for two losses, "positions" (transformers' own QA loss,
  `model(..., start_positions=, end_positions=).loss.backward()`, with one start past the sequence,
  clamped and ignored, and one end below 0, clamped to 0) and "upstream" (the logits given the stored
  upstream gradients `upstream.d_start_logits`, `upstream.d_end_logits`): every weight's gradient under
  `<loss>.weights.<checkpoint key>`, the gradient of the embeddings module's output `<loss>.embeddings`
  [B, S, E], and for "positions" the loss `positions.loss` and its gradient wrt the logits
  `positions.d_start_logits`, `positions.d_end_logits` [B, S].
- gradients.json: the format version, the transformers, torch and numpy versions, the positions, and the
  sha256 of the reference checkpoint and inputs it was made from.

Float64 only: npbert's float64 gradients are checked against them within 1e-9 of each tensor's max
|gradient|, its float32 ones within 1e-4 (torch's own float32 gradients lie about 1e-6 from these).
tests/test_gradients.py reads them with `read_fixture`, which fails with a hint to rerun this script when
the fixture is stale (another format version, a missing file or array, a shape that does not match the
reference's config, a reference fixture regenerated since). Regenerating is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_reference  # noqa: E402  (imports no torch)

FORMAT_VERSION = 1
FIXTURES = ROOT / "tests" / "fixtures" / "gradients"
FILES = ("gradients.safetensors", "gradients.json")
HINT = "regenerate it with `python tools/make_gradients.py` (needs the parity extra: pip install -e '.[parity]')"
LOSSES = ("positions", "upstream")
# For make_reference.LENGTHS [12, 7, 1] (S 12): row 0's start is past the sequence (clamped to S, ignored),
# row 2's end below 0 (clamped to 0, its only token).
START_POSITIONS = [15, 2, 0]
END_POSITIONS = [5, 4, -2]
SEED = 24


class StaleFixture(AssertionError):
    """The stored gradient fixture does not match what this version of the test reads."""


def reference_digests(reference: Path) -> dict[str, str]:
    """sha256 of the reference fixture's checkpoint and of its inputs (what the gradients depend on)."""
    from safetensors.numpy import load_file

    arrays = load_file(str(reference / "reference.safetensors"))
    inputs = hashlib.sha256()
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        if name in arrays:
            inputs.update(name.encode() + np.ascontiguousarray(arrays[name], np.int64).tobytes())
    return {
        "model.safetensors": hashlib.sha256((reference / "model.safetensors").read_bytes()).hexdigest(),
        "inputs": inputs.hexdigest(),
    }


def expected_shapes(model_type: str, config: dict, batch: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Every array in gradients.safetensors, by name, with its shape."""
    from npbert.config import Config
    from npbert.weights import expected_shapes as weight_shapes

    c = Config.from_dict({**config, "model_type": model_type})
    B, S = batch, seq_len
    shapes = {"upstream.d_start_logits": (B, S), "upstream.d_end_logits": (B, S), "positions.loss": (1,)}
    shapes["positions.d_start_logits"] = shapes["positions.d_end_logits"] = (B, S)
    for loss in LOSSES:
        shapes[f"{loss}.embeddings"] = (B, S, c.embedding_width)
        shapes.update({f"{loss}.weights.{key}": shape for key, shape in weight_shapes(c).items()})
    return shapes


def read_fixture(model_type: str, root: Path = FIXTURES) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of one family's stored gradients, checked against this format and against the
    reference fixture they were made from; StaleFixture otherwise."""
    from safetensors.numpy import load_file

    folder, reference = Path(root) / model_type, make_reference.FIXTURES / model_type
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise StaleFixture(f"gradient fixture {folder}: missing {', '.join(missing)}; {HINT}")
    meta = json.loads((folder / "gradients.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise StaleFixture(
            f"gradient fixture {folder}: format version {meta.get('format_version')!r}, this test "
            f"reads version {FORMAT_VERSION}; {HINT}"
        )
    ref_meta, _ = make_reference.read_fixture(reference)
    digests = reference_digests(reference)
    changed = [name for name, digest in digests.items() if meta["reference_sha256"].get(name) != digest]
    if changed:
        raise StaleFixture(
            f"gradient fixture {folder}: made from another {reference} ({' and '.join(changed)} changed since); {HINT}"
        )
    arrays = load_file(str(folder / "gradients.safetensors"))
    expected = expected_shapes(model_type, ref_meta["config"], len(ref_meta["lengths"]), ref_meta["seq_len"])
    problem = make_reference.arrays_problem("gradients.safetensors", arrays, expected)
    if problem:
        raise StaleFixture(f"gradient fixture {folder}: {problem}; {HINT}")
    return meta, arrays


def write_family(model_type: str, root: Path = FIXTURES) -> int:
    """One family's fixture; returns its size in bytes."""
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file

    from parity_helpers import torch_gradients

    reference, folder = make_reference.FIXTURES / model_type, Path(root) / model_type
    folder.mkdir(parents=True, exist_ok=True)
    ref_meta, _ = make_reference.read_fixture(reference)
    inputs = {
        k: v
        for k, v in load_file(str(reference / "reference.safetensors")).items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(reference, attn_implementation="eager")
    model = model.eval().double()
    B, S = inputs["input_ids"].shape
    d_start, d_end = np.random.default_rng(SEED).normal(size=(2, B, S))
    arrays = {"upstream.d_start_logits": d_start, "upstream.d_end_logits": d_end}
    for loss, kw in (
        ("positions", dict(start_positions=START_POSITIONS, end_positions=END_POSITIONS)),
        ("upstream", dict(d_start_logits=d_start, d_end_logits=d_end)),
    ):
        t = torch_gradients(model, inputs, **kw)
        arrays[f"{loss}.embeddings"] = t["embeddings"]
        arrays.update({f"{loss}.weights.{key}": g for key, g in t["weights"].items()})
        if loss == "positions":
            arrays["positions.loss"] = np.array([t["loss"]])
            arrays.update({f"positions.{name}": t[name] for name in ("d_start_logits", "d_end_logits")})
    save_file(
        {k: np.ascontiguousarray(v, np.float64) for k, v in arrays.items()}, str(folder / "gradients.safetensors")
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "generated_by": "tools/make_gradients.py",
        "model_type": model_type,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "attn_implementation": "eager",
        "dtype": "float64",
        "seed": SEED,
        "start_positions": START_POSITIONS,
        "end_positions": END_POSITIONS,
        "reference": f"tests/fixtures/reference/{model_type}",
        "reference_sha256": reference_digests(reference),
    }
    (folder / "gradients.json").write_text(json.dumps(meta, indent=2) + "\n")
    read_fixture(model_type, root)  # what was written is what the test reads
    return sum((folder / name).stat().st_size for name in FILES)


def main(root: Path = FIXTURES) -> None:
    import torch
    import transformers

    sys.path.insert(0, str(ROOT / "tests" / "parity"))
    sys.path.insert(0, str(ROOT))
    for model_type in make_reference.CONFIGS:
        size = write_family(model_type, root)
        print(
            f"wrote {root / model_type} ({size / 1024:.0f} KB) with transformers {transformers.__version__}, "
            f"torch {torch.__version__}"
        )


if __name__ == "__main__":
    main()
