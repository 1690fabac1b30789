"""Using a trained network: top-k predictions for image files (PyTorch or ONNX), and the image files of folders."""

from __future__ import annotations

import errno
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from alexnet.display import on_terminal
from alexnet.errors import UserError
from alexnet.evaluate import probabilities, top5_table
from alexnet.trained import ONNX_INPUT, ONNX_OUTPUT, is_export_dir, load_member, onnx_session, read_metadata


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool = True) -> Iterable:
    if not (enabled and on_terminal()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def predict_files(
    model_path: str, paths: Sequence[str], *, device: torch.device, ten_crop: bool = False, top: int = 5
) -> Iterator[tuple[str, list[tuple[str, float]] | str]]:
    """Yield (path, [(class, probability)...]) per image, or (path, reason) for one that can't be read.

    Each image is prepared as the training set was (shorter side to the stored size, centre
    crop, same channels), then evaluated like a validation image. ``model_path`` is a checkpoint,
    a run folder or an export; an export that holds an ONNX graph and no safetensors weights runs
    through onnxruntime (the centre crop only).
    """
    from alexnet.data.images import BadImage, decode_file

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UserError(f"--top must be at least 1 (a whole number), got {top!r}")
    paths = _path_list(paths)
    probabilities, size, channels, classes = _predictor(model_path, device, ten_crop)
    for path in paths:
        missing = unreadable_path(path)
        if missing:
            yield path, missing
            continue
        try:
            image, _ = decode_file(path, size, channels)
        except BadImage as e:
            yield path, str(e)
            continue
        probs = probabilities(np.array(image)[None])
        if not np.isfinite(probs).all():
            yield path, "the network's output for this image is NaN or infinite, so it predicts nothing"
            continue
        yield path, top5_table(probs, classes, k=min(top, len(classes)))[0]


def _predictor(model_path: str, device: torch.device, ten_crop: bool):
    """(uint8 images (N, S, S, C) -> probabilities (N, classes) as NumPy, S, C, class names) of a trained network."""
    files = read_metadata(model_path).get("files", {}) if is_export_dir(model_path) else {}
    if "onnx" in files and "safetensors" not in files:
        if ten_crop:
            raise UserError("an ONNX export runs the centre crop only; drop --ten-crop or export with --format safetensors")
        session, meta = onnx_session(model_path)
        return (lambda images: session.run([ONNX_OUTPUT], {ONNX_INPUT: images})[0],
                int(meta["image_size"]), int(meta["channels"]), list(meta["classes"]))
    member = load_member(model_path, device)
    return (lambda images: probabilities([member], torch.from_numpy(images), ten_crop=ten_crop).cpu().numpy(),
            member.image_size, member.channels, member.classes)


def _path_list(paths: Sequence[str]) -> list[str]:
    """``paths`` as a list; one path given bare (a str would be read as one path per character) is refused."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a list of paths, got the single path {paths!r}; pass [{paths!r}]")
    return list(paths)


def image_extensions() -> frozenset[str]:
    """File name endings of the formats Pillow can read (``.jpg``, ``.png``, ...), lower case."""
    from PIL import Image

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def expand_image_paths(paths: Sequence[str]) -> list[str]:
    """``paths`` with each folder replaced by the image files under it, recursively, in name order.

    Files are taken by their ending (Pillow's formats); hidden files and folders (``.name``) are
    left out and symbolic links to folders are not followed (no loops). A folder holding no image,
    and a folder that cannot be listed, stays in the list, so that it is reported rather than
    silently dropped (:func:`unreadable_path` says why).
    """
    paths = _path_list(paths)
    endings = image_extensions()
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found, unlisted = [], []
        for root, dirs, files in os.walk(path, onerror=lambda e: unlisted.append(e.filename)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, f) for f in sorted(files)
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in endings]
        out += found or ([] if unlisted else [path])
        out += sorted(unlisted)
    return out


def unreadable_path(path: str) -> str | None:
    """Why ``path`` cannot be an image file at all (not found, a folder), or None."""
    if os.path.isdir(path):
        try:
            os.scandir(path).close()
        except OSError as e:
            return f"a folder that cannot be listed: {e.strerror}"
        return "a folder holding no image files (JPEG, PNG, ...)"
    if not os.path.lexists(path):
        return "not found"
    if not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "a loop of symbolic links"
            if not isinstance(e, FileNotFoundError):
                return f"unreadable: {e.strerror}"
        return "not found (a symbolic link to a missing file)"
    if not os.path.isfile(path):  # reading a FIFO would wait forever
        return "not a regular file (a FIFO, socket or device)"
    return None
