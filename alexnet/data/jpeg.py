"""The JPEG encoding of a store: written once by ``alexnet prepare``, decoded in batches for training.

A JPEG store keeps each S x S image as a JPEG (quality 90 by default, 4:2:0 chroma for colour)
instead of S*S*C raw bytes: at 256x256 about a sixth of the size (measured figures in the README),
so ILSVRC-2012 fits in about 40 GB instead of 240 GB. The split's files::

    {split}_jpeg/part-000000.bin  the JPEGs of one prepare chunk back to back, then a trailer:
                                  their byte lengths and CRC-32s (int64 each), their count
                                  (int64), b"AXJPEG01"
    {split}_index.npy             int64 (N, 4): part, byte offset, byte length, CRC-32 of each image

Parts are written whole to a temporary name, fsynced and renamed, so a part either exists
complete or not at all (prepare resumes chunk by chunk). The index is written at the end, after
the skipped files' rows are filled as in a raw store; the payloads are never moved.

Decoding uses simplejpeg (libjpeg-turbo, bundled in its wheels), which releases the GIL, so the
threads of :class:`alexnet.data.Loader` decode batches in parallel; each image is decoded straight
into its row of the (pinned) batch. Every payload's CRC-32 is checked before it is decoded, so a
damaged image is always reported (:class:`CorruptImage`, with its index and file), never decoded
into wrong pixels silently.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from alexnet.errors import UserError

QUALITY = 90
MAGIC = b"AXJPEG01"
INDEX_COLUMNS = 4  # part, offset, length, crc32
_GAP_BYTES = 64 * 1024  # payloads of one part closer than this are read with one pread


def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:
        raise UserError("JPEG stores need the simplejpeg package; install it with 'pip install simplejpeg'") from None
    return simplejpeg


def part_dir(split: str) -> str:
    return f"{split}_jpeg"


def index_file(split: str) -> str:
    return f"{split}_index.npy"


def part_name(part: int) -> str:
    return f"part-{part:06d}.bin"


class CorruptImage(Exception):
    """Images of a batch whose payload is damaged; ``bad`` lists (position in the batch, image
    index, description with the file and bytes). The other rows of the batch were decoded."""

    def __init__(self, bad: list[tuple[int, int, str]]) -> None:
        self.bad = bad
        super().__init__("; ".join(text for _, _, text in bad))


# --- encoding (prepare) ----------------------------------------------------------------------


def encode(pixels: np.ndarray, quality: int = QUALITY) -> bytes:
    """A (S, S, C) uint8 image as JPEG bytes: 4:2:0 chroma for RGB, grayscale for C = 1."""
    sj = _simplejpeg()
    pixels = np.ascontiguousarray(pixels)
    if pixels.shape[-1] == 1:
        return sj.encode_jpeg(pixels, quality, colorspace="GRAY", colorsubsampling="Gray")
    return sj.encode_jpeg(pixels, quality, colorspace="RGB", colorsubsampling="420")


def decode_into(data, out: np.ndarray) -> None:
    """Decode JPEG bytes into ``out`` ((S, S, C) uint8, C-contiguous); ValueError if they do not
    decode to exactly that shape."""
    sj = _simplejpeg()
    colorspace = "GRAY" if out.shape[-1] == 1 else "RGB"
    direct = out.flags.c_contiguous  # then simplejpeg decodes into out itself
    decoded = sj.decode_jpeg(data, colorspace=colorspace, buffer=out if direct else None)
    if decoded.shape != out.shape:
        raise ValueError(f"decodes to {decoded.shape}, expected {out.shape}")
    if not direct:
        out[...] = decoded


def write_part(path: Path, payloads: list[bytes]) -> None:
    """Write one part atomically: the payloads, their lengths, their CRC-32s, their count, the magic."""
    lengths = np.array([len(p) for p in payloads], "<i8")
    crcs = np.array([zlib.crc32(p) for p in payloads], "<i8")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for p in payloads:
            f.write(p)
        f.write(lengths.tobytes())
        f.write(crcs.tobytes())
        f.write(np.int64(len(payloads)).astype("<i8").tobytes())
        f.write(MAGIC)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_part_trailer(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The payload lengths and CRC-32s recorded in a part's trailer; ValueError if it is not a whole part."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < 16:
            raise ValueError(f"{path} is too short to be a store part")
        f.seek(size - 16)
        tail = f.read(16)
        if tail[8:] != MAGIC:
            raise ValueError(f"{path} has no part trailer")
        n = int(np.frombuffer(tail[:8], "<i8")[0])
        if n < 0 or 16 + 16 * n > size:
            raise ValueError(f"{path} has a damaged trailer")
        f.seek(size - 16 - 16 * n)
        table = np.frombuffer(f.read(16 * n), "<i8").astype(np.int64)
    lengths, crcs = table[:n], table[n:]
    if lengths.min(initial=0) < 0 or lengths.sum() + 16 + 16 * n != size:
        raise ValueError(f"{path} has a damaged trailer")
    return lengths, crcs


def part_index(folder: Path, part: int, expected: int) -> np.ndarray:
    """The (expected, 4) index rows of one part: part, offset, length, crc32 (from its trailer)."""
    path = folder / part_name(part)
    lengths, crcs = read_part_trailer(path)
    if len(lengths) != expected:
        raise ValueError(f"{path} holds {len(lengths)} images, expected {expected}")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    rows = np.empty((expected, INDEX_COLUMNS), np.int64)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = part, offsets, lengths, crcs
    return rows


# --- reading (training) ----------------------------------------------------------------------


def check_jpeg_index(folder: Path, index: np.ndarray) -> str | None:
    """What is wrong with a split's index and part files, from their sizes alone; None if nothing."""
    if len(index) == 0:
        return None
    parts, offsets, lengths = (np.asarray(index[:, c]) for c in range(3))
    if parts.min() < 0 or offsets.min() < 0 or lengths.min() < 0:
        return "holds negative part numbers, offsets or lengths"
    if lengths.min() == 0:
        return f"holds a zero length (image {int(np.argmin(lengths))}): no image is empty"
    ends = np.zeros(int(parts.max()) + 1, np.int64)
    np.maximum.at(ends, parts, offsets + lengths)
    for part in np.flatnonzero(ends):
        try:
            size = os.stat(folder / part_name(int(part))).st_size
        except OSError:
            return f"names {folder / part_name(int(part))}, which is missing"
        if size < ends[part]:
            return f"names bytes up to {ends[part]} of {folder / part_name(int(part))}, which has {size}"
    return None




class JpegImages:
    """A split's JPEG images, read like a read-only (N, S, S, C) uint8 array.

    ``images[i]``, ``images[a:b]``, ``images[array]`` and ``np.asarray(images)`` decode what they
    select; :meth:`read` decodes a batch into a given buffer. Thread-safe: every call opens the
    part files it needs (a store may hold thousands) and reads with ``os.pread``.
    ``drop_behind`` (for benchmarks) tells the kernel to drop each range from the page cache
    once it is read, as if the store were much larger than memory.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, folder: Path, index: np.ndarray, image_size: int, channels: int, split: str = "") -> None:
        if index.ndim != 2 or index.shape[1] != INDEX_COLUMNS:
            raise ValueError(f"a JPEG index has shape (N, {INDEX_COLUMNS}), got {index.shape}")
        self.folder, self.index, self.split = Path(folder), index, split
        self.shape = (len(index), image_size, image_size, channels)
        self.drop_behind = False

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"JpegImages({str(self.folder)!r}, shape={self.shape})"

    def where(self, i: int) -> str:
        part, offset, length, _ = (int(v) for v in self.index[i])
        return f"{self.folder / part_name(part)}, bytes {offset}-{offset + length}"

    def _payloads(self, indices: np.ndarray) -> list:
        """The payload bytes of ``indices`` (as memoryviews), reading each part's runs in file order."""
        entries = self.index[indices]
        order = np.lexsort((entries[:, 1], entries[:, 0])).tolist()
        parts, offsets, lengths = (entries[:, c].tolist() for c in range(3))  # plain ints: little time under the GIL
        payloads: list = [None] * len(indices)
        k = 0
        while k < len(order):
            part = parts[order[k]]
            end = k
            while end < len(order) and parts[order[end]] == part:
                end += 1
            path = self.folder / part_name(part)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise UserError(f"{path} cannot be read ({e.strerror}); the store is damaged, rebuild it with 'alexnet prepare ... --force'") from None
            try:
                run = k
                while run < end:  # one pread per run of payloads that lie close together
                    stop = run + 1
                    lo = offsets[order[run]]
                    hi = lo + lengths[order[run]]
                    while stop < end and offsets[order[stop]] - hi <= _GAP_BYTES:
                        hi = max(hi, offsets[order[stop]] + lengths[order[stop]])
                        stop += 1
                    view = memoryview(os.pread(fd, hi - lo, lo))
                    if self.drop_behind:
                        os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
                    for j in order[run:stop]:
                        off = offsets[j] - lo
                        payloads[j] = view[off : off + lengths[j]]
                    run = stop
            finally:
                os.close(fd)
            k = end
        return payloads

    def read(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """Decode images ``indices`` into ``out`` ((len, S, S, C) uint8, C-contiguous; made if None).

        Raises :class:`CorruptImage` naming the damaged images after decoding all the others.
        """
        indices = np.asarray(indices, np.int64).reshape(-1)
        n = len(self)
        if len(indices) and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        indices = np.where(indices < 0, indices + n, indices)
        if out is None:
            out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        bad = []
        expected = self.index[indices][:, 2:].tolist()
        for j, data in enumerate(self._payloads(indices)):
            length, crc = expected[j]
            if len(data) != length:
                reason = "the file is shorter than the index says"
            elif zlib.crc32(data) != crc:
                reason = "its bytes do not match their CRC-32"
            else:
                try:
                    decode_into(data, out[j])
                    continue
                except ValueError as e:
                    reason = f"it does not decode ({e})"
            out[j] = 0
            i = int(indices[j])
            bad.append((j, i, f"image {i} of split {self.split!r} is corrupt ({self.where(i)}): {reason}"))
        if bad:
            raise CorruptImage(bad)
        return out

    def verify(self, batch: int = 256) -> list[str]:
        """Decode every image; the descriptions of the corrupt ones (empty if none)."""
        found = []
        for start in range(0, len(self), batch):
            try:
                self.read(np.arange(start, min(start + batch, len(self))))
            except CorruptImage as e:
                found += [text for _, _, text in e.bad]
        return found

    def _read_or_say(self, indices) -> np.ndarray:
        """:meth:`read` for array-style access: a corrupt image is one clear line (a UserError)."""
        try:
            return self.read(indices)
        except CorruptImage as e:
            more = f" (and {len(e.bad) - 1} more)" if len(e.bad) > 1 else ""
            raise UserError(f"{e.bad[0][2]}{more}; rebuild the store with 'alexnet prepare ... --force'") from None

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read_or_say([int(key)])[0]
        if isinstance(key, slice):
            return self._read_or_say(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} images")
            key = np.flatnonzero(key)
        if key.ndim == 0:
            return self._read_or_say([int(key)])[0]
        return self._read_or_say(key.reshape(-1)).reshape(*key.shape, *self.shape[1:])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self._read_or_say(np.arange(len(self)))
        return images if dtype is None else images.astype(dtype)
