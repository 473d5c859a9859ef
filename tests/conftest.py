"""Shared fixtures: test checkpoints (tiny and full-size, made once per session), the shared data
folder, and the hypothesis profiles (CI: derandomized; a clone: random draws; neither keeps an example
database)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints  # noqa: E402

# CI runs fixed (derandomized) examples. A clone's default ("dev") draws at random: a failure only a random
# draw finds is a real bug, fixed and then pinned with @example. Neither profile keeps the .hypothesis/
# example database, so a clone's later runs are not steered by examples an older checkout saved: each
# run is a fresh search. HYPOTHESIS_PROFILE=explore searches longer and keeps failures in .hypothesis/.
settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# Every setting explicit: a profile registered after another is loaded starts from the loaded one.
settings.register_profile(
    "dev",
    derandomize=False,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore", derandomize=False, max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", autouse=True)
def relaid_cache_in_a_temp_dir(tmp_path_factory):
    """The suite's models share re-laid weights through a cache folder of its own (npbert/relaid_cache.py),
    never the user's ~/.cache; subprocesses inherit it. A folder the user set on purpose is kept."""
    if "NPBERT_CACHE" not in os.environ:
        os.environ["NPBERT_CACHE"] = str(tmp_path_factory.mktemp("npbert-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random QA checkpoint (D 32, 2 layers) with the real cased vocabulary when ../shared exists."""
    return checkpoints.write_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1, qa_scale=40.0, **checkpoints.TINY)


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory) -> Path:
    """A full-size random QA checkpoint (28996 x 768, 6 layers, sinusoidal positions as the real one), QA
    head scaled so span scores are spread. Made once per session: ~261 MB in a temp dir."""
    vocab = checkpoints.real_or_generated_vocab()
    if len(vocab) != checkpoints.FULL_SIZE["vocab_size"]:
        vocab = vocab + [f"[extra{i}]" for i in range(checkpoints.FULL_SIZE["vocab_size"] - len(vocab))]
    return checkpoints.write_checkpoint(
        tmp_path_factory.mktemp("full"),
        seed=2,
        qa_scale=12.0,
        vocab=vocab,
        sinusoidal_pos_embds=True,
        **checkpoints.FULL_SIZE,
    )


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    if not checkpoints.SHARED_SQUAD.is_file():
        pytest.skip(f"SQuAD v1.1 dev set not found at {checkpoints.SHARED_SQUAD} (../shared is absent)")
    return checkpoints.SHARED_SQUAD


@pytest.fixture(scope="session")
def shared_vocab() -> Path:
    if not checkpoints.SHARED_VOCAB.is_file():
        pytest.skip(f"bert-base-cased vocabulary not found at {checkpoints.SHARED_VOCAB} (../shared is absent)")
    return checkpoints.SHARED_VOCAB
