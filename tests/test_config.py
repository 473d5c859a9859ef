"""config.json -> Config: field values, defaults as transformers 4.57.6 `DistilBertConfig`, and every
error naming the file and the key."""

from __future__ import annotations

import dataclasses
import json

import pytest

import checkpoints
from npbert.config import Config, ConfigError


def write_config(tmp_path, **changes):
    d = checkpoints.config_dict(sinusoidal_pos_embds=True)
    d.update(changes)
    d = {k: v for k, v in d.items() if v is not ...}  # `key=...` drops a key
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    return path


def test_real_checkpoint_config_reads_every_field(tmp_path):
    # config_dict is the real checkpoint's config.json, legacy keys (tie_weights_, output_past) included.
    config = Config.from_file(write_config(tmp_path, output_past=True))
    assert (config.vocab_size, config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (28996, 768, 6, 12, 3072)
    assert config.max_position_embeddings == 512 and config.sinusoidal_pos_embds is True
    assert config.head_dim == 64 and config.layer_norm_eps == 1e-12 and config.pad_token_id == 0


def test_config_is_frozen(tmp_path):
    config = Config.from_file(write_config(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 1


def test_missing_keys_take_transformers_defaults():
    transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
    reference = transformers.DistilBertConfig()
    config = Config.from_dict({})
    for field in dataclasses.fields(Config):
        if field.name != "layer_norm_eps":  # hard-coded in modeling_distilbert.py, not a config key
            assert getattr(config, field.name) == getattr(reference, field.name), field.name


@pytest.mark.parametrize("changes, message", [
    (dict(dim=768.0), "dim must be an integer, found 768.0"),
    (dict(n_layers=True), "n_layers must be an integer, found True"),
    (dict(n_heads="12"), "n_heads must be an integer, found '12'"),
    (dict(sinusoidal_pos_embds=1), "sinusoidal_pos_embds must be true or false, found 1"),
    (dict(activation=None), "activation must be a string, found None"),
    (dict(activation="relu"), "activation 'relu' is not supported (only 'gelu')"),
    (dict(model_type="bert"), "model_type is 'bert'; npbert runs 'distilbert' checkpoints only"),
    (dict(n_heads=7), "dim 768 is not divisible by n_heads 7"),
    (dict(hidden_dim=0), "hidden_dim must be positive, found 0"),
    (dict(n_layers=-1), "n_layers must be positive, found -1"),
    (dict(pad_token_id=28996), "pad_token_id 28996 is outside the vocabulary [0, 28996)"),
])
def test_bad_values_name_file_and_key(tmp_path, changes, message):
    path = write_config(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        Config.from_file(path)
    assert str(e.value) == f"{path}: {message}"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: config\.json not found"):
        Config.from_file(tmp_path / "config.json")


@pytest.mark.parametrize("text, message", [
    ('{"dim": 768,', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    ("", "not valid JSON"),
])
def test_unreadable_json(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        Config.from_file(path)
    assert str(e.value).startswith(f"{path}: {message}")


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_file(path)
