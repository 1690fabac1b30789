"""Checkpoints: written atomically, read without executing code.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``: a pickle that carries code is refused. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one
(:mod:`alexnet.atomic`), so a crash at any moment leaves either the previous checkpoint or the
new one, never half of one.

Reading (:func:`read_torch_file`) checks the file before torch reads it: one that does not start
as torch.save's zip archive is refused unread (a PNG or JPEG image, a text or a bare pickle named
for what it is), and so is a zip archive whose members would inflate beyond the file. What a
checkpoint holds is checked by :func:`alexnet.trained.validate` before a network is built from it.

Contents (``FORMAT`` marks the file as ours):
    format, version
    model_args        the network's arch and keyword arguments (alexnet.trained.build_network)
    data              classes, image_size, channels, mean_image (uint8-derived float tensor)
    config            the resolved TrainConfig as a dict
    model             the single-device (grouped) state dict
    optimizer, schedule, rng, progress   (for resuming; absent from exported weights)
"""

from __future__ import annotations

import codecs
import errno
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from alexnet.atomic import atomic_write_bytes
from alexnet.errors import UserError

FORMAT = "alexnet-checkpoint"
VERSION = 1


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a checkpoint atomically; ``payload`` must hold only tensors and plain values.

    A tensor that is a view of a larger storage (the one-pass PaperSGD keeps weights and
    velocities as views of flat buffers) is saved as a copy of its own elements, so that every
    tensor of a checkpoint stands alone, whoever reads it."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **_standalone(payload)}, buffer)
    kept = "the previous checkpoint is kept" if Path(path).is_file() else "none was written before"
    try:
        atomic_write_bytes(path, buffer.getvalue(), fault_point="checkpoint-write")
    except OSError as e:
        size = f" ({buffer.tell() / 2**20:.1f} MiB)" if e.errno == errno.ENOSPC else ""
        raise UserError(f"could not write checkpoint {path}{size}: {e.strerror or e}; {kept}") from None


def _standalone(value):
    """``value`` with every tensor that does not own its whole storage replaced by a compact copy."""
    if isinstance(value, torch.Tensor):
        whole = value.untyped_storage().nbytes() == value.numel() * value.element_size()
        return value if whole and value.is_contiguous() else value.clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        copy = value.copy()
        for key, item in value.items():
            copy[key] = _standalone(item)
        return copy
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_standalone(v) for v in value)
    return value


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # PyTorch's pre-1.6 format: protocol 2, its magic number
CHECKPOINT = "an alexnet checkpoint (a .pt file written by 'alexnet train')"
# The first bytes of the files most often named by mistake, for the line that refuses them.
KNOWN_HEADS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
               (b"\x80", "a Python pickle or a legacy PyTorch file"))  # pickle protocol 2+, PyTorch's legacy format


def _what_it_is(head: bytes) -> str | None:
    """What a file that torch.save did not write is, from its first bytes; None when alexnet cannot tell."""
    for magic, name in KNOWN_HEADS:
        if head.startswith(magic):
            return name
    try:  # final=False: a character cut at the end of the sample is no fault
        codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return None
    return "a text file" if b"\x00" not in head else None


def _check_archive(path: Path) -> None:
    """Refuse a zip archive whose members would inflate beyond the file (a zip bomb) before torch reads it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {e}); use an earlier checkpoint") from None
    size = path.stat().st_size
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or sum(m.file_size for m in members) > size:
        raise UserError(f"{path} is not a checkpoint written by torch.save (its members are compressed or larger than "
                        "the file); refused without reading it")


def read_torch_file(path: str | Path, *, expect: str = CHECKPOINT, legacy: bool = False) -> Any:
    """What ``torch.load(path, weights_only=True)`` returns on the CPU, or a one-line UserError saying what the file is.

    The one reader of PyTorch files given by a user (checkpoints, torchvision's weights). A file
    that does not start as torch.save's zip archive is refused unread, named for what it is
    (``expect`` says what was wanted), and so is a zip archive whose members would inflate.
    ``legacy`` also accepts PyTorch's pre-1.6 format (torchvision's published weights). No
    message of torch's unpickler is passed on: it can advise ``weights_only=False``, which would
    run the file's code.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not {expect}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise UserError(f"{path} is empty (0 bytes), not {expect}")
    if head.startswith(ZIP_MAGIC):
        _check_archive(path)
    elif not (legacy and head.startswith(LEGACY_MAGIC)):
        kind = _what_it_is(head)
        if kind is None:
            raise UserError(f"{path} is not a PyTorch file (neither torch.save's zip format nor a kind of file alexnet "
                            f"knows); it is not {expect}")
        raise UserError(f"{path} is {kind}, not {expect}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if any(w in str(e) for w in ("Unsupported global", "GLOBAL", "Unsupported class")):
            raise UserError(f"refused to load {path}: it holds Python objects that would run code when loaded; "
                            "only load files that hold tensors alone (a whole model saved with torch.save(model): "
                            "save model.state_dict() instead)") from None
        raise UserError(f"{path} is not a readable PyTorch file (truncated, corrupt or not one: "
                        f"{_unpickler_detail(e)}); it is not {expect}") from None
    except Exception as e:  # the unpickler raises many kinds on garbage: all mean "not readable"
        raise UserError(f"{path} is not a readable PyTorch file (truncated, corrupt or not one: "
                        f"{type(e).__name__}); it is not {expect}") from None


def _unpickler_detail(e: Exception) -> str:
    """The reason in torch's weights-only unpickler message, without its advice to load unsafely."""
    lines = [x.strip() for x in str(e).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or next((x for x in lines[i + 1:] if x), "")
            return rest or type(e).__name__
    return type(e).__name__


def load(path: str | Path) -> dict[str, Any]:
    """The contents of the checkpoint file ``path``, read without executing code (:func:`read_torch_file`),
    on the CPU; a one-line UserError for a file that is not one, or one of a newer format.

    What it holds is checked by :func:`alexnet.trained.validate` before a network is built from it
    (:func:`alexnet.trained.load` reads and validates every kind of trained network)."""
    payload = read_torch_file(path)
    if isinstance(payload, dict) and payload and payload.get("format") != FORMAT and all(
            isinstance(k, str) and k.startswith(("features.", "classifier.")) for k in payload):
        if any(".conv1." in k or ".fc8." in k for k in payload):  # this package's layer names
            raise UserError(f"{path} is a bare state dict of this package's network, without the class names, mean "
                            "image and recipe a checkpoint carries; use the run's best.pt or last.pt, or an export")
        raise UserError(f"{path} is a bare state dict, not an alexnet checkpoint; if it holds torchvision's AlexNet, "
                        f"turn it into one with 'alexnet import-torchvision {path} --out FILE.pt'")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is a PyTorch file but not an alexnet checkpoint")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise UserError(f"{path} was written by a newer alexnet (format {payload.get('version')!r}); upgrade alexnet")
    return payload
