"""Just enough of the MATLAB 5 MAT-file format to read the ILSVRC devkit's ``meta.mat``.

The devkit's ``ILSVRC2012_validation_ground_truth.txt`` gives each validation image an
ILSVRC2012_ID from 1 to 1000. Those IDs are NOT in sorted-WNID order (ID 1 is n02119789, while
the sorted first WNID is n01440764); the mapping lives only in ``meta.mat``'s ``synsets`` struct
array. Reading it here keeps SciPy out of the dependencies.

Supported: little- and big-endian files, compressed (miCOMPRESSED) and plain elements, numeric,
char, cell and struct arrays. Not supported (not used by the devkit): sparse, object and
function-handle arrays, complex numbers.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8", 16: "u1"}
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_CELL, MX_STRUCT, MX_CHAR = 1, 2, 4


class MatFileError(ValueError):
    pass


def read_mat(path: str | Path) -> dict:
    """Top-level variables by name: numeric arrays as NumPy arrays, char arrays as str,
    cell arrays as lists, struct arrays as lists of dicts (in MATLAB's column-major order)."""
    data = Path(path).read_bytes()
    if len(data) < 128:
        raise MatFileError("too short for a MAT-file")
    endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if endian is None or data[124:126] not in (b"\x00\x01", b"\x01\x00"):
        raise MatFileError("not a MATLAB 5 MAT-file")
    variables = {}
    pos = 128
    while pos + 8 <= len(data):
        kind, payload, pos = _element(data, pos, endian)
        if kind == MI_COMPRESSED:
            kind, payload, _ = _element(zlib.decompress(payload), 0, endian)
        if kind == MI_MATRIX:
            name, value = _matrix(payload, endian)
            variables[name] = value
    return variables


def _element(data: bytes, pos: int, endian: str) -> tuple[int, bytes, int]:
    """One data element at ``pos``: (type, payload, position of the next element)."""
    head = int(np.frombuffer(data, endian + "u4", 1, pos)[0])
    if head >> 16:  # small element: type and size in one word, data in the next four bytes
        kind, size = head & 0xFFFF, head >> 16
        return kind, data[pos + 4 : pos + 4 + size], pos + 8
    size = int(np.frombuffer(data, endian + "u4", 1, pos + 4)[0])
    start = pos + 8
    end = start + size
    if end > len(data):
        raise MatFileError("truncated data element")
    if head == MI_COMPRESSED:
        return head, data[start:end], end
    return head, data[start:end], start + (size + 7) // 8 * 8


def _numbers(kind: int, payload: bytes, endian: str) -> np.ndarray:
    if kind not in MI_TYPES:
        raise MatFileError(f"unsupported data type {kind}")
    return np.frombuffer(payload, endian + MI_TYPES[kind])


def _matrix(payload: bytes, endian: str):
    """(name, value) of one miMATRIX element's payload."""
    if not payload:
        return "", np.zeros((0, 0))
    kind, flags, pos = _element(payload, 0, endian)
    mx_class = int(_numbers(kind, flags, endian)[0]) & 0xFF
    kind, dims, pos = _element(payload, pos, endian)
    shape = tuple(int(d) for d in _numbers(kind, dims, endian))
    kind, name, pos = _element(payload, pos, endian)
    name = name.decode("latin-1")
    count = int(np.prod(shape))
    if mx_class == MX_CHAR:
        kind, chars, pos = _element(payload, pos, endian)
        if kind == 16:
            return name, chars.decode("utf-8")
        codes = _numbers(kind, chars, endian).reshape(shape[::-1])  # column-major
        return name, "\n".join("".join(map(chr, row)) for row in codes.T) if codes.size else ""
    if mx_class == MX_CELL:
        cells = []
        for _ in range(count):
            _, cell, pos = _element(payload, pos, endian)
            cells.append(_matrix(cell, endian)[1])
        return name, cells
    if mx_class == MX_STRUCT:
        kind, length, pos = _element(payload, pos, endian)
        field_length = int(_numbers(kind, length, endian)[0])
        kind, names, pos = _element(payload, pos, endian)
        fields = [names[i : i + field_length].split(b"\0")[0].decode("latin-1") for i in range(0, len(names), field_length)]
        records = []
        for _ in range(count):
            record = {}
            for field in fields:
                _, value, pos = _element(payload, pos, endian)
                record[field] = _matrix(value, endian)[1]
            records.append(record)
        return name, records
    kind, real, pos = _element(payload, pos, endian)
    return name, _numbers(kind, real, endian).reshape(shape[::-1]).T


def ilsvrc_id_to_wnid(meta_mat: str | Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID from the devkit's ``data/meta.mat``."""
    try:
        synsets = read_mat(meta_mat)["synsets"]
        return {int(np.asarray(s["ILSVRC2012_ID"]).ravel()[0]): str(s["WNID"]) for s in synsets}
    except (KeyError, IndexError, TypeError, MatFileError, zlib.error) as e:
        raise MatFileError(f"{meta_mat} has no readable 'synsets' table ({e})") from None
