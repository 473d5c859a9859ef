"""npbert against the stored transformers reference (tests/fixtures/reference/<model_type>/, one tiny
checkpoint per family, written by tools/make_reference.py): parity checked with no torch installed. Every
hidden state, every attention map and the logits, at unpadded positions, with both kernel sets, in
float32 and float64.

A stale fixture (another format version, a missing file, shapes that do not match) fails with a hint to
regenerate it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import npbert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
from parity_helpers import assert_close, compare  # noqa: E402  (no torch at import)

_spec = importlib.util.spec_from_file_location("make_reference", ROOT / "tools" / "make_reference.py")
make_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_reference)

TOLERANCES = {
    "float32": {"embeddings": 1e-5, "hidden": 1e-5, "attention": 1e-6, "logits": 1e-5},
    "float64": {"embeddings": 1e-12, "hidden": 1e-12, "attention": 1e-12, "logits": 1e-12},
}


def reference_outputs(arrays, dtype) -> dict:
    """transformers' outputs for one dtype, under the names parity_helpers.compare expects."""
    count = lambda field: sum(name.startswith(f"{dtype}.{field}.") for name in arrays)  # noqa: E731
    return {
        "hidden_states": [arrays[f"{dtype}.hidden_states.{i}"] for i in range(count("hidden_states"))],
        "attentions": [arrays[f"{dtype}.attentions.{i}"] for i in range(count("attentions"))],
        "start_logits": arrays[f"{dtype}.start_logits"],
        "end_logits": arrays[f"{dtype}.end_logits"],
    }


def test_every_family_has_a_fixture():
    assert sorted(p.name for p in make_reference.FIXTURES.iterdir()) == sorted(npbert.SUPPORTED_MODEL_TYPES)
    assert sorted(make_reference.CONFIGS) == sorted(npbert.SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("model_type", list(make_reference.CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_npbert_matches_stored_transformers_outputs(model_type, kernels, dtype):
    folder = make_reference.FIXTURES / model_type
    meta, arrays = make_reference.read_fixture(folder)
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.dtype(dtype), kernels=kernels)
    assert model.config.model_type == meta["model_type"] == model_type
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    assert mask.sum(axis=1).tolist() == meta["lengths"] and (mask[:, 0] == 1).all()  # right-padded, as written
    ours = model(
        ids,
        attention_mask=mask,
        token_type_ids=arrays.get("token_type_ids"),
        output_hidden_states=True,
        output_attentions=True,
    )
    theirs = reference_outputs(arrays, dtype)
    assert len(ours.hidden_states) == len(theirs["hidden_states"]) and len(ours.attentions) == len(theirs["attentions"])
    title = (
        f"stored {model_type} reference (transformers {meta['transformers_version']}, torch "
        f"{meta['torch_version']}) kernels={kernels} dtype={dtype}"
    )
    assert_close(compare(ours, theirs, mask.astype(bool)), TOLERANCES[dtype], title)


@pytest.mark.parametrize("model_type", list(make_reference.CONFIGS))
def test_fixture_is_small(model_type):
    size = sum(p.stat().st_size for p in (make_reference.FIXTURES / model_type).iterdir())
    assert size < 200_000, f"the {model_type} reference fixture is {size} bytes; keep it under 200 KB"


# --- a stale or mismatched fixture fails with a hint to regenerate ---------------------------------------


@pytest.fixture
def copy_of_fixture(tmp_path):
    return Path(shutil.copytree(make_reference.FIXTURE, tmp_path / "reference"))


def stale_message(folder) -> str:
    with pytest.raises(make_reference.StaleFixture) as e:
        make_reference.read_fixture(folder)
    assert "python tools/make_reference.py" in str(e.value)
    return str(e.value)


def test_other_format_version(copy_of_fixture):
    meta = json.loads((copy_of_fixture / "reference.json").read_text())
    (copy_of_fixture / "reference.json").write_text(json.dumps({**meta, "format_version": 0}))
    assert f"format version 0, this test reads version {make_reference.FORMAT_VERSION}" in stale_message(
        copy_of_fixture
    )


def test_missing_file(copy_of_fixture):
    (copy_of_fixture / "reference.safetensors").unlink()
    assert "missing reference.safetensors" in stale_message(copy_of_fixture)


def test_shape_mismatch(copy_of_fixture):
    arrays = load_file(str(copy_of_fixture / "reference.safetensors"))
    arrays["float32.start_logits"] = arrays["float32.start_logits"][:, :5].copy()
    save_file(arrays, str(copy_of_fixture / "reference.safetensors"))
    assert "float32.start_logits has shape [3, 5], its config says [3, 12]" in stale_message(copy_of_fixture)


def test_missing_array(copy_of_fixture):
    arrays = load_file(str(copy_of_fixture / "reference.safetensors"))
    del arrays["float64.attentions.1"]
    save_file(arrays, str(copy_of_fixture / "reference.safetensors"))
    assert "float64.attentions.1" in stale_message(copy_of_fixture)


def test_config_changed_without_regenerating(copy_of_fixture):
    config = json.loads((copy_of_fixture / "config.json").read_text())
    (copy_of_fixture / "config.json").write_text(json.dumps({**config, "n_layers": 3}))  # the distilbert fixture
    assert "config.json differs from reference.json in ['n_layers']" in stale_message(copy_of_fixture)
