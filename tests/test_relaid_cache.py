"""The shared re-laid weights cache (npbert/relaid_cache.py, weights.relayout_for_speed with the weights
file): created once and reused, atomic when two processes start together, keyed by the weights' bytes and
the layout version (never stale), a private copy with one warning line when the cache folder is unusable,
and the same values and outputs as the private-copy path (weights.relayout_for_speed without a file)."""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoints
import npbert
from npbert import relaid_cache
from npbert import weights as W

SMALL = dict(vocab=[], tokenizer=False, vocab_size=40, dim=64, n_layers=2, n_heads=2, hidden_dim=256,
             max_position_embeddings=32)
IDS = np.array([[1, 5, 9, 13, 2, 7, 30, 3], [4, 4, 8, 15, 16, 23, 0, 0]])
MASK = (IDS != 0).astype(np.int64)


@pytest.fixture
def small(tmp_path):
    return checkpoints.write_checkpoint(tmp_path / "ckpt", seed=11, qa_scale=5.0, **SMALL)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NPBERT_CACHE", str(folder))
    return folder / "relaid"


def cache_files(cache):
    return sorted(p.name for p in cache.glob("*.npy"))


def leftovers(cache):
    return sorted(p.name for p in cache.glob("*.tmp"))


def private_model(folder, dtype=np.float32):
    """The reference: the same weights re-laid into private copies (no cache file)."""
    config = npbert.Config.from_file(folder / "config.json")
    return npbert.AutoModelForQuestionAnswering(config, W.load(folder, config, dtype), dtype)


def linears(tree):
    for layer in tree.encoder.transformer.layer:
        yield from (layer.attention.qkv, layer.attention.out_lin, layer.ffn.lin1, layer.ffn.lin2)
    yield tree.qa_outputs


def is_mapped(array) -> bool:
    """True when `array` is a view of a memory-mapped file (the cache), False for a private copy."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    base = root.base.obj if isinstance(root.base, memoryview) else root.base  # np.frombuffer keeps a memoryview
    return isinstance(base, mmap.mmap)


def test_created_once_reused_and_identical_to_private_copies(small, cache, monkeypatch):
    copies = []
    real_copy = W._column_major_copy
    monkeypatch.setattr(W, "_column_major_copy", lambda linears: copies.append(1) or real_copy(linears))
    first = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    [name] = cache_files(cache)
    assert len(copies) == 2 * 4 + 1  # each layer's qkv, out_lin, lin1, lin2 and qa_outputs, copied once to write
    inode = (cache / name).stat().st_ino
    copies.clear()
    second = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    assert copies == [] and cache_files(cache) == [name] and (cache / name).stat().st_ino == inode  # reused
    assert leftovers(cache) == []
    monkeypatch.setattr(W, "_column_major_copy", real_copy)
    reference = private_model(small)
    for model in (first, second):
        for lin, ref in zip(linears(model.weights), linears(reference.weights)):
            assert W.is_relaid(lin) and not lin.weight.flags.writeable  # column-major, read-only mapped pages
            np.testing.assert_array_equal(lin.weight, ref.weight)
            np.testing.assert_array_equal(lin.bias, ref.bias)
        a = model.weights.encoder.transformer.layer[0].attention
        assert np.shares_memory(a.q_lin.weight, a.qkv.weight)  # q, k, v still views into the fused matrix
        out, ref = model(IDS, MASK), reference(IDS, MASK)
        np.testing.assert_array_equal(out.start_logits, ref.start_logits)
        np.testing.assert_array_equal(out.end_logits, ref.end_logits)
        assert all(is_mapped(lin.weight) for lin in linears(model.weights))  # the cache file's pages, no copy
    assert not any(is_mapped(lin.weight) for lin in linears(reference.weights))


def test_float64_and_an_encoder_only_model_get_their_own_files(small, cache):
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    m64 = npbert.AutoModelForQuestionAnswering.from_pretrained(small, dtype=np.float64)
    encoder = npbert.AutoModel.from_pretrained(small)
    names = cache_files(cache)
    assert len(names) == 3 and sum("-float64-" in n for n in names) == 1
    ref64 = private_model(small, np.float64)
    np.testing.assert_array_equal(m64(IDS, MASK).start_logits, ref64(IDS, MASK).start_logits)
    assert W.is_relaid(encoder.weights.transformer.layer[0].ffn.lin2)


def test_panels_and_column_major_get_their_own_files(small, cache, monkeypatch):
    # The two layouts of the same weights (NPBERT_GEMM: kernels.matmul_panels' panels, numpy's BLAS's column-
    # major matrices) live side by side in the cache, each reused by the next process wanting that layout.
    models = {}
    for gemm in ("panels", "blas", "panels", "blas"):
        monkeypatch.setenv("NPBERT_GEMM", gemm)
        models.setdefault(gemm, []).append(npbert.AutoModelForQuestionAnswering.from_pretrained(small))
    assert len(cache_files(cache)) == 2
    for gemm, (first, second) in models.items():
        monkeypatch.setenv("NPBERT_GEMM", gemm)
        reference = private_model(small)
        for lin, lin2, ref in zip(linears(first.weights), linears(second.weights), linears(reference.weights)):
            assert is_mapped(lin.weight) and is_mapped(lin2.weight)  # both from the layout's one cache file
            assert lin.weight.ndim == (3 if gemm == "panels" and lin.bias.shape[0] % 32 == 0 else 2)
            np.testing.assert_array_equal(lin.weight, ref.weight)
        np.testing.assert_array_equal(first(IDS, MASK).start_logits, reference(IDS, MASK).start_logits)
        np.testing.assert_array_equal(second(IDS, MASK).end_logits, reference(IDS, MASK).end_logits)


def test_keyed_by_the_weights_bytes_and_the_layout_version(small, cache, monkeypatch):
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    [old] = cache_files(cache)
    path = small / "model.safetensors"
    tensors, _, data_start = W.read_header(path)
    info = tensors["distilbert.transformer.layer.1.ffn.lin1.weight"]
    with open(path, "r+b") as f:  # one byte of one weight, changed in place (same size, same name)
        f.seek(data_start + info.begin + 4 * 77 + 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    names = cache_files(cache)
    assert len(names) == 2 and old in names  # a new key, the old file untouched
    np.testing.assert_array_equal(model.weights.encoder.transformer.layer[1].ffn.lin1.weight,
                                  private_model(small).weights.encoder.transformer.layer[1].ffn.lin1.weight)
    monkeypatch.setattr(relaid_cache, "LAYOUT_VERSION", relaid_cache.LAYOUT_VERSION + 1)
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    assert len(cache_files(cache)) == 3 and sum(f"-v{relaid_cache.LAYOUT_VERSION}-" in n for n in cache_files(cache)) == 1


def test_the_remembered_sha256_is_dropped_when_the_file_changes(small, cache, monkeypatch):
    monkeypatch.setattr(relaid_cache, "_RACY_SECONDS", -1.0)  # remember even a file written just now
    hashed = []
    real = relaid_cache.hub.sha256_file
    monkeypatch.setattr(relaid_cache.hub, "sha256_file", lambda p: hashed.append(p) or real(p))
    path = small / "model.safetensors"
    first = relaid_cache.weights_sha256(path, cache)
    assert relaid_cache.weights_sha256(path, cache) == first and len(hashed) == 1  # remembered
    time.sleep(0.01)
    with open(path, "r+b") as f:  # rewritten in place: same size, new contents
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    second = relaid_cache.weights_sha256(path, cache)
    assert second != first and len(hashed) == 2 and second == real(path)


def test_a_truncated_or_foreign_cache_file_is_rewritten(small, cache):
    reference = private_model(small)(IDS, MASK).start_logits
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    [name] = cache_files(cache)
    for damage in (lambda p: os.truncate(p, p.stat().st_size - 64), lambda p: p.write_bytes(b"not an npy file")):
        os.chmod(cache / name, 0o644)
        damage(cache / name)
        model = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
        assert cache_files(cache) == [name]
        np.testing.assert_array_equal(model(IDS, MASK).start_logits, reference)


def unusable_cache_falls_back(small, caplog):
    reference = private_model(small)(IDS, MASK).start_logits
    with caplog.at_level(logging.WARNING, logger="npbert"):
        model = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "private copy" in warnings[0], warnings
    assert all(W.is_relaid(lin) and not is_mapped(lin.weight) for lin in linears(model.weights))  # private copies
    np.testing.assert_array_equal(model(IDS, MASK).start_logits, reference)
    return warnings[0]


def test_a_cache_folder_that_cannot_be_made_falls_back_to_a_private_copy(small, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NPBERT_CACHE", str(blocker))  # $NPBERT_CACHE/relaid cannot be created under a file
    assert "NotADirectoryError" in unusable_cache_falls_back(small, caplog)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_falls_back_to_a_private_copy(small, cache, caplog):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o555)
    try:
        assert "PermissionError" in unusable_cache_falls_back(small, caplog)
    finally:
        os.chmod(cache, 0o755)


def test_a_full_disk_falls_back_and_leaves_no_partial_file(small, cache, monkeypatch, caplog):
    real_write = relaid_cache._write_matrices

    def disk_full(f, *args):
        f.write(b"\0" * 1000)  # part of the file is written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(relaid_cache, "_write_matrices", disk_full)
    assert "No space left" in unusable_cache_falls_back(small, caplog)
    assert cache_files(cache) == [] and leftovers(cache) == []
    monkeypatch.setattr(relaid_cache, "_write_matrices", real_write)
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)  # space again: the file is made
    assert len(cache_files(cache)) == 1


# Two fresh processes loading the same checkpoint at the same moment into an empty cache folder.
LOAD_AT = r"""
import json, sys, time, numpy as np
import npbert
from npbert import weights as W
copies = []
real = W._column_major_copy
W._column_major_copy = lambda linears: copies.append(1) or real(linears)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
model = npbert.AutoModelForQuestionAnswering.from_pretrained(sys.argv[1])
ids = np.array([[1, 5, 9, 13, 2, 7, 30, 3]])
print(json.dumps({"wrote": bool(copies), "logits": model(ids).start_logits.tolist()}))
"""


def test_two_processes_starting_together_share_one_whole_file(small, cache):
    start = time.time() + 6  # both interpreters are up and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", LOAD_AT, str(small), str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "unusable" not in err, err
        results.append(json.loads(out))
    assert sorted(r["wrote"] for r in results) == [False, True]  # one wrote it, the other waited and mapped it
    assert results[0]["logits"] == results[1]["logits"]
    np.testing.assert_array_equal(np.array(results[0]["logits"]), private_model(small)(IDS[:1]).start_logits)
    assert len(cache_files(cache)) == 1 and leftovers(cache) == []
