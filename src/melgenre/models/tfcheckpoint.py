"""Read TensorFlow (V2 "tensor bundle") checkpoints with NumPy alone.

A checkpoint ``PREFIX`` is two files: ``PREFIX.index``, a LevelDB-format sorted table mapping each
variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size), and
``PREFIX.data-00000-of-00001`` holding the raw little-endian tensor bytes. This module parses
both (the table blocks, the protobuf varints), so converting pretrained TF weights needs no
TensorFlow. Only uncompressed tables and numeric dtypes are supported, which is what
``tf.train.Saver`` writes; anything else is a :class:`ValueError` naming the file.

>>> weights = read_checkpoint("MSD_musicnn/")   # {name: np.ndarray}
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic number (little-endian in the footer)
_FOOTER = 48
_TRAILER = 5  # after each block: 1 byte compression type + 4 bytes CRC

#: TensorFlow DataType enum -> NumPy dtype (types.proto).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
           9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; returns (value, next position)."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a serialised protobuf message (varint and bytes only)."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _block(data: bytes, offset: int, size: int, path: Path) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of one table block (keys are prefix-compressed)."""
    if data[offset + size] != 0:
        raise ValueError(f"{path}: compressed checkpoint index blocks are not supported")
    block = data[offset:offset + size]
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * n_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        n_value, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + n_value]))
        pos += n_value
    return entries


def _shape(buf: bytes) -> tuple[int, ...]:
    """Dimensions of a serialised ``TensorShapeProto``."""
    dims = []
    for number, dim in _fields(buf):
        if number == 2:
            dims.append(next((v for n, v in _fields(dim) if n == 1), 0))
    return tuple(dims)


def read_index(prefix: str | Path) -> dict[str, dict]:
    """The entries of ``PREFIX.index``: ``{name: {dtype, shape, shard, offset, size}}``."""
    path = Path(str(prefix) + ".index")
    data = path.read_bytes()
    if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise ValueError(f"{path}: not a TensorFlow checkpoint index (bad table footer)")
    footer, pos = data[-_FOOTER:], 0
    _, pos = _varint(footer, pos)  # meta-index block handle (unused)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    entries: dict[str, dict] = {}
    for _, handle in _block(data, index_offset, index_size, path):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block(data, offset, size, path):
            if not key:  # the empty key holds the BundleHeaderProto
                continue
            f = dict(_fields(value))
            if 7 in f:
                raise ValueError(f"{path}: {key.decode()}: sliced variables are not supported")
            if f.get(1, 0) not in _DTYPES:
                raise ValueError(f"{path}: {key.decode()}: unsupported dtype enum {f.get(1)}")
            entries[key.decode()] = {"dtype": _DTYPES[f.get(1, 0)], "shape": _shape(f.get(2, b"")),
                                     "shard": f.get(3, 0), "offset": f.get(4, 0), "size": f.get(5, 0)}
    return entries


def read_checkpoint(prefix: str | Path, skip_optimizer: bool = True) -> dict[str, np.ndarray]:
    """All variables of a TF checkpoint as NumPy arrays, by name.

    Parameters
    ----------
    prefix : path
        The checkpoint prefix (``PREFIX.index`` and ``PREFIX.data-*`` must exist). A checkpoint
        saved as a folder's bare prefix (files named ``.index``, as in the musicnn wheel) has the
        prefix ``folder/``.
    skip_optimizer : bool
        Leave out optimiser slots (names with an ``/Adam`` part) and the ``beta*_power``
        accumulators. Default True.
    """
    entries = read_index(prefix)
    shards: dict[int, bytes] = {}
    n_shards = 1 + max((e["shard"] for e in entries.values()), default=0)
    out: dict[str, np.ndarray] = {}
    for name, e in sorted(entries.items()):
        if skip_optimizer and ("/Adam" in name or name.endswith("_power")):
            continue
        if e["shard"] not in shards:
            data_path = Path(f"{prefix}.data-{e['shard']:05d}-of-{n_shards:05d}")
            shards[e["shard"]] = data_path.read_bytes()
        raw = shards[e["shard"]][e["offset"]:e["offset"] + e["size"]]
        dtype = np.dtype(e["dtype"]).newbyteorder("<")
        count = int(np.prod(e["shape"], dtype=np.int64))
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"{prefix}: {name}: {len(raw)} bytes for shape {e['shape']} of {dtype}")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(e["shape"]).astype(dtype.newbyteorder("="))
    return out
