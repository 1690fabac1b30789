"""A trained network out of this package: safetensors weights, an ONNX graph, torchvision's keys.

An export is a folder:

    alexnet.json             what is needed to rebuild and use the network (below); written last,
                             so a folder without it is an unfinished export
    model.safetensors        the weights, single-device layout (``--format safetensors``)
    mean_image.safetensors   the training set's per-pixel mean, key ``mean_image``, float32 (S, S, C)
    model.onnx               the whole test-time path as one graph (``--format onnx``)
    torchvision_alexnet.pth  a state dict under torchvision's keys (``--format torchvision``)

The folder is built whole beside ``--out`` and then swapped in (:func:`alexnet.atomic.replace_folder`):
an export being replaced (``--overwrite``) stays as it was until the new one is complete, whatever
stops the export (a full disk, SIGTERM, SIGKILL); a killed export's folder is swept by the next.

``alexnet.json`` holds ``model_args`` (what :func:`alexnet.trained.build_network` builds),
``classes``, ``image_size`` (the side S of the stored images), ``channels``, ``crop_size``,
``subtract_mean``, ``input_scale``, where the mean image is, the ONNX graph's inputs and opset, and
a digest of each other file (``digests``): a file copied in from another export is refused when read.

The ONNX graph takes what ``alexnet prepare`` and ``alexnet predict`` make of an image: a uint8
batch ``images`` of shape (N, S, S, C) (NHWC; the image's shorter side resized to S, the central
S x S square), N free. It cuts the centre ``crop_size`` patch, subtracts the mean image's
patch, multiplies by ``input_scale``, runs the network in eval mode and returns ``probabilities``
(N, classes), the softmax. Opset :data:`ONNX_OPSET`, exported with ``torch.onnx.export(dynamo=True)``
(the default exporter of torch 2.9 and later, chosen over the deprecated TorchScript one; it
needs ``onnxscript``, in the ``onnx`` extra).

The network is rebuilt from the checkpoint's weights (:func:`alexnet.trained.build_trained`), so
training-time swaps (fused blocks, a space-to-depth conv1) never reach the graph, and exported
from its ``eval()`` forward, so whatever the dropout style, the graph computes its test-time
function. LRN leaves through a plain-torch path, never the fused kernels
of :mod:`alexnet.kernels`: each LRN becomes ONNX's ``LRN`` operator (per tower: Split, LRN,
Concat). ONNX divides its alpha by ``size`` (``x / (bias + alpha / size * sum) ** beta``, as Caffe),
so the paper's alpha (which multiplies the plain sum) is written as ``alpha * size``. ONNX's
window for an even ``size`` is not this package's, so an even-sized LRN is written as primitive
operations instead. :mod:`alexnet.trained` reads an export back.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from alexnet.atomic import (atomic_write_bytes, can_replace_folder, replace_folder, stale_temporaries,
                            sweep_dead_temporaries, temporary_folder)
from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm, effective_alpha, lrn_reference
from alexnet.torchvision_alexnet import FOLDED_STD, folded_std
from alexnet.trained import (EXPORT_FILES, EXPORT_FORMAT, EXPORT_VERSION, MEAN_FILE, META_FILE, ONNX_FILE, ONNX_INPUT,
                             ONNX_OUTPUT, TORCHVISION_FILE, WEIGHTS_FILE, build_trained, file_digest, is_export_dir)

FORMATS = tuple(EXPORT_FILES)
ONNX_OPSET = 18


def metadata(payload: dict, source: str) -> dict:
    """The ``alexnet.json`` of a checkpoint payload (no files listed yet)."""
    data, config = payload["data"], payload.get("config", {})
    mean = data["mean_image"]
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "source": str(source),
        "model_args": dict(payload["model_args"]),
        "classes": list(data["classes"]),
        "image_size": int(data["image_size"]),
        "channels": int(data["channels"]),
        "crop_size": int(config["crop_size"]),
        "subtract_mean": bool(config.get("subtract_mean", True)),
        "input_scale": float(config.get("input_scale", 1.0)),
        "mean_image": {"file": MEAN_FILE, "key": "mean_image", "dtype": "float32", "shape": list(mean.shape),
                       "layout": "HWC, 0-255 pixel units"},
        "training_config": _plain(config),
        "files": {},
        **({FOLDED_STD: list(folded_std(payload))} if FOLDED_STD in data else {}),
    }


def _plain(value):
    """``value`` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(value, default=str))


def _check_out_dir(out: Path, overwrite: bool, source: str = "") -> list[Path]:
    """Refuse an ``out`` the export would mix with or lose data in; the files of an export already there."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --out names a folder for the export")
    for parent in out.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {out}: {parent} is a file, not a folder")
        if is_export_dir(parent):  # an export folder holds its export and nothing else
            raise UserError(f"--out {out} is inside the export folder {parent}; export to a folder outside it")
    if source and out.exists() and Path(source).exists() and Path(source).resolve() == out.resolve():
        # --overwrite would delete what is being read: a failure half-way would leave neither
        what = "the export being read" if is_export_dir(out) else "the folder the network is read from"
        raise UserError(f"--out {out} is {what} ({source}); export to another folder")
    ours = [out / META_FILE] + [out / name for f in FORMATS for name in EXPORT_FILES[f]]
    present = [p.name for p in ours if p.exists()]
    # Temporary files of an export that was killed while writing are not someone else's files.
    stale = {t for p in ours for t in stale_temporaries(p)}
    others = sorted(p.name for p in out.iterdir() if p not in ours and p not in stale) if out.is_dir() else []
    if others:  # a run folder, a data set, anything else: an export there would mix with it
        raise UserError(f"{out} holds other files ({', '.join(others[:3])}); export to a new or empty folder")
    if present and not overwrite:
        raise UserError(f"{out} already holds an export ({', '.join(present)}); choose another --out or add --overwrite")
    return [p for p in ours if p.exists()]


def write_export(payload: dict, out: str | Path, formats: Sequence[str], *, source: str = "", overwrite: bool = False) -> dict:
    """Export a checkpoint payload to the folder ``out`` in ``formats``; returns the written ``alexnet.json``."""
    if not str(out).strip():
        raise UserError("--out is empty; name a new or empty folder for the export")
    out = Path(out)
    formats = list(dict.fromkeys(formats))
    for f in formats:
        if f not in FORMATS:
            raise UserError(f"unknown export format {f!r}; use {', '.join(FORMATS)}")
    if "onnx" in formats:
        _require("onnx", "onnxscript", "onnxruntime")
    if "torchvision" in formats and payload["model_args"].get("arch") != "torchvision":
        raise UserError("--format torchvision needs a network with torchvision's layout (from 'alexnet import-torchvision'); "
                        "the paper's AlexNet has other layers")
    meta = metadata(payload, source)
    _check_out_dir(out, overwrite, source)
    # Every file is made in memory first, so that nothing in ``out`` is touched (an export being
    # replaced included) until the whole export exists; a failure before then changes nothing.
    contents = {}
    # The mean image is needed by every format's user (the ONNX graph holds it too).
    contents[MEAN_FILE] = _safetensors_bytes({"mean_image": payload["data"]["mean_image"]})
    meta["files"]["mean_image"] = MEAN_FILE
    if "safetensors" in formats:
        contents[WEIGHTS_FILE] = _safetensors_bytes(payload["model"])
        meta["files"]["safetensors"] = WEIGHTS_FILE
    if "onnx" in formats:
        contents[ONNX_FILE] = onnx_bytes(build_trained(payload), {**_preprocessing(meta), "classes": meta["classes"]},
                                         payload["data"]["mean_image"])
        meta["files"]["onnx"] = ONNX_FILE
        meta["onnx"] = {
            "file": ONNX_FILE, "opset": ONNX_OPSET,
            "input": {"name": ONNX_INPUT, "dtype": "uint8", "layout": "NHWC",
                      "shape": ["N", meta["image_size"], meta["image_size"], meta["channels"]]},
            "output": {"name": ONNX_OUTPUT, "dtype": "float32", "shape": ["N", len(meta["classes"])],
                       "what": "softmax probabilities, in the order of 'classes'"},
        }
    if "torchvision" in formats:
        from alexnet.torchvision_alexnet import to_torchvision_state_dict, unfold_input_std

        state = payload["model"]
        std = folded_std(payload)
        if std:
            state = unfold_input_std(state, tuple(std))
        buffer = io.BytesIO()
        torch.save(to_torchvision_state_dict(state), buffer)
        contents[TORCHVISION_FILE] = buffer.getvalue()
        meta["files"]["torchvision"] = TORCHVISION_FILE
        meta["torchvision"] = {"file": TORCHVISION_FILE, "input_std_unfolded": bool(std),
                               "preprocessing": "torchvision's ImageNet normalisation" if std else
                               "this export's mean image and input_scale, not torchvision's normalisation"}
    # Checked again just before writing: another export may have finished there meanwhile.
    old = _check_out_dir(out, overwrite, source)
    meta["digests"] = {name: file_digest(data) for name, data in contents.items()}  # checked when read back
    contents[META_FILE] = (json.dumps(meta, indent=1) + "\n").encode()  # last: it makes the folder an export
    target = out.resolve() if out.exists() else Path(os.path.abspath(out))
    target.parent.mkdir(parents=True, exist_ok=True)
    swap = bool(old or not target.exists()) and can_replace_folder(target)
    if swap:  # built beside, swapped in whole
        sweep_dead_temporaries(target.parent, target.name)
        folder = temporary_folder(target)
    else:  # an empty folder (nothing to keep), or one no rename replaces: its old files go, the description first
        folder = target
        for path in sorted(old, key=lambda p: p.name != META_FILE):
            path.unlink()
    try:
        for name, data in contents.items():
            atomic_write_bytes(folder / name, data, fault_point="export-write")
        if swap:
            replace_folder(folder, target)
    except BaseException:
        if swap:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return meta


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in tensors.items()})


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install 'alexnet[onnx]'")


def _preprocessing(meta: dict) -> dict:
    return {k: meta[k] for k in ("image_size", "channels", "crop_size", "subtract_mean", "input_scale")}


# --------------------------------------------------------------------------------------------
# ONNX


@torch.library.custom_op("alexnet_export::lrn", mutates_args=())
def _lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """LRN in plain torch ops (``alpha`` multiplies the plain sum); a named op so the exporter can map it to ONNX's LRN."""
    return lrn_reference(x, size, alpha, beta, k, "paper", groups)


@_lrn_op.register_fake
def _(x, size, alpha, beta, k, groups):
    return torch.empty_like(x)


class PlainLRN(nn.Module):
    """A :class:`LocalResponseNorm` computed with plain torch ops, for export."""

    def __init__(self, lrn: LocalResponseNorm) -> None:
        super().__init__()
        self.size, self.beta, self.k, self.groups = lrn.size, lrn.beta, lrn.k, lrn.groups
        self.alpha = effective_alpha(lrn.alpha, lrn.size, lrn.convention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size % 2 == 0:  # ONNX's window differs for even sizes: primitive ops
            return lrn_reference(x, self.size, self.alpha, self.beta, self.k, "paper", self.groups)
        return _lrn_op(x, self.size, self.alpha, self.beta, self.k, self.groups)


def _lrn_to_onnx(x, size: int, alpha: float, beta: float, k: float, groups: int):
    """ONNX's LRN computes ``x / (bias + alpha / size * sum) ** beta``: its alpha is ours times ``size``."""
    from onnxscript import opset18 as op

    def lrn(t):
        return op.LRN(t, size=size, alpha=alpha * size, beta=beta, bias=k)

    if groups == 1:
        return lrn(x)
    return op.Concat(*[lrn(t) for t in op.Split(x, axis=1, num_outputs=groups)], axis=1)


def plain_torch_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every LRN computed in plain torch ops (no custom kernels)."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, PlainLRN(child))
    return model


class InferencePath(nn.Module):
    """uint8 images (N, S, S, C) -> softmax probabilities: centre crop, centring, scale, network.

    The same arithmetic as :class:`alexnet.data.augment.EvalPreprocess` with one centre crop
    followed by the softmax of :func:`alexnet.evaluate.probabilities`.
    """

    def __init__(self, network: nn.Module, mean_image: torch.Tensor, *, image_size: int, crop_size: int,
                 subtract_mean: bool = True, input_scale: float = 1.0, **_ignored) -> None:
        super().__init__()
        self.network = network
        self.top = (image_size - crop_size) // 2
        self.crop_size, self.subtract_mean, self.input_scale = crop_size, subtract_mean, float(input_scale)
        patch = mean_image.detach().float()[self.top : self.top + crop_size, self.top : self.top + crop_size]
        self.register_buffer("mean_patch", patch.permute(2, 0, 1).contiguous())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        a, b = self.top, self.top + self.crop_size
        x = images[:, a:b, a:b, :].permute(0, 3, 1, 2).float()
        if self.subtract_mean:
            x = x - self.mean_patch
        if self.input_scale != 1.0:
            x = x * self.input_scale
        return torch.softmax(self.network(x).float(), dim=1)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and warns about torchvision ops it cannot find; keep the CLI's output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    import warnings

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def onnx_model(module: nn.Module, example: torch.Tensor, *, input_name: str = ONNX_INPUT,
               output_name: str = ONNX_OUTPUT, metadata: dict | None = None):
    """``module`` (eval mode, plain torch: see :func:`plain_torch_copy`) as an ``onnx.ModelProto``, axis 0 free."""
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, opset_version=ONNX_OPSET,
            input_names=[input_name], output_names=[output_name],
            dynamic_shapes=({0: torch.export.Dim("N")},),
            custom_translation_table={torch.ops.alexnet_export.lrn.default: _lrn_to_onnx},
            external_data=False, verbose=False,
        )
    for key, value in (metadata or {}).items():
        program.model.metadata_props[key] = value
    proto = program.model_proto
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign or len(proto.functions):
        raise RuntimeError(f"the exported graph is not plain ONNX: {foreign or 'it has local functions'}")
    return proto


def onnx_bytes(network: nn.Module, meta: dict, mean_image: torch.Tensor) -> bytes:
    """The inference path of ``network`` (see :class:`InferencePath`) as the bytes of an ONNX file."""
    net = InferencePath(plain_torch_copy(network).float().cpu(), mean_image.cpu(), **meta).eval()
    s, c = int(meta["image_size"]), int(meta["channels"])
    proto = onnx_model(net, torch.zeros(2, s, s, c, dtype=torch.uint8),
                       metadata={"alexnet": json.dumps({**meta, "opset": ONNX_OPSET})})
    return proto.SerializeToString()
