"""Sinusoidal position tables (`sinusoidal_pos_embds: true`, as in the real checkpoint): the table
transformers makes is the formula in `weights.sinusoidal_table`, and both transformers and npbert run on
the table stored in the file, whatever the flag says."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import npbert
from npbert.weights import sinusoidal_table
from parity_helpers import assert_close, compare, right_padded, transformers_checkpoint, transformers_outputs

pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

KEY = "distilbert.embeddings.position_embeddings.weight"


@pytest.mark.parametrize("n_pos, dim", [(512, 768), (33, 13), (7, 2)])
def test_formula_matches_transformers_create_sinusoidal_embeddings(n_pos, dim):
    import torch
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    out = torch.empty(n_pos, dim)
    create_sinusoidal_embeddings(n_pos, dim, out)
    np.testing.assert_array_equal(sinusoidal_table(n_pos, dim).astype(np.float32), out.numpy())


def test_saved_sinusoidal_table_is_the_formula(tmp_path):
    folder, _ = transformers_checkpoint(
        tmp_path,
        seed=1,
        vocab_size=50,
        dim=16,
        n_heads=2,
        hidden_dim=20,
        n_layers=1,
        max_position_embeddings=40,
        sinusoidal_pos_embds=True,
    )
    stored = load_file(str(folder / "model.safetensors"))[KEY]
    np.testing.assert_array_equal(stored, sinusoidal_table(40, 16).astype(np.float32))
    loaded = npbert.DistilBertForQuestionAnswering.from_pretrained(folder).weights
    np.testing.assert_array_equal(loaded.encoder.embeddings.position_embeddings.weight, stored)


def test_stored_table_wins_over_the_flag(tmp_path):
    import transformers

    folder, _ = transformers_checkpoint(
        tmp_path,
        seed=2,
        vocab_size=50,
        dim=16,
        n_heads=2,
        hidden_dim=20,
        n_layers=1,
        max_position_embeddings=40,
        sinusoidal_pos_embds=True,
    )
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[KEY] = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    np.testing.assert_array_equal(model.weights.encoder.embeddings.position_embeddings.weight, tensors[KEY])
    torch_model = transformers.DistilBertForQuestionAnswering.from_pretrained(folder, attn_implementation="eager")
    ids, mask = right_padded(np.random.default_rng(1), [40, 9], 50)
    rows = compare(
        model(ids, attention_mask=mask, output_hidden_states=True),
        transformers_outputs(torch_model.eval(), ids, mask, attentions=False),
        mask.astype(bool),
    )
    assert_close(rows, {"embeddings": 1e-5, "hidden": 1e-5, "logits": 1e-5}, "stored (non-sinusoidal) table")
