"""Reading data files: IDX (MNIST's format, optionally gzipped) and .npz (CSV tables: tables.py).

Each reader checks what it reads and says what was expected, what was found and where.
Nothing here unpickles: .npz files are opened with allow_pickle=False.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

from .. import backend
from ..errors import DataError

np = backend.np

# IDX type codes (third byte of the magic number) -> dtype, big-endian as the format says.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path):
    """An IDX file (e.g. train-images-idx3-ubyte[.gz]) as a NumPy array. Reads no more than its header promises plus
    one byte, so a compressed file that inflates far beyond it (a decompression bomb) costs no memory or time."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            magic = read_at_most(f, 4)
            dtype, ndim = idx_type(magic, path)
            dims = read_at_most(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes)")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            size = int(np.prod(shape, dtype=object)) * dtype.itemsize
            payload = read_at_most(f, size + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(payload) != size:
        found = "more" if len(payload) > size else f"{4 + 4 * ndim + len(payload)} bytes"
        raise DataError(f"{path}: IDX header says shape {shape} ({4 + 4 * ndim + size} bytes) but the file has "
                        f"{found} (truncated or corrupt download?)")
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def idx_type(magic: bytes, path) -> tuple:
    """(dtype, number of dimensions) from an IDX file's four magic bytes."""
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (expected magic bytes 00 00 <type> <ndim>, "
                        f"got {magic[:4].hex(' ') or 'an empty file'})")
    return np.dtype(_IDX_TYPES[magic[2]]), magic[3]


def read_at_most(f, size: int, chunk: int = 1 << 24) -> bytes:
    """Up to `size` bytes of a file, read in chunks: memory follows what the file holds, not what a header claims."""
    parts, left = [], size
    while left > 0:
        part = f.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_npz(path: Path) -> dict:
    """Arrays of an .npz file; refuses object arrays (they would need pickle)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{path}: holds Python objects (pickled arrays); only plain numeric arrays are "
                            "accepted, since loading pickles can run code") from None
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None
