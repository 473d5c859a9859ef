"""The strict loader for every family, on checkpoints transformers itself saved (the stored reference
fixtures, tests/fixtures/reference/<model_type>/, so no torch is needed): each family's key names, the
errors that name the file, the tensor, the expected and the found, legacy names, the pooler, and dispatch
on model_type."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import npbert
import npbert.audit
from npbert.config import ConfigError
from npbert.weights import WeightsError

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir())
PREFIX = {
    "distilbert": "distilbert.",
    "bert": "bert.",
    "roberta": "roberta.",
    "xlm-roberta": "roberta.",
    "electra": "electra.",
    "albert": "albert.",
    "deberta-v2": "deberta.",
}  # transformers' base_model_prefix, read off the saved keys


@pytest.fixture(params=FAMILIES)
def family_folder(request, tmp_path):
    folder = Path(shutil.copytree(FIXTURES / request.param, tmp_path / request.param))
    for name in ("reference.safetensors", "reference.json"):
        (folder / name).unlink()
    return request.param, folder


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def outputs(folder, cls=npbert.AutoModelForQuestionAnswering):
    ids = np.array([[5, 9, 3, 7, 11, 2]])
    return cls.from_pretrained(folder)(ids, output_hidden_states=True)


def load_error(folder, cls=npbert.AutoModelForQuestionAnswering) -> str:
    with pytest.raises((WeightsError, ConfigError, ValueError)) as e:
        cls.from_pretrained(folder)
    return str(e.value)


def test_fixtures_cover_every_family():
    assert FAMILIES == sorted(npbert.SUPPORTED_MODEL_TYPES)


def test_keys_are_the_familys_own(family_folder):
    model_type, folder = family_folder
    keys = set(weights(folder))
    expected = set(npbert.weights.expected_shapes(npbert.Config.from_file(folder / "config.json")))
    assert keys == expected
    assert all(k.startswith(PREFIX[model_type]) or k.startswith("qa_outputs.") for k in keys)


def test_missing_tensor_is_named(family_folder):
    _, folder = family_folder
    arrays = weights(folder)
    victim = sorted(k for k in arrays if ".1." in k or "layer_groups.1" in k)[0]
    del arrays[victim]
    save_file(arrays, str(folder / "model.safetensors"))
    message = load_error(folder)
    assert message.startswith(f"{folder / 'model.safetensors'}: missing tensor(s) {victim}")


def test_unexpected_tensor_is_named(family_folder):
    model_type, folder = family_folder
    arrays = weights(folder)
    arrays[PREFIX[model_type] + "encoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(arrays, str(folder / "model.safetensors"))
    assert f"unexpected tensor(s) {PREFIX[model_type]}encoder.extra.weight" in load_error(folder)


def test_wrong_shape_names_tensor_expected_and_found(family_folder):
    _, folder = family_folder
    arrays = weights(folder)
    arrays["qa_outputs.weight"] = np.zeros((3, arrays["qa_outputs.weight"].shape[1]), np.float32)
    save_file(arrays, str(folder / "model.safetensors"))
    D = arrays["qa_outputs.weight"].shape[1]
    assert f"tensor qa_outputs.weight: expected shape [2, {D}] (from config.json), found [3, {D}]" in load_error(folder)


def test_pickles_only_is_refused_with_the_conversion(family_folder):
    _, folder = family_folder
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not opened")
    message = load_error(folder)
    assert "npbert never opens pickled" in message and "save_pretrained" in message and "\n" not in message


def test_encoder_loads_from_a_qa_checkpoint(family_folder):
    _, folder = family_folder
    qa = outputs(folder)
    encoder = outputs(folder, npbert.AutoModel)
    np.testing.assert_array_equal(encoder.last_hidden_state, qa.hidden_states[-1])


def test_a_pooler_is_ignored_and_audit_says_so(family_folder):
    model_type, folder = family_folder
    if model_type == "distilbert":
        pytest.skip("DistilBERT has no pooler")
    before = outputs(folder)
    arrays = weights(folder)
    D = arrays["qa_outputs.weight"].shape[1]
    names = ("pooler.weight", "pooler.bias") if model_type == "albert" else ("pooler.dense.weight", "pooler.dense.bias")
    arrays[PREFIX[model_type] + names[0]] = np.ones((D, D), np.float32)
    arrays[PREFIX[model_type] + names[1]] = np.ones(D, np.float32)
    save_file(arrays, str(folder / "model.safetensors"))
    np.testing.assert_array_equal(outputs(folder).start_logits, before.start_logits)
    key_check = npbert.audit.audit(folder)["checks"][0]
    assert key_check["status"] == "ok" and "the pooler is unused" in key_check["detail"]


def test_legacy_gamma_beta_names_load_as_weight_and_bias(family_folder):
    model_type, folder = family_folder
    before = outputs(folder)
    arrays = weights(folder)
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in arrays.items()
    }
    if renamed.keys() == arrays.keys():
        pytest.skip(f"{model_type} has no tensors named LayerNorm.*")
    save_file(renamed, str(folder / "model.safetensors"))
    np.testing.assert_array_equal(outputs(folder).start_logits, before.start_logits)


@pytest.mark.parametrize("model_type", ["funnel", "xlnet", "t5"])
def test_unsupported_model_type_is_one_line_naming_it(tmp_path, model_type):
    folder = Path(shutil.copytree(FIXTURES / "bert", tmp_path / "m"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    message = load_error(folder)
    assert message == (
        f"{folder / 'config.json'}: model_type {model_type!r} is not supported; npbert runs "
        f"{', '.join(npbert.SUPPORTED_MODEL_TYPES)}"
    )


def test_cli_reports_an_unsupported_model_type_in_one_line(tmp_path):
    folder = Path(shutil.copytree(FIXTURES / "bert", tmp_path / "m"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "funnel"}))
    proc = subprocess.run(
        [sys.executable, "-m", "npbert", "ask", "--model", str(folder), "-q", "Who?", "-c", "Me."],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model_type 'funnel' is not supported" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
