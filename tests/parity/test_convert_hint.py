"""A folder holding only `pytorch_model.bin`: npbert refuses it (it never unpickles) and its error gives a
conversion command. Running that command, as printed, makes a folder npbert loads, with the same outputs
as transformers."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import npbert
from npbert.weights import WeightsError
from parity_helpers import assert_close, compare, right_padded, transformers_checkpoint, transformers_outputs

pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")


def test_the_printed_conversion_command_works(tmp_path):
    folder, torch_model = transformers_checkpoint(
        tmp_path / "ckpt",
        seed=3,
        vocab_size=40,
        dim=8,
        n_heads=2,
        hidden_dim=12,
        n_layers=1,
        max_position_embeddings=16,
    )
    (folder / "model.safetensors").unlink()
    torch_model.save_pretrained(folder, safe_serialization=False)  # the pickled pytorch_model.bin only
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    with pytest.raises(WeightsError) as e:
        npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    command = re.search(r'python -c "(.*)"$', str(e.value)).group(1)
    subprocess.run([sys.executable, "-c", command], check=True, capture_output=True, timeout=600)
    ids, mask = right_padded(np.random.default_rng(0), [16, 5], 40)
    ours = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)(ids, attention_mask=mask)
    assert_close(
        compare(ours, transformers_outputs(torch_model, ids, mask, attentions=False), mask.astype(bool)),
        {"logits": 1e-5},
        "after the printed conversion",
    )
