"""npbert train against the stored PyTorch run (tests/fixtures/training/, written by
tools/make_train_reference.py): the training parity checked with no torch installed. For each stored case
(float64, float32, distillation with gradient accumulation) `npbert.train.train` runs the same job on the
stored checkpoint and data; every step's loss and every final weight must equal PyTorch's within the
parity test's tolerances (1e-9 relative in float64, 1e-4 in float32; zero-gradient tensors, which AdamW
moves on rounding noise, within the bound tests/parity/test_train_parity.py explains)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from npbert import train

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_train_reference", ROOT / "tools" / "make_train_reference.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
# the tensors whose gradient is zero in exact arithmetic for this DistilBERT with the loss over every position
ZERO_GRADIENT = {"qa_outputs.bias", "distilbert.transformer.layer.1.output_layer_norm.bias"} | {
    f"distilbert.transformer.layer.{i}.attention.k_lin.bias" for i in range(2)
}


def read_case(case: str) -> tuple[dict, dict]:
    meta_path = make.FIXTURES / f"reference-{case}.json"
    if not meta_path.is_file():
        pytest.fail(f"{meta_path}: missing; {make.HINT}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != make.FORMAT_VERSION:
        pytest.fail(f"{meta_path}: format {meta.get('format_version')}, not {make.FORMAT_VERSION}; {make.HINT}")
    return meta, load_file(str(make.FIXTURES / f"reference-{case}.safetensors"))


@pytest.mark.parametrize("case", list(make.CASES))
def test_npbert_train_equals_the_stored_pytorch_run(tmp_path, case):
    meta, theirs = read_case(case)
    folder = tmp_path / "fixture"
    shutil.copytree(make.FIXTURES, folder)
    job = make.job_for(folder, case, tmp_path / "out")
    stored = {k: v for k, v in meta["job"].items()}
    ours_settings = {k: getattr(job, k) for k in stored}
    assert ours_settings == stored, "the fixture was made for other settings: " + make.HINT
    train.train(job)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    tol = 1e-9 if job.dtype == "float64" else 1e-4
    assert len(losses) == len(meta["losses"])
    for step, (a, b) in enumerate(zip(losses, meta["losses"]), 1):
        assert abs(a - b) <= tol * abs(b), f"step {step}: loss {a!r}, PyTorch's {b!r}"
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    noise = job.learning_rate * job.max_steps * (1.0 if job.dtype == "float32" else 1e-6)
    rows = []
    for name, value in theirs.items():
        diff = float(np.abs(ours[name].astype(np.float64) - value).max())
        limit = noise if name in ZERO_GRADIENT else tol * float(np.abs(value).max())
        if not diff <= limit:
            rows.append(f"{name}: max|diff| {diff:.2e} over {limit:.2e}")
    assert not rows, "\n".join(rows)


def test_the_fixture_is_small():
    size = sum(p.stat().st_size for p in make.FIXTURES.rglob("*") if p.is_file())
    assert size < 400_000, f"tests/fixtures/training holds {size} bytes"
