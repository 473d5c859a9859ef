"""One copy of the re-laid weights per machine: a read-only, memory-mapped cache file that every npbert
process loading the same weights maps, so N workers share the same pages instead of holding N private
copies (~170 MB each at DistilBERT's size).

`weights.relayout_for_speed(tree, weights_file)` asks `shared_matrices` for its matrices. The file is

    $NPBERT_CACHE/relaid/<weights sha256>-v<LAYOUT_VERSION>-<dtype>-<digest of the matrices' shapes>.npy

($NPBERT_CACHE defaults to $XDG_CACHE_HOME/npbert, else ~/.cache/npbert): one flat .npy array holding
every re-laid [in, out] matrix in the order the re-layout visits them, each starting on a 64-byte
boundary. Never stale: the name holds the sha256 of the safetensors file's bytes (any changed byte makes
a new file) and the layout version (bumped whenever relayout_for_speed stores its matrices differently).
Created atomically: written to a temporary file in the same folder, flushed to disk, then renamed, so a
reader sees a whole file or none. Processes starting together take a lock (flock) to write: the first
writes, the others wait and then map its file (without flock they would each write the same bytes and
one rename would win). When the folder cannot be used (read-only, full, not a folder) the caller falls
back to a private copy, after one warning line.

Hashing 260 MB takes ~0.4 s here; each file's sha256 is remembered in the cache folder under a witness of
the file (path, device, inode, size, mtime and ctime in ns: any write changes ctime), so later starts skip
it, as git's index does. A file modified less than 2 s before it is hashed is not remembered (a write in
the same timestamp tick would not change the witness: git's "racy" case).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import cache_root, hub

LAYOUT_VERSION = 1
CACHE_ENV = cache_root.ENV
_ALIGN_BYTES = 64  # each matrix starts on a cache line (the .npy header already pads the data to 64)
_RACY_SECONDS = 2.0

log = logging.getLogger("npbert")


def cache_folder() -> Path:
    """$NPBERT_CACHE/relaid, else $XDG_CACHE_HOME/npbert/relaid, else ~/.cache/npbert/relaid."""
    return cache_root.root() / "relaid"


def weights_sha256(path: Path, folder: Path) -> str:
    """The sha256 of `path`'s bytes, remembered in `folder` under the file's witness (module docstring)."""
    st = os.stat(path)
    witness = "\0".join(map(str, (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                  st.st_ctime_ns)))
    memo = folder / "sha256" / hashlib.sha256(witness.encode()).hexdigest()[:32]
    try:
        value = memo.read_text().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    value = hub.sha256_file(path)
    if time.time() - max(st.st_mtime, st.st_ctime) > _RACY_SECONDS:
        try:
            _write_atomically(memo, lambda f: f.write(value.encode()))
        except OSError:
            pass  # a read-only cache folder: hash again next time
    return value


def _offsets(shapes, dtype: np.dtype) -> tuple[list[int], int]:  # in elements
    step = max(1, _ALIGN_BYTES // dtype.itemsize)
    offsets, end = [], 0
    for rows, cols in shapes:
        start = -(-end // step) * step
        offsets.append(start)
        end = start + rows * cols
    return offsets, -(-end // step) * step


def cache_path(weights_file: Path, dtype: np.dtype, shapes, folder: Path) -> Path:
    digest = hashlib.sha256(repr([tuple(s) for s in shapes]).encode()).hexdigest()[:12]
    return folder / f"{weights_sha256(weights_file, folder)}-v{LAYOUT_VERSION}-{dtype.name}-{digest}.npy"


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


def _open(path: Path, dtype: np.dtype, total: int) -> np.ndarray | None:
    """The file's flat array, memory-mapped read-only; None when absent or not what this layout wrote."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        try:
            if np.lib.format.read_magic(f) != (1, 0):
                return None
            shape, fortran_order, file_dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError:  # not an .npy file
            return None
        start = f.tell()
        if (shape != (total,) or fortran_order or file_dtype != dtype
                or os.fstat(f.fileno()).st_size != start + total * dtype.itemsize):
            return None
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file is closed
    return np.frombuffer(mapped, dtype, count=total, offset=start)  # read-only: a read-only buffer


def shared_matrices(weights_file: Path, dtype, shapes, produce) -> list[np.ndarray] | None:
    """The re-laid matrices, [rows, cols] for each of `shapes`, as read-only views of the cache file for
    `weights_file`; the file is written first when missing, by `produce(write)`, which must call
    write(matrix) once per shape, in order, with C-contiguous matrices of those shapes. None, after one
    warning line, when the cache folder cannot be used (the caller then keeps private copies)."""
    dtype = np.dtype(dtype)
    offsets, total = _offsets(shapes, dtype)
    try:
        folder = cache_folder()
        path = cache_path(Path(weights_file), dtype, shapes, folder)
        flat = _open(path, dtype, total)
        if flat is None:
            with _writers_lock(folder):
                flat = _open(path, dtype, total)  # written by another process while this one waited
                if flat is None:
                    _write_atomically(path, lambda f: _write_matrices(f, dtype, shapes, offsets, total, produce))
                    flat = _open(path, dtype, total)
                    if flat is None:
                        raise OSError(f"{path} did not read back as written")
    except OSError as e:
        log.warning("npbert: the shared re-laid weights cache is unusable (%s: %s); this process keeps a "
                    "private copy (set %s to a writable folder)", type(e).__name__, e, CACHE_ENV)
        return None
    return [flat[o:o + rows * cols].reshape(rows, cols) for (rows, cols), o in zip(shapes, offsets)]


def _write_matrices(f, dtype, shapes, offsets, total, produce):
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                             "shape": (total,)})
    written = []

    def write(matrix):
        k = len(written)
        if k >= len(shapes) or matrix.shape != tuple(shapes[k]) or matrix.dtype != dtype:
            raise ValueError(f"re-laid matrix {k}: {matrix.shape} {matrix.dtype}, planned {shapes[k:k + 1]} {dtype}")
        end = offsets[k - 1] + shapes[k - 1][0] * shapes[k - 1][1] if k else 0
        f.write(bytes((offsets[k] - end) * dtype.itemsize))
        f.write(memoryview(np.ascontiguousarray(matrix)).cast("B"))
        written.append(k)

    produce(write)
    if len(written) != len(shapes):
        raise ValueError(f"re-laid {len(written)} matrices, planned {len(shapes)}")
    last = offsets[-1] + shapes[-1][0] * shapes[-1][1] if shapes else 0
    f.write(bytes((total - last) * dtype.itemsize))
