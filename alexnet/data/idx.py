"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the values in C order.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

UBYTE = 0x08
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class IdxError(ValueError):
    pass


def _open(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _header(f, path) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0":
        raise IdxError(f"{path} is not an IDX file")
    if magic[2] != UBYTE:
        raise IdxError(f"{path} holds IDX type 0x{magic[2]:02x}; only unsigned bytes (0x08) are supported")
    dims = magic[3]
    raw = f.read(4 * dims)
    if len(raw) < 4 * dims:
        raise IdxError(f"{path} is truncated")
    return tuple(int(d) for d in np.frombuffer(raw, ">u4"))


def check_idx_data(path: str | os.PathLike) -> tuple[int, ...]:
    """The header's shape, after checking that the file holds all the values it announces (a
    gzipped file is read through, in blocks): a truncated or damaged file is an :class:`IdxError`
    here, not a failure of the decoding processes later."""
    path = Path(path)
    try:
        with _open(path) as f:
            shape = _header(f, path)
            need = int(np.prod(shape, dtype=np.int64))
            if not isinstance(f, gzip.GzipFile):
                have = os.fstat(f.fileno()).st_size - f.tell()
            else:
                have = 0
                while have < need:
                    block = f.read(min(1 << 20, need - have))
                    if not block:
                        break
                    have += len(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise IdxError(f"{path} is a damaged or truncated gzip file ({e})") from None
    if have < need:
        raise IdxError(f"{path} is truncated: {have} of {need} bytes of values")
    return shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The whole array (uint8)."""
    try:
        with _open(Path(path)) as f:
            shape = _header(f, path)
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise IdxError(f"{path} is a damaged or truncated gzip file ({e})") from None
    count = int(np.prod(shape))
    if len(data) < count:
        raise IdxError(f"{path} is truncated: {len(data)} of {count} bytes")
    return np.frombuffer(data, np.uint8, count).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write a uint8 array; gzipped when ``compress`` (default: when the name ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    # mtime=0 keeps the gzip bytes reproducible
    with (gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) if compress else open(path, "wb")) as f:
        f.write(header)
        f.write(array.tobytes())


def half_pair(folder: Path, prefix: str) -> tuple[str, str] | None:
    """(the file found, the name missing) when only one of ``prefix``'s images / labels files is in ``folder``."""
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    found = [next((f"{prefix}-{kind}{ext}" for ext in ("", ".gz") if (folder / f"{prefix}-{kind}{ext}").is_file()), None)
             for kind in kinds]
    if (found[0] is None) == (found[1] is None):
        return None
    k = 0 if found[0] is None else 1
    return found[1 - k], f"{prefix}-{kinds[k]}[.gz]"


def find_idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """(images, labels) files named ``{prefix}-images-idx3-ubyte[.gz]`` etc., or None."""
    pairs = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = [folder / f"{prefix}-{kind}{ext}" for ext in ("", ".gz") if (folder / f"{prefix}-{kind}{ext}").is_file()]
        if not found:
            return None
        pairs.append(found[0])
    return pairs[0], pairs[1]
