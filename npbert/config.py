"""The model configuration, read from a checkpoint's `config.json`.

Follows transformers 4.57.6 `models/distilbert/configuration_distilbert.py`: the same field names and
defaults. Only what the forward pass needs is kept; training-only keys (dropouts, initializer range)
and legacy keys (`tie_weights_`, `output_past`) are read past without complaint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that npbert cannot run, with the file and the offending key named."""


@dataclass(frozen=True)
class Config:
    vocab_size: int = 30522
    dim: int = 768  # D
    n_layers: int = 6
    n_heads: int = 12  # H
    hidden_dim: int = 3072  # F, the FFN width
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    activation: str = "gelu"
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12  # hard-coded in transformers' DistilBERT, not a config key there

    @property
    def head_dim(self) -> int:  # Dh
        return self.dim // self.n_heads

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
        model_type = d.get("model_type", "distilbert")
        if model_type != "distilbert":
            raise ConfigError(f"{source}: model_type is {model_type!r}; npbert runs 'distilbert' checkpoints only")
        kwargs = {}
        for name, default in cls.__dataclass_fields__.items():
            if name == "layer_norm_eps" or name not in d:
                continue
            value = d[name]
            expected = type(default.default)
            if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{source}: {name} must be an integer, found {value!r}")
            if expected is bool and not isinstance(value, bool):
                raise ConfigError(f"{source}: {name} must be true or false, found {value!r}")
            if expected is str and not isinstance(value, str):
                raise ConfigError(f"{source}: {name} must be a string, found {value!r}")
            kwargs[name] = value
        config = cls(**kwargs)
        config._check(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config.json not found")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def _check(self, source: str) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{source}: {name} must be positive, found {getattr(self, name)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"{source}: pad_token_id {self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.dim % self.n_heads:
            raise ConfigError(f"{source}: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.activation != "gelu":
            raise ConfigError(f"{source}: activation {self.activation!r} is not supported (only 'gelu')")
