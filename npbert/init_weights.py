"""A question-answering model with random weights, to train from scratch (`npbert init-model`).

The weights are drawn as transformers 4.57.6's `_init_weights` draws them (modeling_distilbert.py and
modeling_bert.py, `PreTrainedModel._init_weights`, the same for both families): every Linear and Embedding
weight from normal(0, initializer_range), every bias 0, LayerNorm weights 1 and biases 0, and the word
embeddings' padding row (`padding_idx = pad_token_id`) 0; the position and token-type tables have no padding
row. The numbers come from numpy's seeded generator (not torch's), so they are not transformers' numbers,
only drawn the same way. The folder holds what `save_pretrained` writes (config.json as transformers writes
it for the family, model.safetensors in float32) and the tokenizer's files, copied: it loads in npbert and in
transformers' `from_pretrained`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from . import hub
from .config import Config
from .tokenizer import Tokenizer
from .weights import canonical_keys, expected_shapes

FAMILIES = ("distilbert", "bert")
INITIALIZER_RANGE = 0.02


def config_dict(
    family: str,
    vocab_size: int,
    n_layers: int = 2,
    dim: int = 128,
    n_heads: int = 2,
    hidden_dim: int | None = None,
    max_position_embeddings: int = 512,
    pad_token_id: int = 0,
    initializer_range: float = INITIALIZER_RANGE,
) -> dict:
    """config.json of a question-answering model of `family`, with the family's own key names and the
    defaults of its transformers config class (dropout 0.1, GELU, initializer_range 0.02)."""
    hidden_dim = 4 * dim if hidden_dim is None else hidden_dim
    common = {"initializer_range": initializer_range, "max_position_embeddings": max_position_embeddings}
    common.update(pad_token_id=pad_token_id, transformers_version="4.57.6", torch_dtype="float32")
    common["vocab_size"] = vocab_size
    if family == "distilbert":
        return {
            **common,
            "architectures": ["DistilBertForQuestionAnswering"],
            "model_type": "distilbert",
            "activation": "gelu",
            "attention_dropout": 0.1,
            "dim": dim,
            "dropout": 0.1,
            "hidden_dim": hidden_dim,
            "n_heads": n_heads,
            "n_layers": n_layers,
            "qa_dropout": 0.1,
            "seq_classif_dropout": 0.2,
            "sinusoidal_pos_embds": False,
            "tie_weights_": True,
        }
    if family == "bert":
        return {
            **common,
            "architectures": ["BertForQuestionAnswering"],
            "model_type": "bert",
            "attention_probs_dropout_prob": 0.1,
            "classifier_dropout": None,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": dim,
            "intermediate_size": hidden_dim,
            "layer_norm_eps": 1e-12,
            "num_attention_heads": n_heads,
            "num_hidden_layers": n_layers,
            "position_embedding_type": "absolute",
            "type_vocab_size": 2,
            "use_cache": True,
        }
    raise ValueError(f"family must be one of {', '.join(FAMILIES)}, found {family!r}")


def init_weights(config: Config, seed: int = 0, initializer_range: float = INITIALIZER_RANGE) -> dict:
    """Every tensor of the question-answering model, by checkpoint key, float32, drawn as `_init_weights`
    does (see the module docstring) from numpy's generator seeded with `seed`, in the checkpoint's key order."""
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(config)
    out = {}
    for name, key in canonical_keys(config).items():
        shape = shapes[key]
        if name.lower().endswith("norm.weight"):  # LayerNorm (embeddings.LayerNorm, *_layer_norm)
            tensor = np.ones(shape)
        elif name.endswith(".bias"):
            tensor = np.zeros(shape)
        else:  # a Linear's or an Embedding's weight
            tensor = rng.normal(0.0, initializer_range, shape)
        out[key] = tensor.astype(np.float32)
    out[canonical_keys(config)["embeddings.word_embeddings.weight"]][config.pad_token_id] = 0.0
    return out


def write_random_model(
    out: Path,
    tokenizer: Path,
    family: str = "distilbert",
    n_layers: int = 2,
    dim: int = 128,
    n_heads: int = 2,
    hidden_dim: int | None = None,
    seed: int = 0,
    initializer_range: float = INITIALIZER_RANGE,
) -> Path:
    """A checkpoint folder `out` with random weights (init_weights) sized to the tokenizer in the folder
    `tokenizer` (its vocabulary, its padding token's id, its model_max_length as the position table's
    length when it has one up to 512), and the tokenizer's files copied. Returns `out`."""
    from safetensors.numpy import save_file

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, found {family!r}")
    if dim % n_heads:
        raise ValueError(f"the width ({dim}) must be a multiple of the heads ({n_heads})")
    tokenizer = Path(tokenizer)
    tok = Tokenizer.from_folder(tokenizer, family)
    pad = tok.pad_token_id  # the Tokenizer refuses a folder without one
    positions = tok.model_max_length if isinstance(tok.model_max_length, int) and tok.model_max_length <= 512 else 512
    settings = config_dict(
        family, tok.backend.get_vocab_size(), n_layers, dim, n_heads, hidden_dim, positions, pad, initializer_range
    )
    config = Config.from_dict(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(init_weights(config, seed, initializer_range), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in hub.CHECKPOINT_FILES:
        if name not in ("config.json", "model.safetensors") and (tokenizer / name).is_file():
            shutil.copyfile(tokenizer / name, out / name)
    return out
