"""The forward's and backward's math, knowing nothing of checkpoints: plain-numpy references, kernels that match them.

    reference.py  every operation in plain numpy: the readable math (`<name>_numpy`)
    numba.py      the same operations, the same signatures, as numba kernels (`<name>_numba`)
    gemm.py       linear(x) = x @ W.T + b in every weight layout, and the AVX-512 panel GEMM
    parallel.py   a kernel's work split over npbert's worker threads (workers.py)

`select()` returns one set of the operations as `Ops`; `NPBERT_KERNELS=numpy` or `select("numpy")` picks
the references.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

# threads first: it sets OpenBLAS's thread timeout, which OpenBLAS reads when numpy is first imported.
from .. import threads  # noqa: F401

# isort: split
# cache_root before the first kernel is decorated: numba picks its cache folder then.
from .. import cache_root

cache_root.use_for_numba()

from . import numba as _numba, reference as _reference  # noqa: E402


class Ops(NamedTuple):
    name: str
    attention: Callable
    bias_gelu: Callable
    residual_layernorm: Callable
    bias_gelu_tanh: Callable
    bias_relu: Callable
    disentangled_attention: Callable  # DeBERTa's
    # The backward of each (model.py's backward functions call them), from what the forward's tap kept.
    attention_backward: Callable
    bias_gelu_backward: Callable
    residual_layernorm_backward: Callable
    bias_gelu_tanh_backward: Callable
    bias_relu_backward: Callable
    disentangled_attention_backward: Callable  # DeBERTa's

    def bias_activation(self, name: str) -> Callable:
        """The bias + activation kernel for a families.ACTIVATIONS value ("gelu", "gelu_tanh", "relu")."""
        return getattr(self, "bias_" + name)

    def bias_activation_backward(self, name: str) -> Callable:
        """The backward of `bias_activation(name)`: (d_out, pre-activation) -> d pre-activation."""
        return getattr(self, f"bias_{name}_backward")


NUMPY = Ops(
    "numpy",
    _reference.attention_numpy,
    _reference.bias_gelu_numpy,
    _reference.residual_layernorm_numpy,
    _reference.bias_gelu_tanh_numpy,
    _reference.bias_relu_numpy,
    _reference.disentangled_attention_numpy,
    _reference.attention_backward_numpy,
    _reference.bias_gelu_backward_numpy,
    _reference.residual_layernorm_backward_numpy,
    _reference.bias_gelu_tanh_backward_numpy,
    _reference.bias_relu_backward_numpy,
    _reference.disentangled_attention_backward_numpy,
)
NUMBA = Ops(
    "numba",
    _numba.attention_numba,
    _numba.bias_gelu_numba,
    _numba.residual_layernorm_numba,
    _numba.bias_gelu_tanh_numba,
    _numba.bias_relu_numba,
    _numba.disentangled_attention_numba,
    _numba.attention_backward_numba,
    _numba.bias_gelu_backward_numba,
    _numba.residual_layernorm_backward_numba,
    _numba.bias_gelu_tanh_backward_numba,
    _numba.bias_relu_backward_numba,
    _numba.disentangled_attention_backward_numba,
)
CHOICES = {"numpy": NUMPY, "numba": NUMBA}


def select(name: str | None = None) -> Ops:
    """The kernels to run: `name`, else $NPBERT_KERNELS, else numba."""
    name = name or os.environ.get("NPBERT_KERNELS") or "numba"
    if name not in CHOICES:
        raise ValueError(f"unknown kernels {name!r}: choose one of {', '.join(CHOICES)} (NPBERT_KERNELS)")
    return CHOICES[name]
