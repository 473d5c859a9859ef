"""One copy of the re-laid weights per machine: a read-only, memory-mapped cache file that every npbert
process loading the same weights maps, so N workers share the same pages instead of holding N private
copies (~170 MB each at DistilBERT's size).

`layout.relayout_for_speed(tree, weights_file)` asks `shared_matrices` for its matrices. An entry is

    $NPBERT_CACHE/relaid/<weights sha256>-v<LAYOUT_VERSION>-<dtype>-<digest of the matrices' shapes>.bin

($NPBERT_CACHE defaults to $XDG_CACHE_HOME/npbert, else ~/.cache/npbert): a 4096-byte header (the line
`npbert re-laid weights`, then JSON: layout version, the sha256 of the safetensors file it was built from,
a sample digest of that file, dtype, shapes, and the sha256 of the data), then the data: every re-laid
[in, out] matrix in the order the re-layout visits them, each starting on a 64-byte boundary.

Nothing in the folder is believed without proof: every load checks the header against the weights file
(its sha256 and its sample digest), the file's size, and the sha256 of the data (~0.1 s at full size,
docs/performance.md). A mismatch is one warning line, and the entry is rebuilt (or, where the folder is
read-only, bypassed for a private copy): a damaged or swapped entry is never used. Names are made only
from digests npbert computed or checked (64 hex digits), so nothing read from the folder becomes a path.
Created atomically: written to a temporary file in the same folder, flushed to disk, then renamed, so a
reader sees a whole file or none. Processes starting together take a lock (flock) to write: the first
writes, the others wait and then map its file. When the folder cannot be used (read-only, full, not a
folder) the caller falls back to a private copy, after one warning line.

Hashing 260 MB of weights takes ~0.4 s; each file's sha256 is remembered in the cache folder (a "memo")
under the file's identity (device, inode, size, mtime and ctime in ns: any write changes ctime), which
the memo also holds and which must match, so later starts skip it, as git's index does. A file modified
less than 2 s before it is hashed is not remembered (git's "racy" case). A memo is never trusted alone:
the entry it names must also carry the sample digest of the file being loaded (1 MiB read from it,
`sample_digest`), and an entry is only ever written under a digest just computed from the file.

A mapping stays valid while its file is unchanged; `changed_mappings` says which of this process's
mappings have had their file written or truncated since they were checked (`npbert serve --workers`
asks before each fork: a truncated file would kill every worker forked onto it with SIGBUS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import re
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from . import cache_root, hub

LAYOUT_VERSION = 2  # 2: the checked header (1: a bare .npy file named by a memo's word)
CACHE_ENV = cache_root.ENV
HEADER_BYTES = 4096  # the data start on a page, so on a 64-byte boundary too
_MAGIC = b"npbert re-laid weights\n"
_ALIGN_BYTES = 64  # each matrix starts on a cache line
_RACY_SECONDS = 2.0
_SAMPLE_BLOCKS, _SAMPLE_BLOCK_BYTES = 256, 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("npbert")


class Mismatch(Exception):
    """A cache entry that is not what its name says; the message says what, in a few words."""


class _Mapping(mmap.mmap):
    """A checked entry's mapping, with what was checked: its path, and the file's identity then (device,
    inode, size, mtime in ns) with a descriptor of the same file to compare it with later."""

    path: Path
    identity: tuple
    fd: int


_mappings: weakref.WeakSet = weakref.WeakSet()  # this process's live _Mappings


def cache_folder() -> Path:
    """$NPBERT_CACHE/relaid, else $XDG_CACHE_HOME/npbert/relaid, else ~/.cache/npbert/relaid."""
    return cache_root.root() / "relaid"


def _file_identity(st) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _memo_path(folder: Path, identity: list[int]) -> Path:
    return folder / "sha256" / hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def remembered_sha256(path: Path, folder: Path) -> str | None:
    """The sha256 remembered for `path` in `folder`: None when there is no memo for the file as it is now
    (same device, inode, size, mtime, ctime); Mismatch when the memo there is not one for it."""
    identity = _file_identity(os.stat(path))
    memo_path = _memo_path(folder, identity)
    try:
        text = memo_path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # none yet, or a folder that cannot be read: the file is hashed (the folder's error follows)
        return None
    try:
        memo = json.loads(text)
    except ValueError:
        memo = None
    if (
        not isinstance(memo, dict)
        or memo.get("identity") != identity
        or not isinstance(memo.get("sha256"), str)
        or not _SHA256.fullmatch(memo["sha256"])
    ):
        raise Mismatch(f"its sha256 memo {memo_path} does not hold a sha256 for this file")
    return memo["sha256"]


def weights_sha256(path: Path, folder: Path) -> str:
    """The sha256 of `path`'s bytes, computed now, and remembered in `folder` (module docstring)."""
    st = os.stat(path)
    value = hub.sha256_file(path)
    if time.time() - max(st.st_mtime, st.st_ctime) > _RACY_SECONDS:
        identity = _file_identity(st)
        memo = json.dumps({"identity": identity, "sha256": value}).encode()
        try:
            _write_atomically(_memo_path(folder, identity), lambda f: f.write(memo))
        except OSError:
            pass  # a read-only cache folder: hash again next time
    return value


def sample_digest(path: Path) -> str:
    """The sha256 of the file's size and of 256 blocks of 4 KiB spread evenly over it, the first and the last
    included (1 MiB read): two files differing only in bytes that no block covers (a stretch shorter than
    size / 255 away from both ends) have the same sample digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        last = max(0, size - _SAMPLE_BLOCK_BYTES)
        for i in range(_SAMPLE_BLOCKS):
            h.update(os.pread(f.fileno(), _SAMPLE_BLOCK_BYTES, last * i // (_SAMPLE_BLOCKS - 1)))
    return h.hexdigest()


def _offsets(shapes, dtype: np.dtype) -> tuple[list[int], int]:  # in elements
    step = max(1, _ALIGN_BYTES // dtype.itemsize)
    offsets, end = [], 0
    for rows, cols in shapes:
        start = -(-end // step) * step
        offsets.append(start)
        end = start + rows * cols
    return offsets, -(-end // step) * step


def _shapes_sha256(shapes) -> str:
    return hashlib.sha256(repr([tuple(s) for s in shapes]).encode()).hexdigest()


def entry_path(folder: Path, weights_digest: str, dtype: np.dtype, shapes) -> Path:
    """The entry's path in `folder`: made from a checked sha256 only, so always a file directly in it."""
    if not _SHA256.fullmatch(weights_digest):
        raise ValueError(f"not a sha256: {weights_digest!r}")
    return folder / f"{weights_digest}-v{LAYOUT_VERSION}-{dtype.name}-{_shapes_sha256(shapes)[:12]}.bin"


def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # whole on disk before the rename publishes it
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def _writers_lock(folder: Path):
    """One writer at a time per cache folder (an advisory flock): processes starting together then wait
    for the first one's file and map the same pages, instead of each writing and mapping its own copy
    until their next start. The atomic rename alone keeps the files whole where flock is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(folder / "writers.lock", "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            pass
        yield  # closing the file releases the lock


def _short(value) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 15 else text


def _open(path: Path, header: dict, dtype: np.dtype, total: int) -> np.ndarray | None:
    """The entry's data, memory-mapped read-only, once its header holds `header`'s values, its size is that
    of `total` elements and its data match the sha256 in its header; None when there is no entry; Mismatch
    (saying what differs) when there is one and it is not that."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        head = f.read(HEADER_BYTES)
        try:
            found = json.loads(head[len(_MAGIC) :]) if head.startswith(_MAGIC) else None
        except ValueError:
            raise Mismatch("its header is damaged") from None
        if not isinstance(found, dict):
            raise Mismatch("it is not an npbert re-laid weights file")
        for key, want in header.items():
            if found.get(key) != want:
                raise Mismatch(f"its {key} is {_short(found.get(key))}, not {_short(want)}")
        size = HEADER_BYTES + total * dtype.itemsize
        if st.st_size != size:
            raise Mismatch(f"it has {st.st_size} bytes, not {size}")
        mapped = _Mapping(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file is closed
        fd = os.dup(f.fileno())
    weakref.finalize(mapped, os.close, fd)
    with memoryview(mapped) as view, view[HEADER_BYTES:] as data:
        digest = hashlib.sha256(data).hexdigest()  # page-cache reads: shared pages, no private copy
    if digest != found.get("data_sha256"):
        raise Mismatch(f"its data's sha256 is {_short(digest)}, its header says {_short(found.get('data_sha256'))}")
    mapped.path, mapped.identity, mapped.fd = path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), fd
    _mappings.add(mapped)
    return np.frombuffer(mapped, dtype, count=total, offset=HEADER_BYTES)  # read-only: a read-only buffer


def _base_mapping(array: np.ndarray):
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    base = root.base.obj if isinstance(root.base, memoryview) else root.base  # np.frombuffer keeps a memoryview
    return base if isinstance(base, _Mapping) else None


def entry_of(array: np.ndarray) -> Path | None:
    """The cache entry `array` is a view of (checked when it was mapped), or None for any other array."""
    mapping = _base_mapping(array)
    return mapping.path if mapping is not None else None


def changed_mappings() -> list[str]:
    """One line for each entry this process maps whose file was written, truncated or extended since it was
    checked (its size or mtime differ): its pages may now hold other values, or fault (SIGBUS) if gone."""
    lines = []
    for mapping in list(_mappings):
        st = os.fstat(mapping.fd)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != mapping.identity:
            lines.append(
                f"the re-laid weights cache file {mapping.path} changed after it was checked and mapped "
                f"(now {st.st_size} bytes, checked at {mapping.identity[2]})"
            )
    return lines


def shared_matrices(weights_file: Path, dtype, shapes, produce) -> list[np.ndarray] | None:
    """The re-laid matrices, [rows, cols] for each of `shapes`, as read-only views of the checked cache entry
    for `weights_file`; the entry is written first when missing or not what it should be (one warning line
    saying what was wrong), by `produce(write)`, which must call write(matrix) once per shape, in order,
    with C-contiguous matrices of those shapes. None, after one warning line, when the cache folder cannot
    be used (the caller then keeps private copies)."""
    dtype, weights_file = np.dtype(dtype), Path(weights_file)
    offsets, total = _offsets(shapes, dtype)
    problems = []  # what was found wrong on the way, for the one warning line
    try:
        folder = cache_folder()
        sample = sample_digest(weights_file)

        def expected(digest):  # an entry's header for these weights, in the order _open checks it
            return {
                "layout_version": LAYOUT_VERSION,
                "dtype": dtype.name,
                "shapes_sha256": _shapes_sha256(shapes),
                "weights_sha256": digest,
                "weights_sample": sample,
            }

        flat = remembered = None
        try:
            remembered = remembered_sha256(weights_file, folder)
        except Mismatch as e:
            problems.append(str(e))
        memo_entry_problem = None
        if remembered is not None:  # a memo finds an entry; the entry's sample digest must agree with the file
            try:
                flat = _open(entry_path(folder, remembered, dtype, shapes), expected(remembered), dtype, total)
            except Mismatch as e:
                memo_entry_problem = e
        if flat is None:  # no entry yet, or one not proven: hash the file, never trust the memo to name one
            digest = weights_sha256(weights_file, folder)
            header = expected(digest)
            path = entry_path(folder, digest, dtype, shapes)
            if remembered is not None and remembered != digest:
                problems.append(
                    f"its sha256 memo said {_short(remembered)}, the file's is {_short(digest)}"
                    + (f" (that entry: {memo_entry_problem})" if memo_entry_problem else "")
                )
            elif memo_entry_problem is not None:
                problems.append(f"the cache entry {path} was not used: {memo_entry_problem}")
            if remembered != digest or memo_entry_problem is None:  # not opened yet under this name
                try:
                    flat = _open(path, header, dtype, total)
                except Mismatch as e:
                    problems.append(f"the cache entry {path} was not used: {e}")
        if flat is None:
            with _writers_lock(folder):
                try:
                    flat = _open(path, header, dtype, total)  # maybe written by another process while this one waited
                except Mismatch as e:
                    if not problems:
                        problems.append(f"the cache entry {path} was not used: {e}")
                if flat is None:
                    _write_atomically(path, lambda f: _write_entry(f, header, dtype, shapes, offsets, total, produce))
                    if problems:
                        problems.append(f"rebuilt it from {weights_file}")
                    try:
                        flat = _open(path, header, dtype, total)
                    except Mismatch as e:
                        raise OSError(f"{path} did not read back as written: {e}") from None
    except OSError as e:
        log.warning(
            "npbert: the shared re-laid weights cache is unusable (%s: %s)%s; this process keeps a "
            "private copy (set %s to a writable folder)",
            type(e).__name__,
            e,
            "".join(f"; {p}" for p in problems),
            CACHE_ENV,
        )
        return None
    if problems:
        log.warning("npbert: re-laid weights for %s: %s", weights_file, "; ".join(problems))
    return [flat[o : o + rows * cols].reshape(rows, cols) for (rows, cols), o in zip(shapes, offsets)]


def _write_entry(f, header, dtype, shapes, offsets, total, produce):
    f.write(bytes(HEADER_BYTES))  # the header, with the data's sha256, is written last
    digest = hashlib.sha256()
    written = []

    def put(data):
        f.write(data)
        digest.update(data)

    def write(matrix):
        k = len(written)
        if k >= len(shapes) or matrix.shape != tuple(shapes[k]) or matrix.dtype != dtype:
            raise ValueError(f"re-laid matrix {k}: {matrix.shape} {matrix.dtype}, planned {shapes[k : k + 1]} {dtype}")
        end = offsets[k - 1] + shapes[k - 1][0] * shapes[k - 1][1] if k else 0
        put(bytes((offsets[k] - end) * dtype.itemsize))
        put(memoryview(np.ascontiguousarray(matrix)).cast("B"))
        written.append(k)

    produce(write)
    if len(written) != len(shapes):
        raise ValueError(f"re-laid {len(written)} matrices, planned {len(shapes)}")
    last = offsets[-1] + shapes[-1][0] * shapes[-1][1] if shapes else 0
    put(bytes((total - last) * dtype.itemsize))
    head = _MAGIC + json.dumps({**header, "data_sha256": digest.hexdigest()}).encode() + b"\n"
    if len(head) > HEADER_BYTES:
        raise ValueError(f"re-laid weights header of {len(head)} bytes, more than {HEADER_BYTES}")
    f.seek(0)
    f.write(head.ljust(HEADER_BYTES, b" "))
