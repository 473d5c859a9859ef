"""The shared re-laid weights cache (npbert/relaid_cache.py, layout.relayout_for_speed with the weights
file): created once and reused, atomic when two processes start together, keyed by the weights' bytes and
the layout version (never stale), a private copy with one warning line when the cache folder is unusable,
and the same values and outputs as the private-copy path (layout.relayout_for_speed without a file).
Nothing in the cache folder is trusted: a damaged entry (bit flips, truncation), another checkpoint's entry
under this one's name, a memo naming other weights or holding a path each end in the true weights' logits
(against a private re-layout of model.safetensors) after one warning line, never in the cached ones."""

from __future__ import annotations

import errno
import hashlib
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
from npbert import layout, relaid_cache, weights as W

SMALL = dict(
    vocab=[], tokenizer=False, vocab_size=40, dim=64, n_layers=2, n_heads=2, hidden_dim=256, max_position_embeddings=32
)
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
    return sorted(p.name for p in cache.glob("*.bin"))


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
    real_copy = layout._column_major_copy
    monkeypatch.setattr(layout, "_column_major_copy", lambda linears: copies.append(1) or real_copy(linears))
    first = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    [name] = cache_files(cache)
    assert len(copies) == 2 * 4 + 1  # each layer's qkv, out_lin, lin1, lin2 and qa_outputs, copied once to write
    inode = (cache / name).stat().st_ino
    copies.clear()
    second = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    assert copies == [] and cache_files(cache) == [name] and (cache / name).stat().st_ino == inode  # reused
    assert leftovers(cache) == []
    monkeypatch.setattr(layout, "_column_major_copy", real_copy)
    reference = private_model(small)
    for model in (first, second):
        for lin, ref in zip(linears(model.weights), linears(reference.weights)):
            assert layout.is_relaid(lin) and not lin.weight.flags.writeable  # column-major, read-only mapped pages
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
    assert layout.is_relaid(encoder.weights.transformer.layer[0].ffn.lin2)


def test_panels_and_column_major_get_their_own_files(small, cache, monkeypatch):
    # The two layouts of the same weights (NPBERT_GEMM: ops.gemm.matmul_panels_numba's panels, numpy's BLAS's column-
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
    np.testing.assert_array_equal(
        model.weights.encoder.transformer.layer[1].ffn.lin1.weight,
        private_model(small).weights.encoder.transformer.layer[1].ffn.lin1.weight,
    )
    monkeypatch.setattr(relaid_cache, "LAYOUT_VERSION", relaid_cache.LAYOUT_VERSION + 1)
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    assert (
        len(cache_files(cache)) == 3 and sum(f"-v{relaid_cache.LAYOUT_VERSION}-" in n for n in cache_files(cache)) == 1
    )


def test_the_remembered_sha256_is_dropped_when_the_file_changes(small, cache, monkeypatch):
    monkeypatch.setattr(relaid_cache, "_RACY_SECONDS", -1.0)  # remember even a file written just now
    path = small / "model.safetensors"
    assert relaid_cache.remembered_sha256(path, cache) is None
    first = relaid_cache.weights_sha256(path, cache)
    assert relaid_cache.remembered_sha256(path, cache) == first == hashlib.sha256(path.read_bytes()).hexdigest()
    time.sleep(0.01)
    with open(path, "r+b") as f:  # rewritten in place: same size, new contents
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    assert relaid_cache.remembered_sha256(path, cache) is None  # another identity: no memo for it


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
    assert all(layout.is_relaid(lin) and not is_mapped(lin.weight) for lin in linears(model.weights))  # private copies
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
    real_write = relaid_cache._write_entry

    def disk_full(f, *args):
        f.write(b"\0" * 1000)  # part of the file is written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(relaid_cache, "_write_entry", disk_full)
    assert "No space left" in unusable_cache_falls_back(small, caplog)
    assert cache_files(cache) == [] and leftovers(cache) == []
    monkeypatch.setattr(relaid_cache, "_write_entry", real_write)
    npbert.AutoModelForQuestionAnswering.from_pretrained(small)  # space again: the file is made
    assert len(cache_files(cache)) == 1


# Two fresh processes loading the same checkpoint at the same moment into an empty cache folder.
LOAD_AT = r"""
import json, sys, time, numpy as np
import npbert
from npbert import layout, weights as W
copies = []
real = layout._column_major_copy
layout._column_major_copy = lambda linears: copies.append(1) or real(linears)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
model = npbert.AutoModelForQuestionAnswering.from_pretrained(sys.argv[1])
ids = np.array([[1, 5, 9, 13, 2, 7, 30, 3]])
print(json.dumps({"wrote": bool(copies), "logits": model(ids).start_logits.tolist()}))
"""


def test_two_processes_starting_together_share_one_whole_file(small, cache):
    start = time.time() + 6  # both interpreters are up and waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AT, str(small), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(2)
    ]
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


def one_warning(caplog) -> str:
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    return warnings[0]


def load_logits(folder, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="npbert"):
        model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    assert all(is_mapped(lin.weight) for lin in linears(model.weights))  # from a cache entry, not a private copy
    return model(IDS, MASK)


def assert_true_logits(out, folder):
    ref = private_model(folder)(IDS, MASK)
    np.testing.assert_array_equal(out.start_logits, ref.start_logits)
    np.testing.assert_array_equal(out.end_logits, ref.end_logits)


def data_element(path, where: str) -> int:
    """The byte offset in the entry of a non-zero float32 weight (not alignment padding): the first, the
    middle or the last one."""
    data = np.fromfile(path, np.float32, offset=relaid_cache.HEADER_BYTES)
    nonzero = np.flatnonzero(data)
    k = {"start": nonzero[0], "middle": nonzero[len(nonzero) // 2], "end": nonzero[-1]}[where]
    return relaid_cache.HEADER_BYTES + 4 * int(k)


def flip(path, offset: int, mask: int):
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


# The table: each damage done to the entry of a loaded checkpoint, then a fresh load.
DAMAGE = {
    "high exponent bit mid-file": lambda p: flip(p, data_element(p, "middle") + 3, 0x40),
    "sign bit near the start": lambda p: flip(p, data_element(p, "start") + 3, 0x80),
    "sign bit in the last bytes": lambda p: flip(p, data_element(p, "end") + 3, 0x80),
    "one bit of the header": lambda p: flip(p, len(relaid_cache._MAGIC) + 3, 0x01),
    "truncated to zero": lambda p: os.truncate(p, 0),
    "truncated to the header": lambda p: os.truncate(p, relaid_cache.HEADER_BYTES),
    "truncated by 4 KB": lambda p: os.truncate(p, p.stat().st_size - 4096),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: d.replace(" ", "-"))
def test_a_damaged_entry_is_reported_in_one_line_and_rebuilt(small, cache, caplog, damage):
    load_logits(small, caplog)
    [name] = cache_files(cache)
    if "truncated" in damage:
        os.chmod(cache / name, 0o644)
    DAMAGE[damage](cache / name)
    assert_true_logits(load_logits(small, caplog), small)
    warning = one_warning(caplog)
    assert name in warning and "was not used" in warning and "rebuilt" in warning, warning
    assert cache_files(cache) == [name] and leftovers(cache) == []
    assert_true_logits(load_logits(small, caplog), small)  # the rebuilt entry: used, without a word
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.fixture
def other(tmp_path):
    """A second checkpoint of the same architecture (so its entry has the same size and layout)."""
    return checkpoints.write_checkpoint(tmp_path / "other", seed=12, qa_scale=5.0, **SMALL)


def test_another_checkpoints_entry_under_this_ones_name_is_refused(small, other, cache, caplog):
    load_logits(small, caplog)
    [mine] = cache_files(cache)
    load_logits(other, caplog)
    [theirs] = [n for n in cache_files(cache) if n != mine]
    os.chmod(cache / mine, 0o644)
    (cache / mine).write_bytes((cache / theirs).read_bytes())  # B's entry copied over A's name
    assert_true_logits(load_logits(small, caplog), small)
    warning = one_warning(caplog)
    assert mine in warning and "weights_sha256" in warning, warning
    assert_true_logits(load_logits(other, caplog), other)  # B's own entry untouched


def memo_files(cache):
    return sorted((cache / "sha256").iterdir())


@pytest.mark.parametrize("poison", ["bare digest", "digest in a memo of this file"])
def test_a_memo_naming_other_weights_does_not_pick_their_entry(small, other, cache, caplog, monkeypatch, poison):
    monkeypatch.setattr(relaid_cache, "_RACY_SECONDS", -1.0)  # remember the checkpoints written just now
    load_logits(small, caplog)
    [memo] = memo_files(cache)
    load_logits(other, caplog)
    theirs = hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest()
    assert any(n.startswith(theirs) for n in cache_files(cache))  # their entry is there, valid for them
    os.chmod(memo, 0o644)
    if poison == "bare digest":  # what the memo held before: the digest alone
        memo.write_text(theirs)
    else:  # the memo's own file identity kept, only the digest changed: the entry's sample digest refuses it
        memo.write_text(json.dumps({**json.loads(memo.read_text()), "sha256": theirs}))
    assert_true_logits(load_logits(small, caplog), small)
    warning = one_warning(caplog)
    assert "memo" in warning, warning
    assert_true_logits(load_logits(small, caplog), small)  # the memo was rewritten with the true digest
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("form", ["bare", "in a memo of this file"])
def test_a_memo_holding_a_path_writes_nothing_outside_the_cache_folder(
    small, cache, caplog, monkeypatch, tmp_path, form
):
    monkeypatch.setattr(relaid_cache, "_RACY_SECONDS", -1.0)
    load_logits(small, caplog)
    [memo] = memo_files(cache)
    before = sorted(p for p in tmp_path.rglob("*") if cache not in p.parents)
    escape = "../../elsewhere".ljust(64, "x")  # 64 characters, as a digest; tmp_path/elsewhere... if used as a path
    os.chmod(memo, 0o644)
    memo.write_text(escape if form == "bare" else json.dumps({**json.loads(memo.read_text()), "sha256": escape}))
    for p in cache.glob("*.bin"):  # no entry to find: the load must build one, and name it
        p.unlink()
    assert_true_logits(load_logits(small, caplog), small)
    assert "memo" in one_warning(caplog)
    assert sorted(p for p in tmp_path.rglob("*") if cache not in p.parents) == before  # nothing written outside
    [name] = cache_files(cache)
    assert name.startswith(hashlib.sha256((small / "model.safetensors").read_bytes()).hexdigest())


def test_a_bad_entry_that_cannot_be_rebuilt_is_bypassed(small, cache, caplog, monkeypatch):
    load_logits(small, caplog)
    [name] = cache_files(cache)
    DAMAGE["sign bit near the start"](cache / name)

    def read_only(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(relaid_cache, "_write_entry", read_only)
    with caplog.at_level(logging.WARNING, logger="npbert"):
        caplog.clear()
        model = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    warning = one_warning(caplog)
    assert "private copy" in warning and name in warning and "Read-only" in warning, warning
    assert not any(is_mapped(lin.weight) for lin in linears(model.weights))
    assert_true_logits(model(IDS, MASK), small)


def test_changed_mappings_names_a_mapped_entry_written_after_its_check(small, cache, caplog):
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(small)
    [name] = cache_files(cache)
    entry = relaid_cache.entry_of(model.weights.qa_outputs.weight)
    assert entry == cache / name and relaid_cache.entry_of(np.zeros(3)) is None

    def about_this_entry():  # (other tests' models may still be alive in this process, with their own entries)
        return [line for line in relaid_cache.changed_mappings() if str(entry) in line]

    assert about_this_entry() == []
    os.chmod(entry, 0o644)  # a mode change is not a change of the bytes
    assert about_this_entry() == []
    time.sleep(0.01)
    flip(entry, relaid_cache.HEADER_BYTES + 1000, 0x01)
    [line] = about_this_entry()
    assert "changed after it was checked" in line
    del model
