"""Session fixtures for the parity tests: every test in this folder compares npbert with transformers
4.57.6 in the same process; without the `parity` extra (transformers + torch) they skip with a reason."""

from __future__ import annotations

import copy

import pytest

from parity_helpers import FULL_SIZE, transformers_checkpoint


@pytest.fixture(scope="session")
def full_transformers(tmp_path_factory):
    """A full-size (28996 x 768, 6 layers, sinusoidal table stored) checkpoint saved by transformers'
    save_pretrained, made once per session, with its float32 torch model."""
    return transformers_checkpoint(tmp_path_factory.mktemp("full_transformers"), seed=0, **FULL_SIZE)


@pytest.fixture(scope="session")
def full_transformers_float64(full_transformers):
    return copy.deepcopy(full_transformers[1]).double()
