"""config.json -> Config: field values, defaults as transformers 4.57.6's configuration classes (every
family), and every error naming the file and the key."""

from __future__ import annotations

import dataclasses
import json

import pytest

import checkpoints
from npbert.config import Config, ConfigError
from npbert.families import FAMILIES


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
    assert (config.vocab_size, config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (
        28996,
        768,
        6,
        12,
        3072,
    )
    assert config.max_position_embeddings == 512 and config.sinusoidal_pos_embds is True
    assert config.head_dim == 64 and config.layer_norm_eps == 1e-12 and config.pad_token_id == 0


def test_config_is_frozen(tmp_path):
    config = Config.from_file(write_config(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 1


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_missing_keys_take_transformers_defaults(model_type):
    transformers = pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
    reference = transformers.AutoConfig.for_model(model_type)
    config = Config.from_dict({"model_type": model_type})
    names, compared = FAMILIES[model_type].config_names, []
    for field in dataclasses.fields(Config):
        key = names.get(field.name, field.name)
        if model_type == "distilbert" and key == "layer_norm_eps":
            continue  # hard-coded in modeling_distilbert.py, not a config key
        if hasattr(reference, key):
            expected = getattr(reference, key)
            if key == "pos_att_type" and expected is None:  # DeBERTa: None means no position terms
                expected = ()
            assert getattr(config, field.name) == expected, key
            compared.append(key)
    assert len(compared) >= 10


def test_other_families_read_their_own_key_names(tmp_path):
    d = dict(
        model_type="albert",
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=96,
        hidden_act="gelu_new",
        embedding_size=16,
        num_hidden_groups=2,
        inner_group_num=1,
        layer_norm_eps=1e-5,
        type_vocab_size=2,
        vocab_size=100,
        max_position_embeddings=64,
        pad_token_id=0,
        dim=999,
    )
    config = Config.from_dict(d)
    assert (config.dim, config.n_layers, config.n_heads, config.hidden_dim, config.embedding_width) == (
        64,
        4,
        4,
        96,
        16,
    )
    assert config.layer_norm_eps == 1e-5 and config.activation == "gelu_new" and config.shares_blocks
    assert config.block_order() == (0, 0, 1, 1)  # layer i runs group int(i / (L / G)), as AlbertTransformer
    roberta = Config.from_dict(dict(model_type="roberta", pad_token_id=1, max_position_embeddings=514))
    assert roberta.position_offset == 2 and roberta.max_sequence_length == 512


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dim=768.0), "dim must be an integer, found 768.0"),
        (dict(n_layers=True), "n_layers must be an integer, found True"),
        (dict(n_heads="12"), "n_heads must be an integer, found '12'"),
        (dict(sinusoidal_pos_embds=1), "sinusoidal_pos_embds must be true or false, found 1"),
        (dict(activation=None), "activation must be a string, found None"),
        (
            dict(activation="swish"),
            "activation 'swish' is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)",
        ),
        (
            dict(model_type="xlnet"),
            "model_type 'xlnet' is not supported; npbert runs distilbert, bert, roberta, "
            "xlm-roberta, electra, albert, deberta-v2",
        ),
        (
            dict(model_type="deberta"),
            "model_type 'deberta' is not supported; npbert runs distilbert, bert, "
            "roberta, xlm-roberta, electra, albert, deberta-v2",
        ),
        (
            dict(model_type="deberta-v2", conv_kernel_size=3),
            "conv_kernel_size 3 (the ConvLayer of DeBERTa-v2 xlarge/xxlarge) is not supported",
        ),
        (
            dict(model_type="bert", position_embedding_type="relative_key"),
            "position_embedding_type 'relative_key' is not supported (only 'absolute')",
        ),
        (
            dict(model_type="bert", hidden_act="gelu_fast"),
            "hidden_act 'gelu_fast' is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)",
        ),
        (dict(model_type="bert", hidden_size=768.5), "hidden_size must be an integer, found 768.5"),
        (dict(model_type="bert", layer_norm_eps="small"), "layer_norm_eps must be a positive number, found 'small'"),
        (dict(n_heads=7), "dim 768 is not divisible by n_heads 7"),
        (dict(hidden_dim=0), "hidden_dim must be positive, found 0"),
        (dict(n_layers=-1), "n_layers must be positive, found -1"),
        (dict(pad_token_id=28996), "pad_token_id 28996 is outside the vocabulary [0, 28996)"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, changes, message):
    path = write_config(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        Config.from_file(path)
    assert str(e.value) == f"{path}: {message}"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: config\.json not found"):
        Config.from_file(tmp_path / "config.json")


HUGE = "9" * 5000  # over Python's 4300-digit limit for int("..."): json.loads fails without naming the key


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"dim": 768,', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        ("", "not valid JSON"),
        (
            '{"model_type": "bert", "hidden_size": %s}' % HUGE,
            "hidden_size is an integer of 5000 digits, too large for any setting",
        ),
        (
            '{"dim": 768, "task_specific_params": {"qa": {"beams": [1, -%s]}}}' % HUGE,
            "task_specific_params.qa.beams[1] is an integer of 5000 digits, too large for any setting",
        ),
        ('{"dim": %s}' % ("1" * 4300), "dim is an integer of 4300 digits, too large for any setting"),  # int() reads it
        (
            '{"dim": 768, "vocab_size": %d}' % (1 << 63),
            "vocab_size is an integer of 19 digits, too large for any setting",
        ),
    ],
)
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
