"""The strict safetensors loader: every error with its message (file, tensor, expected, found), the dtype
handling (float16 upcast, bfloat16 exact widening, float64 audit mode), and that float32 weights are
memory-mapped views of the file, not copies.

Broken files are written here byte by byte (8-byte little-endian header length, JSON header, data), as
the safetensors format defines them, so no test depends on the loader to make its own input."""

from __future__ import annotations

import json
import math
import mmap
import os
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import checkpoints
import npbert
from npbert import weights as W
from npbert.weights import WeightsError

SMALL = dict(vocab_size=50, dim=8, n_layers=2, n_heads=2, hidden_dim=12, max_position_embeddings=16)
_NAMES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
}


@pytest.fixture
def folder(tmp_path):
    return checkpoints.write_checkpoint(tmp_path / "ckpt", seed=3, vocab=[], tokenizer=False, **SMALL)


def tensors_of(folder):
    return load_file(str(folder / "model.safetensors"))


def write_raw(path, tensors: dict, pad_header_to: int = 8, header_len: int | None = None, extra_header=None):
    """A safetensors file written by hand. tensors: name -> (dtype name, shape, raw bytes)."""
    header, data = dict(extra_header or {}), b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_header_to)
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


def write_arrays(path, arrays: dict, **kw):
    write_raw(path, {k: (_NAMES[a.dtype], a.shape, a.tobytes()) for k, a in arrays.items()}, **kw)


def load(folder, cls=npbert.DistilBertForQuestionAnswering, **kw):
    return cls.from_pretrained(folder, **kw)


def load_error(folder, cls=npbert.DistilBertForQuestionAnswering, **kw) -> str:
    with pytest.raises(WeightsError) as e:
        cls.from_pretrained(folder, **kw)
    return str(e.value)


def file_mapping(a):
    """The mmap.mmap an array is a view of, or None if it owns its data (a copy)."""
    while isinstance(a, np.ndarray):
        a = a.base
    return a if isinstance(a, mmap.mmap) else None


# --- what loads, and how --------------------------------------------------------------------------------


def test_tree_mirrors_checkpoint_keys(folder):
    stored, model = tensors_of(folder), load(folder)
    tree = model.weights
    assert len(stored) == len(W.expected_shapes(model.config)) == 4 + 16 * 2 + 2
    names = {key: name for name, key in W.canonical_keys(model.config).items()}
    for key, value in stored.items():
        # DistilBERT's keys are the canonical names, under `distilbert.` (the tree's `encoder`).
        assert names[key] == key.removeprefix("distilbert.")
        node = tree if key.startswith("qa_outputs") else tree.encoder
        for part in names[key].split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        np.testing.assert_array_equal(node, value, err_msg=key)


def test_float32_weights_are_memory_mapped_views(folder):
    # The loader copies nothing; the model's load-time re-layout then copies the linear layers' matrices
    # (layout.relayout_for_speed) and keeps the embeddings mapped.
    tree = npbert.weights.load(folder, npbert.Config.from_file(folder / "config.json"))
    model = load(folder).weights
    assert file_mapping(model.encoder.embeddings.word_embeddings.weight) is not None
    assert file_mapping(model.encoder.transformer.layer[1].ffn.lin2.weight) is None
    path = str(folder / "model.safetensors")
    arrays = [
        tree.qa_outputs.weight,
        tree.encoder.embeddings.word_embeddings.weight,
        tree.encoder.transformer.layer[1].ffn.lin2.weight,
    ]
    for a in arrays:
        assert file_mapping(a) is not None, "float32 weight was copied, not mapped"
        assert isinstance(a, np.memmap) and str(a.filename) == str(path) and not a.flags.writeable
    # All of them are views of one mapping of the file.
    assert len({id(file_mapping(a)) for a in arrays}) == 1
    whole = np.frombuffer(file_mapping(arrays[0]), dtype=np.uint8)
    assert all(np.shares_memory(a, whole) for a in arrays)


def test_float16_is_upcast_exactly(folder):
    half = {k: v.astype(np.float16) for k, v in tensors_of(folder).items()}
    save_file(half, str(folder / "model.safetensors"))
    tree = load(folder).weights
    w = tree.encoder.transformer.layer[0].attention.q_lin.weight
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, half["distilbert.transformer.layer.0.attention.q_lin.weight"].astype(np.float32))


def test_bfloat16_is_widened_exactly(folder):
    f32 = tensors_of(folder)
    # bfloat16 is the top 16 bits of a float32; truncating gives exactly representable bfloat16 values.
    top = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in f32.items()}
    write_raw(folder / "model.safetensors", {k: ("BF16", v.shape, v.tobytes()) for k, v in top.items()})
    for dtype in (np.float32, np.float64):
        tree = load(folder, dtype=dtype).weights
        key = "distilbert.transformer.layer.1.ffn.lin1.weight"
        expected = (top[key].astype(np.uint32) << 16).view(np.float32)
        got = tree.encoder.transformer.layer[1].ffn.lin1.weight
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, expected.astype(dtype))
        # and close to the float32 original (bfloat16 keeps 8 significant bits)
        np.testing.assert_allclose(got, f32[key], rtol=2**-7)


def test_bfloat16_matches_torch_widening(folder):
    torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
    from safetensors.torch import save_file as save_torch

    f32 = tensors_of(folder)
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in f32.items()}, str(folder / "model.safetensors"))
    got = load(folder).weights.qa_outputs.weight
    expected = torch.from_numpy(f32["qa_outputs.weight"]).to(torch.bfloat16).float().numpy()  # rounds to nearest
    np.testing.assert_array_equal(got, expected)


def test_float64_mode_runs_everything_in_float64(folder):
    model32, model64 = load(folder), load(folder, dtype=np.float64)
    leaves = [a for a in _leaves(model64.weights)]
    assert all(a.dtype == np.float64 for a in leaves)
    np.testing.assert_array_equal(
        model64.weights.qa_outputs.weight, model32.weights.qa_outputs.weight.astype(np.float64)
    )
    ids = np.array([[1, 5, 7, 9, 2, 0]])
    out = model64(ids, attention_mask=[[1, 1, 1, 1, 1, 0]], output_hidden_states=True)
    assert out.start_logits.dtype == np.float64 and all(h.dtype == np.float64 for h in out.hidden_states)
    np.testing.assert_allclose(
        out.start_logits, model32(ids, attention_mask=[[1, 1, 1, 1, 1, 0]]).start_logits, atol=1e-5
    )


def test_float64_file_in_float64_mode_is_mapped(folder):
    save_file({k: v.astype(np.float64) for k, v in tensors_of(folder).items()}, str(folder / "model.safetensors"))
    # The embeddings: the model keeps them as loaded (its re-layout copies only the linear layers).
    w64 = load(folder, dtype=np.float64).weights.encoder.embeddings.word_embeddings.weight
    assert file_mapping(w64) is not None
    w32 = load(folder).weights.encoder.embeddings.word_embeddings.weight  # float64 file, float32 model: rounded once
    assert w32.dtype == np.float32 and file_mapping(w32) is None
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_unaligned_tensor_is_copied_and_correct(folder):
    arrays = tensors_of(folder)
    # A 1-byte header padding puts every float32 at an odd address; views would be misaligned.
    write_arrays(folder / "model.safetensors", arrays, pad_header_to=1, extra_header={"__metadata__": {"x": "y" * 2}})
    tree = load(folder).weights
    np.testing.assert_array_equal(tree.qa_outputs.bias, arrays["qa_outputs.bias"])
    assert tree.qa_outputs.bias.flags.aligned


def test_ignorable_position_ids_key_is_accepted(folder):
    arrays = tensors_of(folder)
    arrays["distilbert.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    save_file(arrays, str(folder / "model.safetensors"))
    load(folder)


def test_encoder_loads_from_qa_and_encoder_only_checkpoints(folder, tmp_path):
    qa_model = load(folder)
    ids = np.array([[3, 4, 5, 6]])
    expected = qa_model._encode(ids, None, None, False, False)[0]
    np.testing.assert_array_equal(load(folder, npbert.DistilBertModel)(ids).last_hidden_state, expected)
    bare = {k.removeprefix("distilbert."): v for k, v in tensors_of(folder).items() if not k.startswith("qa_outputs")}
    save_file(bare, str(folder / "model.safetensors"))
    np.testing.assert_array_equal(load(folder, npbert.DistilBertModel)(ids).last_hidden_state, expected)
    assert "an encoder-only checkpoint" in load_error(folder) and "npbert.AutoModel" in load_error(folder)


def _leaves(tree):
    for node in tree:
        if isinstance(node, np.ndarray):
            yield node
        elif node is not None:  # optional parts a family lacks (token types, a projection)
            yield from _leaves(node)


# --- errors, each with its message ----------------------------------------------------------------------


def test_missing_weights_file(folder):
    (folder / "model.safetensors").unlink()
    assert load_error(folder) == f"{folder / 'model.safetensors'}: weights file not found"


def test_pytorch_bin_only_folder_says_how_to_convert(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    message = load_error(folder)
    assert message.startswith(f"{folder / 'model.safetensors'}: not found; the folder holds only pytorch_model.bin")
    assert "never opens pickled" in message
    assert f"M.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r}, safe_serialization=True)" in message


def test_sharded_safetensors_folder(folder):
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text("{}")
    assert "sharded safetensors checkpoints are not supported" in load_error(folder)


def test_file_too_short_for_a_header(folder):
    (folder / "model.safetensors").write_bytes(b"\x10\x00")
    assert (
        load_error(folder) == f"{folder / 'model.safetensors'}: truncated: 2 bytes, too short for a safetensors header"
    )


def test_truncated_data(folder):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    message = load_error(folder)
    assert message.startswith(f"{path}: truncated: tensor ")
    assert f"which has only {len(raw) - 100 - 8 - struct.unpack('<Q', raw[:8])[0]} bytes" in message


def test_truncated_inside_header(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    assert "bad header: header length" in load_error(folder) and "(truncated, or not a safetensors file)" in load_error(
        folder
    )


def test_not_a_safetensors_file(folder):
    path = folder / "model.safetensors"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 200)  # a zip (what torch.save writes) renamed
    assert load_error(folder).startswith(f"{path}: bad header: header length ")


def test_corrupt_header_json(folder):
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8:12] = b"\xff\x00{]"
    path.write_bytes(bytes(raw))
    assert load_error(folder).startswith(f"{path}: bad header: not valid JSON")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [2]}, "entry for tensor 'qa_outputs.bias' is malformed"),
        ({"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}, "entry for tensor 'qa_outputs.bias' is malformed"),
        ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, "tensor qa_outputs.bias: unknown dtype 'Q4'"),
        ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, "tensor qa_outputs.bias: unknown dtype ['F32']"),
        (
            {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8]},
            "tensor qa_outputs.bias has shape [2], offsets ['0', 8]",
        ),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "tensor qa_outputs.bias has shape [-2]"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "tensor qa_outputs.bias has shape [True]"),
        (
            {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
            "qa_outputs.bias (F32 [3]) needs 12 bytes, its offsets span 8",
        ),
    ],
)
def test_bad_header_entries(folder, entry, message):
    arrays = tensors_of(folder)
    path = folder / "model.safetensors"
    write_arrays(
        path, {k: v for k, v in arrays.items() if k != "qa_outputs.bias"}, extra_header={"qa_outputs.bias": entry}
    )
    got = load_error(folder)
    assert got.startswith(f"{path}: bad header") and message in got, got


def test_header_not_an_object(folder):
    path = folder / "model.safetensors"
    text = b"[1, 2, 3]"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    assert load_error(folder) == f"{path}: bad header: expected a JSON object, found list"


def test_overlapping_tensors(folder):
    path = folder / "model.safetensors"
    arrays = tensors_of(folder)
    write_arrays(path, arrays)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    header["qa_outputs.bias"]["data_offsets"] = [0, 8]  # on top of the first tensor
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + path.read_bytes()[8 + header_len :])
    message = load_error(folder)
    assert "bad header: tensors" in message and "qa_outputs.bias" in message and "overlap" in message


def test_missing_tensor(folder):
    arrays = tensors_of(folder)
    del arrays["distilbert.transformer.layer.1.ffn.lin2.bias"]
    save_file(arrays, str(folder / "model.safetensors"))
    assert load_error(folder) == (
        f"{folder / 'model.safetensors'}: missing tensor(s) distilbert.transformer.layer.1.ffn.lin2.bias "
        "(expected 38 tensors from config.json, found 37: do config.json and the weights belong to the same checkpoint?)"  # noqa: E501
    )


def test_extra_tensor(folder):
    arrays = tensors_of(folder)
    arrays["classifier.weight"] = np.zeros((3, 8), np.float32)
    save_file(arrays, str(folder / "model.safetensors"))
    assert "unexpected tensor(s) classifier.weight (expected 38 tensors from config.json, found 39" in load_error(
        folder
    )


def test_wrong_shape_names_tensor_expected_and_found(folder):
    arrays = tensors_of(folder)
    arrays["distilbert.transformer.layer.0.attention.k_lin.weight"] = np.zeros((8, 9), np.float32)
    save_file(arrays, str(folder / "model.safetensors"))
    assert load_error(folder) == (
        f"{folder / 'model.safetensors'}: tensor distilbert.transformer.layer.0.attention."
        "k_lin.weight: expected shape [8, 8] (from config.json), found [8, 9]"
    )


def test_integer_tensor_where_a_float_is_expected(folder):
    arrays = tensors_of(folder)
    arrays["qa_outputs.bias"] = np.array([1, 2], np.int64)
    save_file(arrays, str(folder / "model.safetensors"))
    assert load_error(folder).endswith(
        "tensor qa_outputs.bias: expected a float dtype (F32, F16, BF16, F64), found I64"
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_layers=3), "missing tensor(s) distilbert.transformer.layer.2.attention.k_lin.bias"),
        (dict(n_layers=1), "unexpected tensor(s) distilbert.transformer.layer.1.attention.k_lin.bias"),
        (
            dict(vocab_size=51),
            "tensor distilbert.embeddings.word_embeddings.weight: expected shape [51, 8] (from config.json), found [50, 8]",  # noqa: E501
        ),
        (
            dict(hidden_dim=16),
            "tensor distilbert.transformer.layer.0.ffn.lin1.weight: expected shape [16, 8] (from config.json), found [12, 8]",  # noqa: E501
        ),
        (
            dict(max_position_embeddings=512),
            "tensor distilbert.embeddings.position_embeddings.weight: expected shape [512, 8]",
        ),
    ],
)
def test_config_that_does_not_match_the_weights(folder, changes, message):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    assert message in load_error(folder)


def test_bad_config_json_stops_before_the_weights(folder):
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), "n_heads": 3}))
    with pytest.raises(ValueError, match=r"config\.json: dim 8 is not divisible by n_heads 3"):
        load(folder)


# --- sinusoidal position tables (the real checkpoint sets the flag and stores the table) ------------------


@pytest.mark.parametrize("n_pos, dim", [(512, 768), (9, 5)])
def test_sinusoidal_table_is_the_formula(n_pos, dim):
    # The formula of transformers' `create_sinusoidal_embeddings`, written out element by element.
    expected = [
        [
            math.sin(p / 10000 ** (2 * (j // 2) / dim)) if j % 2 == 0 else math.cos(p / 10000 ** (2 * (j // 2) / dim))
            for j in range(dim)
        ]
        for p in range(n_pos)
    ]
    np.testing.assert_allclose(W.sinusoidal_table(n_pos, dim), np.array(expected), rtol=0, atol=1e-12)


def test_loader_uses_the_stored_position_table_even_when_sinusoidal(tmp_path):
    folder = checkpoints.write_checkpoint(
        tmp_path, seed=4, vocab=[], tokenizer=False, sinusoidal_pos_embds=True, **SMALL
    )
    arrays = tensors_of(folder)
    key = "distilbert.embeddings.position_embeddings.weight"
    np.testing.assert_array_equal(arrays[key], W.sinusoidal_table(16, 8).astype(np.float32))  # made by the formula
    arrays[key] = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)  # not the formula
    save_file(arrays, str(folder / "model.safetensors"))
    np.testing.assert_array_equal(load(folder).weights.encoder.embeddings.position_embeddings.weight, arrays[key])


def mapped_rss_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
@pytest.mark.parametrize("cache", ["shared", "private"])
def test_loading_leaves_the_weights_file_out_of_the_process_memory(tmp_path, monkeypatch, cache):
    # load's NaN/Inf check reads every tensor, and the re-layout reads the linears once more (private copies)
    # or maps the cache file instead: either way the file's pages are released after, so the process's
    # peak RSS does not count the whole checkpoint on top of the re-laid weights.
    monkeypatch.setenv("NPBERT_CACHE", str(tmp_path / "cache") if cache == "shared" else str(tmp_path / "not-a-dir"))
    (tmp_path / "not-a-dir").write_text("")  # as a cache folder: unusable, so private copies
    folder = checkpoints.write_checkpoint(
        tmp_path / "c",
        seed=3,
        vocab=[],
        tokenizer=False,
        vocab_size=4000,
        dim=256,
        n_layers=2,
        n_heads=4,
        hidden_dim=1024,
        max_position_embeddings=64,
    )
    weights_file = (folder / "model.safetensors").resolve()
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    model(np.arange(1, 17)[None])
    size_kb = weights_file.stat().st_size // 1024
    assert size_kb > 8000 and mapped_rss_kb(weights_file) < size_kb // 20  # < 5%: a few embedding rows
