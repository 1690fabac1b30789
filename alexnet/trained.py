"""Trained networks in: every kind a user names, read and checked once, then built.

A trained network comes as

    a checkpoint file   a .pt written by ``alexnet train`` or ``alexnet import-torchvision``
                        (:mod:`alexnet.checkpoint`: read without running code, in bounded memory)
    a run folder        its best.pt, else its last.pt
    an export folder    written by ``alexnet export`` (:mod:`alexnet.export`): ``alexnet.json``,
                        the safetensors weights and mean image, an ONNX graph (:func:`onnx_session`)

:func:`load` reads any of them as a checkpoint payload and :func:`validate` checks it once,
before anything is built from it: a crafted or damaged file must not decide what we build or
how much memory we take. The model arguments must be known to the architecture's constructor
and within sane ranges; the weights must be exactly the tensors those arguments make (shapes
compared on the meta device, so the check allocates nothing) and finite; the data description
and the recipe must agree with the network. :func:`build_network` makes the network that
``model_args`` describe, :func:`load_member` a network with its test-time preprocessing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet import checkpoint
from alexnet.config import upgrade_network
from alexnet.data.augment import EvalPreprocess
from alexnet.data.images import MAX_IMAGE_SIZE
from alexnet.errors import UserError
from alexnet.evaluate import Member
from alexnet.model import AlexNet
from alexnet.torchvision_alexnet import FOLDED_STD, TorchvisionAlexNet

# The export folder (its files are described in :mod:`alexnet.export`).
EXPORT_FORMAT, EXPORT_VERSION = "alexnet-export", 1
META_FILE = "alexnet.json"
WEIGHTS_FILE, MEAN_FILE = "model.safetensors", "mean_image.safetensors"
ONNX_FILE, TORCHVISION_FILE = "model.onnx", "torchvision_alexnet.pth"
EXPORT_FILES = {"safetensors": (WEIGHTS_FILE, MEAN_FILE), "onnx": (ONNX_FILE,), "torchvision": (TORCHVISION_FILE,)}
ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"

# ``model_args["arch"]`` -> the class it names; the other keys are that class's keyword arguments.
ARCHITECTURES = {"alexnet": AlexNet, "torchvision": TorchvisionAlexNet}


def build_network(model_args: dict) -> nn.Module:
    """The network a checkpoint's ``model_args`` describe, freshly initialised.

    ``arch`` picks the architecture: ``"alexnet"`` (the default, this paper's :class:`AlexNet`) or
    ``"torchvision"`` (torchvision's single-tower layout, :mod:`alexnet.torchvision_alexnet`).
    Arguments written before ``dropout_style`` existed rebuild the network they were trained as
    (:func:`alexnet.config.upgrade_network`: inverted dropout, their LRN)."""
    args = dict(model_args)
    arch = args.pop("arch", "alexnet")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {tuple(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**(upgrade_network(args) if arch == "alexnet" else args))


def build_trained(payload: dict) -> nn.Module:
    """The network of a validated payload (:func:`load`) with its weights, in eval mode on the CPU."""
    model = build_network(payload["model_args"])
    model.load_state_dict(payload["model"])
    return model.eval()


# --------------------------------------------------------------------------------------------
# Reading


def file_digest(data: bytes | Path) -> str:
    """The digest of an export's file (its bytes, or the file at a path, read in pieces) that
    ``alexnet.json`` records (``digests``)."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()[:16]
    digest = hashlib.sha256()
    with open(data, "rb") as f:
        while piece := f.read(1 << 24):
            digest.update(piece)
    return digest.hexdigest()[:16]


def _check_belongs(path: Path, meta: dict, name: str) -> None:
    """That the file ``name`` of the export folder ``path`` is the one its ``alexnet.json`` was
    written with (exports written before ``digests`` existed are taken as they are)."""
    digest = meta.get("digests", {}).get(name) if isinstance(meta.get("digests"), dict) else None
    if digest is not None and file_digest(path / name) != digest:
        raise UserError(f"{path / name} does not belong with {META_FILE} beside it (it is not the file exported "
                        "with it: copied from another export, or changed since); export the checkpoint again")


def is_export_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def _checkpoint_in(folder: Path) -> Path | None:
    """The checkpoint a run folder stands for: best.pt, else last.pt; None when it has neither."""
    return next((folder / name for name in ("best.pt", "last.pt") if (folder / name).is_file()), None)


def load(path: str | Path, *, for_inference: bool = False) -> dict:
    """The checkpoint payload of a checkpoint file, run folder or safetensors export folder,
    validated (:func:`validate`; ``for_inference``: it must also describe its data and recipe);
    a one-line UserError for anything else. Tensors are on the CPU."""
    given, path = path, Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    source = path
    if is_export_dir(path):
        payload = _read_export(path)
    elif path.is_dir():
        if (path / "manifest.json").is_file():
            raise UserError(f"{given} is a prepared data set, not a trained network; name the checkpoint, run folder "
                            "or export first (evaluate and show take the data set last)")
        source = _checkpoint_in(path)
        if source is None:
            _refuse_folder(path, given)
        payload = checkpoint.load(source)
    else:
        payload = checkpoint.load(path)
    validate(payload, str(source), for_inference=for_inference)
    return payload


def _refuse_folder(folder: Path, given) -> None:
    """The one line for a folder that holds no trained network."""
    if any((folder / name).is_file() for names in EXPORT_FILES.values() for name in names):
        raise UserError(f"{given} holds an unfinished export (no {META_FILE}: still being written, or its export "
                        "failed); export the checkpoint again")
    still = " (a run writes last.pt at the end of its first epoch)" if (folder / "config.json").is_file() else ""
    raise UserError(f"{folder} is a folder with no best.pt or last.pt{still}; name a checkpoint file")


def read_metadata(path: str | Path) -> dict:
    """``alexnet.json`` of the export folder ``path``, checked; UserError otherwise."""
    path = Path(path)
    file = path / META_FILE
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is not an alexnet export (no {META_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{file} is damaged (not JSON); export the checkpoint again") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{file} does not describe an alexnet export")
    if meta.get("version", 0) > EXPORT_VERSION:
        raise UserError(f"{path} was exported by a newer alexnet (format {meta['version']}); upgrade alexnet")
    return meta


def _utf8(path: Path) -> bool:
    """Whether ``path`` is valid UTF-8 (on POSIX a file name is bytes; some libraries take only UTF-8 paths)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _read_safetensors(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    if not file.is_file():
        raise UserError(f"{file} is missing; export the checkpoint again")
    try:
        if not _utf8(file):  # safetensors opens only paths that are valid UTF-8: read the bytes here instead
            return load(file.read_bytes())
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is not a readable safetensors file ({str(e).splitlines()[0]}); export the checkpoint again") from None


def _read_export(path: Path) -> dict:
    """A safetensors export as a checkpoint payload (model_args, data, config, model); not validated yet."""
    meta = read_metadata(path)
    files = meta.get("files", {})
    if "safetensors" not in files:
        names = {"onnx": "an ONNX model", "torchvision": "torchvision-keyed weights"}
        what = " and ".join(names.get(f, f) for f in files if f != "mean_image") or "no network"
        raise UserError(f"{path} holds {what}, not safetensors weights; export with --format safetensors "
                        "(alexnet predict also runs an ONNX export)")
    try:
        mean = _read_safetensors(path / meta["mean_image"]["file"])[meta["mean_image"]["key"]]
        _check_belongs(path, meta, meta["mean_image"]["file"])
        config = {**meta.get("training_config", {}), **{k: meta[k] for k in ("crop_size", "subtract_mean", "input_scale")}}
        data = dict(classes=list(meta["classes"]), image_size=int(meta["image_size"]), channels=int(meta["channels"]),
                    mean_image=mean, **({FOLDED_STD: meta[FOLDED_STD]} if FOLDED_STD in meta else {}))
        model_args = dict(meta["model_args"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{path / META_FILE} lacks {e}; export the checkpoint again") from None
    weights = _read_safetensors(path / files["safetensors"])
    _check_belongs(path, meta, files["safetensors"])
    return dict(model_args=model_args, data=data, config=config, model=weights)


def onnx_session(path: str | Path):
    """(an onnxruntime session on the CPU, alexnet.json) of the ONNX graph in the export folder ``path``."""
    path = Path(path)
    meta = read_metadata(path)
    if "onnx" not in meta.get("files", {}):
        raise UserError(f"{path} holds no ONNX model; export with --format onnx")
    try:
        import onnxruntime
    except ImportError:
        raise UserError("running an ONNX export needs onnxruntime: pip install 'alexnet[onnx]'") from None
    file = path / meta["files"]["onnx"]
    try:
        model = str(file) if _utf8(file) else file.read_bytes()  # as safetensors, for a path that is not UTF-8
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own kinds for missing or damaged files
        raise UserError(f"{file} cannot be loaded by onnxruntime ({str(e).splitlines()[0]}); export again") from None
    _check_onnx_against(session, meta, file)
    _check_belongs(path, meta, meta["files"]["onnx"])
    return session, meta


def _check_onnx_against(session, meta: dict, file: Path) -> None:
    """The ONNX graph of an export must be the one its ``alexnet.json`` describes (a model.onnx copied
    from another export would name the wrong classes, or fail on the images it is given): its input
    (N, S, S, C) uint8 images, its output one probability per class, and the classes it was
    exported with."""
    try:
        size, channels, classes = int(meta["image_size"]), int(meta["channels"]), list(meta["classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file.parent / META_FILE} lacks {e}; export the checkpoint again") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    found, wanted = [], []
    if [i.name for i in inputs] != [ONNX_INPUT] or list(inputs[0].shape[1:]) != [size, size, channels]:
        found.append(f"takes {', '.join(f'{i.name} {i.shape}' for i in inputs)}")
        wanted.append(f"'{ONNX_INPUT}' of (N, {size}, {size}, {channels}) images")
    if len(outputs) != 1 or list(outputs[0].shape[1:]) != [len(classes)]:
        found.append(f"gives {', '.join(f'{o.name} {o.shape}' for o in outputs)}")
        wanted.append(f"{len(classes)} class probabilities")
    described = session.get_modelmeta().custom_metadata_map.get("alexnet")
    try:
        theirs = json.loads(described).get("classes") if described else None
    except (json.JSONDecodeError, AttributeError):
        theirs = None
    if theirs is not None and theirs != classes:
        found.append(f"was exported for the classes {_few(theirs)}")
        wanted.append(f"{_few(classes)}")
    if found:
        raise UserError(f"{file} does not belong with {META_FILE} beside it: it {'; '.join(found)}, where "
                        f"{META_FILE} says {'; '.join(wanted)} (copied from another export?); export again")


def _few(names: list) -> str:
    return ", ".join(map(str, names[:3])) + (", ..." if len(names) > 3 else "")


def preprocess_for(payload: dict, device: torch.device) -> EvalPreprocess:
    """The test-time preprocessing a payload's data and recipe describe, on ``device``."""
    data, config = payload["data"], payload["config"]
    return EvalPreprocess(
        data["mean_image"].cpu().numpy(),
        crop_size=int(config["crop_size"]),
        subtract_mean=bool(config["subtract_mean"]),
        input_scale=float(config["input_scale"]),
    ).to(device)


def load_member(path: str, device: torch.device) -> Member:
    """A trained network from a checkpoint, run folder or safetensors export, in eval mode on ``device``."""
    payload = load(path, for_inference=True)
    data = payload["data"]
    return Member(build_trained(payload).to(device), preprocess_for(payload, device), list(data["classes"]),
                  _shown_source(path, payload), int(data["image_size"]), int(data["channels"]))


def _shown_source(path: str, payload: dict) -> str:
    """``path`` as messages name it: for a run folder, with the checkpoint taken from it and its epoch
    (a run still training has a best.pt older than its last epoch)."""
    folder = Path(path)
    if not folder.is_dir() or is_export_dir(folder):
        return str(path)
    when = ""
    progress = payload.get("progress")
    if isinstance(payload.get("epoch"), int):  # best.pt: the epoch (1-based) whose weights it holds
        when = f", epoch {payload['epoch']}"
    elif isinstance(progress, dict) and isinstance(progress.get("epoch"), int):  # last.pt: epochs done, steps into the next
        step = progress.get("step_in_epoch")
        when = (f", epoch {progress['epoch'] + 1} step {step}" if isinstance(step, int) and step > 0
                else f", epoch {progress['epoch']}")
    return f"{path} ({_checkpoint_in(folder).name}{when})"


# --------------------------------------------------------------------------------------------
# Validation

# Ranges of model arguments that no real network here exceeds; checked before a network is built.
ARG_RANGES = {
    "num_classes": (1, 1_000_000),
    "towers": (1, 2),
    "in_channels": (1, 64),
    "input_size": (1, 4096),
    "width": (1e-4, 16.0),
    "dropout": (0.0, 1.0),
}


def _check_model_args(args: Any, source: str) -> None:
    """Every key known to the architecture's constructor, every value of its type and range."""
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise UserError(f"{source}: model_args must be a table of keyword arguments, found {type(args).__name__}")
    arch = args.get("arch", "alexnet")
    if not isinstance(arch, str):
        raise UserError(f"{source}: model_args.arch must be a name, found {arch!r}")
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)}); upgrade alexnet")
    params = {n: p for n, p in inspect.signature(ARCHITECTURES[arch].__init__).parameters.items() if n != "self"
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(args) - set(params) - {"arch"})
    if unknown:
        raise UserError(f"{source}: unknown model argument(s) {', '.join(unknown)} for {arch}; "
                        "it was written by another version of alexnet")
    for name, value in args.items():
        if name == "arch":
            continue
        default = params[name].default
        if default is not inspect.Parameter.empty and default is not None:
            want = type(default)
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise UserError(f"{source}: model argument {name} should be a {want.__name__}, found {value!r}")
        if name in ARG_RANGES:
            lo, hi = ARG_RANGES[name]
            if not lo <= value <= hi:
                raise UserError(f"{source}: model argument {name}={value!r} is outside [{lo}, {hi}]; "
                                "the checkpoint is damaged or not from alexnet")


def _expected_state(args: dict, source: str) -> dict[str, torch.Size]:
    """Parameter names and shapes of the network ``args`` describe, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            net = build_network(args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: its model arguments describe no network this alexnet can build ({e})") from None
    return {name: t.shape for name, t in net.state_dict().items()}


def _check_weights(state: Any, expected: dict[str, torch.Size], source: str) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{source}: 'model' must map parameter names to tensors; the checkpoint is damaged")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source}: its weights do not match its model arguments (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); the checkpoint is damaged")
    for name, tensor in state.items():
        if tensor.shape != expected[name]:
            raise UserError(f"{source}: {name} is {tuple(tensor.shape)} but its model arguments make it "
                            f"{tuple(expected[name])}; the checkpoint is damaged")
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise UserError(f"{source}: {name} holds {bad} NaN or infinite value(s); this network cannot "
                                "predict anything: use an earlier checkpoint")
        elif not tensor.dtype == torch.bool and tensor.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise UserError(f"{source}: {name} has dtype {tensor.dtype}; the checkpoint is damaged")


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check_data(data: Any, args: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{source}: 'data' must be a table, found {type(data).__name__}; the checkpoint is damaged")
    classes, size, channels, mean = (data.get(k) for k in ("classes", "image_size", "channels", "mean_image"))
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{source}: data.classes must be a list of class names; the checkpoint is damaged")
    if len(set(classes)) != len(classes):
        raise UserError(f"{source}: data.classes names a class twice; the checkpoint is damaged")
    if "num_classes" in args and len(classes) != args["num_classes"]:
        raise UserError(f"{source}: {len(classes)} class names for a network of {args['num_classes']} outputs; "
                        "the checkpoint is damaged")
    if not _int_in(size, 1, MAX_IMAGE_SIZE) or not _int_in(channels, 1, ARG_RANGES["in_channels"][1]):
        raise UserError(f"{source}: data.image_size {size!r} / data.channels {channels!r} are not a sane image "
                        "format; the checkpoint is damaged")
    if args.get("in_channels", channels) != channels:
        raise UserError(f"{source}: the network takes {args['in_channels']} channel(s), its data has {channels}; "
                        "the checkpoint is damaged")
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (size, size, channels) or not mean.is_floating_point():
        shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
        raise UserError(f"{source}: data.mean_image is {shape}, expected a float ({size}, {size}, {channels}) "
                        "tensor; the checkpoint is damaged")
    if not bool(torch.isfinite(mean).all()):
        raise UserError(f"{source}: data.mean_image holds NaN or infinite values; the checkpoint is damaged")


def _check_config(config: Any, args: dict, data: dict | None, source: str) -> None:
    if not isinstance(config, dict):
        raise UserError(f"{source}: 'config' must be a table, found {type(config).__name__}; the checkpoint is damaged")
    crop = config.get("crop_size")
    if crop is not None:
        limit = data["image_size"] if isinstance(data, dict) and _int_in(data.get("image_size"), 1, MAX_IMAGE_SIZE) else MAX_IMAGE_SIZE
        if not _int_in(crop, 1, limit):
            raise UserError(f"{source}: config.crop_size {crop!r} does not fit its {limit} px images; "
                            "the checkpoint is damaged")
        if "input_size" in args and args["input_size"] != crop:
            raise UserError(f"{source}: the network takes {args['input_size']} px crops, its recipe says "
                            f"{crop}; the checkpoint is damaged")
    scale = config.get("input_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise UserError(f"{source}: config.input_scale {scale!r} is not a positive number; the checkpoint is damaged")


def _require(payload: dict, keys: tuple[str, ...], source: str) -> None:
    for key in keys:
        if key not in payload:
            what = "a trained network's" if key in ("data", "config") else "an alexnet"
            raise UserError(f"{source} has no '{key}' section: it is not {what} checkpoint")


def validate(payload: dict, source: str, *, for_inference: bool = False) -> None:
    """Check a payload before anything is built from it; a one-line UserError names the first fault.

    Always: ``model_args`` (known keys of the architecture's constructor, types, ranges) and
    ``model`` (exactly the tensors those arguments make, shapes equal, all finite), so that
    building the network allocates no more than the file already holds. When present (required
    with ``for_inference``): ``data`` (class names, image format, a finite mean image of that
    format) and ``config`` (a crop that fits the images and matches the network, a positive input
    scale).
    """
    _require(payload, ("model_args", "model"), source)
    args = payload["model_args"]
    _check_model_args(args, source)
    _check_weights(payload["model"], _expected_state(args, source), source)
    if "data" in payload:
        _check_data(payload["data"], args, source)
    if "config" in payload:
        _check_config(payload["config"], args, payload.get("data"), source)
    if for_inference:
        _require(payload, ("data", "config"), source)
