"""Reading a safetensors file: its header, strictly checked, and its tensors as views of a memory map.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON
header {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes. The header is read and
checked here and the data memory-mapped, so float32 weights are used in place, with no copy. Nothing here
knows a model: weights.py says which tensors a checkpoint must hold.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np


class WeightsError(ValueError):
    """A weights file that cannot be loaded as the config says, naming the file, tensor, expected and found."""


_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Bounds checked before any work: the safetensors library allows a 100 MB header, but a real checkpoint's
# is tens of KB (BERT-large: ~400 tensors, 40 KB). A hostile 55 MB header of a million empty tensors took a
# minute and 1.2 GB before these bounds.
_MAX_HEADER_BYTES = 16 * 2**20
_MAX_TENSORS = 50_000


class TensorInfo(NamedTuple):
    dtype: str  # safetensors name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and check a safetensors header: (tensors, metadata, byte offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise WeightsError(
                f"{path}: bad header: header length {n} but the file has {size - 8} bytes after it "
                "(truncated, or not a safetensors file)"
            )
        if n > _MAX_HEADER_BYTES:
            raise WeightsError(
                f"{path}: bad header: {n} bytes of header, over npbert's limit of "
                f"{_MAX_HEADER_BYTES} (a real checkpoint's is tens of KB)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise WeightsError(
            f"{path}: bad header: JSON nested too deeply to read; corrupt or not a safetensors file"
        ) from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: bad JSON, or an integer over 4300 digits
        raise WeightsError(f"{path}: bad header: not valid JSON ({e}); corrupt or not a safetensors file") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: bad header: expected a JSON object, found {type(header).__name__}")
    if len(header) > _MAX_TENSORS:
        raise WeightsError(f"{path}: bad header: {len(header)} entries, over npbert's limit of {_MAX_TENSORS} tensors")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + n, size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{path}: bad header: entry for tensor {name!r} is malformed: {info!r}") from None
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise WeightsError(f"{path}: bad header: tensor {name}: unknown dtype {dtype!r}")
        # JSON true/false are ints to Python: a shape or offset must be a real non-negative integer.
        ints = (*shape, begin, end)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ints) or begin > end:
            raise WeightsError(f"{path}: bad header: tensor {name} has shape {list(shape)}, offsets {[begin, end]}")
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize  # Python ints: no overflow at 2**64
        if end - begin != nbytes:
            raise WeightsError(
                f"{path}: bad header: tensor {name} ({dtype} {list(shape)}) needs {nbytes} bytes, "
                f"its offsets span {end - begin}"
            )
        if end > data_size:
            raise WeightsError(
                f"{path}: truncated: tensor {name} ends at byte {end} of the data section, "
                f"which has only {data_size} bytes"
            )
        tensors[name] = TensorInfo(dtype, shape, begin, end)
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise WeightsError(f"{path}: bad header: tensors {a} and {b} overlap")
        if begin_b > end_a:
            raise WeightsError(
                f"{path}: bad header: {begin_b - end_a} bytes between tensors {a} and {b} belong to "
                "no tensor (the safetensors format has no gaps)"
            )
    covered = spans[-1][1] if spans else 0
    if covered != data_size:  # the safetensors library refuses these too ("not fully covered")
        raise WeightsError(
            f"{path}: {data_size - covered} bytes after the last tensor belong to no tensor (trailing "
            "data: a corrupt or altered file)"
        )
    return tensors, metadata, data_start


def stored_array(mm: np.ndarray, data_start: int, info: TensorInfo) -> np.ndarray:
    """A tensor's stored values, as a view of the file's bytes `mm` in its stored dtype and shape
    (bfloat16 as uint16: numpy has no bfloat16)."""
    return mm[data_start + info.begin : data_start + info.end].view(_DTYPES[info.dtype]).reshape(info.shape)


def as_float(raw: np.ndarray, source_dtype: str, dtype: np.dtype) -> np.ndarray:
    """Convert a tensor's stored values to the model dtype, copying only when the dtype changes."""
    if source_dtype == "BF16":
        # bfloat16 is the top half of a float32: widening is exact.
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw if raw.dtype == dtype else raw.astype(dtype)


def release_mapped_pages(x):
    # Drop the (now copied) pages of the file mapping from this process. They stay in the page cache
    # and would fault back in if read. Only on a read-only file mapping: on an owned array
    # MADV_DONTNEED zeroes the data.
    import mmap

    root = x
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not (isinstance(root.base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")) or x.flags.writeable:
        return
    page, start = mmap.PAGESIZE, x.ctypes.data - np.frombuffer(root.base, np.uint8).ctypes.data
    begin, end = -(-start // page) * page, (start + x.nbytes) // page * page  # whole pages inside x
    if end > begin:
        root.base.madvise(mmap.MADV_DONTNEED, begin, end - begin)
